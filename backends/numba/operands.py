"""Which arrays the numba kernels take as they are; anything else runs the reference ops.

Written for speed: these checks run before every op.
"""
from __future__ import annotations

import numpy as np

from . import layer_ops

#: The dtypes the kernels take. Compared by identity (NumPy's native float dtypes are
#: singletons): fast, and an unusual equal dtype (byte-swapped, ...) just takes the reference.
FLOAT32, FLOAT64 = np.dtype(np.float32), np.dtype(np.float64)
NO_PARAMS = np.zeros(layer_ops.N_PARAMS)  # the settings of an activation that takes none


def usable(X, ndim):
    """True when a kernel can take X as it is: a non-empty C-contiguous float32/64 ndarray."""
    return (type(X) is np.ndarray and X.ndim == ndim and (X.dtype is FLOAT32 or X.dtype is FLOAT64)
            and X.flags.c_contiguous and X.size > 0)


def same(W, X):
    """X is a kernel-ready array of W's dtype and shape."""
    return type(X) is np.ndarray and X.dtype is W.dtype and X.shape == W.shape and X.flags.c_contiguous


def settings(params):
    """An activation's settings as the kernels take them (float64, padded)."""
    if not params:
        return NO_PARAMS
    return np.array(list(params) + [0.0] * (layer_ops.N_PARAMS - len(params)))


def gemm_operands(A, B, trans_a, trans_b, C):
    """``(A, trans_a, B, trans_b, M, N, P)`` for the fast paths, or None for the reference.

    A transposed (F-contiguous) operand is read as the C-contiguous array it views,
    with its flag flipped.
    """
    if type(A) is not np.ndarray or type(B) is not np.ndarray:
        return None
    dtype = A.dtype
    if (dtype is not FLOAT32 and dtype is not FLOAT64) or B.dtype is not dtype or A.ndim != 2 or B.ndim != 2:
        return None
    if not A.flags.c_contiguous:
        if not A.flags.f_contiguous:
            return None
        A, trans_a = A.T, not trans_a
    if not B.flags.c_contiguous:
        if not B.flags.f_contiguous:
            return None
        B, trans_b = B.T, not trans_b
    if trans_a:
        P, M = A.shape
    else:
        M, P = A.shape
    if trans_b:
        N, P_b = B.shape
    else:
        P_b, N = B.shape
    if P != P_b or not M or not N or not P:
        return None  # the reference raises NumPy's shape error, or handles the empty product
    if C is not None:
        if not (type(C) is np.ndarray and C.dtype is dtype and C.shape == (M, N) and C.flags.c_contiguous):
            return None
        if np.may_share_memory(C, A) or np.may_share_memory(C, B):
            return None
    return A, trans_a, B, trans_b, M, N, P
