"""Every compiled kernel of the numba backend, in one module.

One module on purpose: numba's disk cache (``cache=True``) does not notice edits in *other*
files a kernel uses, and it freezes globals at compile time, so tunables are passed as
arguments. The other files compiled into these kernels, ``simd.py`` and ``simd_math.py`` (the
vector layer), are hashed into every kernel's cache key here (``_Cache``). Nothing here may
defeat the cache: no ctypes pointers captured, no ``exec``; BLAS is reached through a symbol
registered with LLVM (``ensure_blas``) in every process, before ``blas_gemm`` first runs.

Layout conventions: arrays are C-contiguous; a matrix is often handled as its
flat buffer with explicit index arithmetic, because with runtime 2-D strides
LLVM gives up vectorising. Indices are cast to unsigned (``U``) so numba emits
no negative-index wraparound, which would turn contiguous loads into gathers.
"""
import hashlib

import llvmlite.binding as llvm
import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import get_cython_function_address, intrinsic, overload

from . import cache as numba_cache
from . import simd, simd_math
from .quick_load import QuickLoadCache, quick
from .simd import VECTOR_BITS, exp, vfma, vload_part, vsplat, vstore_part, vwidth  # noqa: F401 (VECTOR_BITS: backend)

#: The fast-math flags of every kernel, in one place: reassociation and FMA contraction let LLVM
#: vectorise reductions; no ``nnan``/``ninf``, so NaN and inf still propagate (a diverging loss is seen).
FASTMATH = {"nsz", "arcp", "contract", "reassoc"}
#: numba's disk cache where it has a folder for this file; none (a read-only install, home and
#: temp folder): the kernels compile in memory, in every process (``cache=True`` would raise here).
CACHE = numba_cache.kernels_cacheable()
#: Serial kernels. ``error_model="numpy"``: a kernel never raises (x/0 is inf).
KERNEL = dict(cache=CACHE, nogil=True, fastmath=FASTMATH, error_model="numpy", boundscheck=False)
#: Kernels with a ``prange`` loop; called only where there is enough work.
PARALLEL = dict(KERNEL, parallel=True)
#: simd.py's and simd_math.py's text, hashed: numba keys a kernel's cache on its own file only.
SIMD_DIGEST = hashlib.sha256(b"".join(module.__spec__.loader.get_data(module.__file__)  # type: ignore[union-attr]
                                      for module in (simd, simd_math))).hexdigest()[:16]


class _Cache(QuickLoadCache):
    """numba's disk cache of one kernel here (loading quickly: ``quick_load``), each entry keyed also
    on :data:`SIMD_DIGEST`, so an edit of simd.py compiles afresh. Every cached kernel here gets one."""

    def _index_key(self, sig, codegen):
        return super()._index_key(sig, codegen) + (SIMD_DIGEST,)


U = np.uint64


# ---- low-level helpers (LLVM intrinsics; all cache-safe) ------------------

@intrinsic
def _ref(typingctx, value):
    """A pointer to a stack copy of ``value`` (Fortran BLAS takes every argument by reference)."""
    def codegen(context, builder, signature, args):
        return cgutils.alloca_once_value(builder, args[0])
    return types.CPointer(value)(value), codegen


@intrinsic
def _data(typingctx, arr):
    """The data pointer of ``arr``."""
    def codegen(context, builder, signature, args):
        return context.make_array(arr)(context, builder, args[0]).data
    return types.CPointer(arr.dtype)(arr), codegen


def _constant_intrinsic(value):
    """An intrinsic ``f(like)``: the constant ``value`` in ``like``'s dtype (scalar or array),
    so that float32 arithmetic stays float32 (numba widens float32 op int to float64)."""
    @intrinsic
    def constant(typingctx, like):
        dtype = like.dtype if isinstance(like, types.Array) else like

        def codegen(context, builder, signature, args):
            return context.get_constant(dtype, value)
        return dtype(like), codegen
    return constant


_zero, _one = _constant_intrinsic(0), _constant_intrinsic(1)


@intrinsic
def _as_dtype_of(typingctx, like, x):
    """The number ``x`` converted to ``like``'s dtype (an array's or a scalar's)."""
    dtype = like.dtype if isinstance(like, types.Array) else like

    def codegen(context, builder, signature, args):
        return context.cast(builder, args[1], signature.args[1], dtype)
    return dtype(like, x), codegen


# ---- BLAS (SciPy's), callable from compiled code and cacheable -------------

_blas_registered = False


def ensure_blas():
    """Register SciPy's BLAS gemm under stable names, once per process, before ``blas_gemm`` first
    runs (its machine code calls them); not at import, which a process that never calls it should
    not pay for. Returns True the first time (SciPy's BLAS library has just been loaded)."""
    global _blas_registered
    if _blas_registered:
        return False
    for name in ("sgemm", "dgemm"):
        llvm.add_symbol(f"fastnn_scipy_{name}", get_cython_function_address("scipy.linalg.cython_blas", name))
    _blas_registered = True
    return True


_char_p, _int_p = types.CPointer(types.int8), types.CPointer(types.int32)


def _gemm_signature(t):
    p = types.CPointer(t)
    return types.void(_char_p, _char_p, _int_p, _int_p, _int_p, p, p, _int_p, p, _int_p, p, p, _int_p)


_sgemm = types.ExternalFunction("fastnn_scipy_sgemm", _gemm_signature(types.float32))
_dgemm = types.ExternalFunction("fastnn_scipy_dgemm", _gemm_signature(types.float64))


def _xgemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Column-major Fortran gemm (sgemm or dgemm by the dtype of ``alpha``)."""
    raise NotImplementedError("only callable from compiled code")


@overload(_xgemm)
def _xgemm_overload(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    gemm = _sgemm if alpha == types.float32 else _dgemm

    def call(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        gemm(_ref(transa), _ref(transb), _ref(np.int32(m)), _ref(np.int32(n)), _ref(np.int32(k)),
             _ref(alpha), a, _ref(np.int32(lda)), b, _ref(np.int32(ldb)), _ref(beta), c, _ref(np.int32(ldc)))
    return call


@njit(**KERNEL)
def blas_gemm(A, trans_a, B, trans_b, C, alpha, beta):
    """``C = alpha·op(A) @ op(B) + beta·C`` with SciPy's BLAS; C row-major (M, N).

    Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, so B goes first.
    """
    M, N = C.shape
    K = A.shape[0] if trans_a else A.shape[1]
    op_b = np.int8(84) if trans_b else np.int8(78)  # 'T' / 'N'
    op_a = np.int8(84) if trans_a else np.int8(78)
    _xgemm(op_b, op_a, N, M, K, alpha, _data(B), B.shape[1], _data(A), A.shape[1], beta, _data(C), N)


# ---- gemm for small batches: register tiles -------------------------------
# C (M, N) = alpha·A (M, P) @ B (P, N) + beta·C, row-major, M a small batch (X @ W, where BLAS
# is poorest). Explicit vectors in named variables make the register tile explicit (numba runs
# no SLP vectoriser); masked loads and stores handle a partial last vector. A tile is 4 rows of
# C by 4 vectors (2 for a narrow last tile; 2 rows for a batch's last 1 or 2): up to 16
# accumulators, and per row p of B 4 vector loads, 4 broadcasts of A and 16 FMAs. Rows past M
# are computed from row M-1 weighted by zero and not stored.

@njit(inline="always", **KERNEL)
def _a_values(a, i, M, P, p):
    """``A[i : i+4, p]`` as 4 broadcast vectors; rows past M count as 0 (and read row M-1)."""
    zero = _zero(a)
    x0 = a[U(i * P + p)]
    x1 = a[U(min(i + 1, M - 1) * P + p)] if i + 1 < M else zero
    x2 = a[U(min(i + 2, M - 1) * P + p)] if i + 2 < M else zero
    x3 = a[U(min(i + 3, M - 1) * P + p)] if i + 3 < M else zero
    return vsplat(a, x0), vsplat(a, x1), vsplat(a, x2), vsplat(a, x3)


@njit(inline="always", **KERNEL)
def _a_values2(a, i, M, P, p):
    """``A[i : i+2, p]`` as 2 broadcast vectors; a row past M counts as 0."""
    x1 = a[U(min(i + 1, M - 1) * P + p)] if i + 1 < M else _zero(a)
    return vsplat(a, a[U(i * P + p)]), vsplat(a, x1)


@njit(inline="always", **KERNEL)
def _lanes_left(N, j, L):
    """How many of the L lanes from column j lie inside a row of N columns."""
    return min(L, max(0, N - j))


@njit(inline="always", **KERNEL)
def _store_row(c, q, acc, n, alpha, beta):
    """``c[q : q+n] = alpha·acc (+ beta·c)``, masked to n lanes."""
    if beta == _zero(c):
        out = vfma(acc, vsplat(c, alpha), vsplat(c, beta))
    else:
        out = vfma(acc, vsplat(c, alpha), vfma(vload_part(c, q, n), vsplat(c, beta), vsplat(c, _zero(c))))
    vstore_part(c, q, out, n)


@njit(**KERNEL)
def _tile_4x4(a, b, c, M, N, P, i, j0, alpha, beta):
    L = vwidth(a)
    n0, n1, n2, n3 = _lanes_left(N, j0, L), _lanes_left(N, j0 + L, L), _lanes_left(N, j0 + 2 * L, L), \
        _lanes_left(N, j0 + 3 * L, L)
    z = vsplat(a, _zero(a))
    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = z
    c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = z
    for p in range(P):
        q = p * N + j0
        b0, b1 = vload_part(b, q, n0), vload_part(b, q + L, n1)
        b2, b3 = vload_part(b, q + 2 * L, n2), vload_part(b, q + 3 * L, n3)
        x0, x1, x2, x3 = _a_values(a, i, M, P, p)
        c00, c01, c02, c03 = vfma(x0, b0, c00), vfma(x0, b1, c01), vfma(x0, b2, c02), vfma(x0, b3, c03)
        c10, c11, c12, c13 = vfma(x1, b0, c10), vfma(x1, b1, c11), vfma(x1, b2, c12), vfma(x1, b3, c13)
        c20, c21, c22, c23 = vfma(x2, b0, c20), vfma(x2, b1, c21), vfma(x2, b2, c22), vfma(x2, b3, c23)
        c30, c31, c32, c33 = vfma(x3, b0, c30), vfma(x3, b1, c31), vfma(x3, b2, c32), vfma(x3, b3, c33)
    rows = ((c00, c01, c02, c03), (c10, c11, c12, c13), (c20, c21, c22, c23), (c30, c31, c32, c33))
    for r in range(min(4, M - i)):
        q = (i + r) * N + j0
        v0, v1, v2, v3 = rows[r]
        _store_row(c, q, v0, n0, alpha, beta)
        _store_row(c, q + L, v1, n1, alpha, beta)
        _store_row(c, q + 2 * L, v2, n2, alpha, beta)
        _store_row(c, q + 3 * L, v3, n3, alpha, beta)


@njit(**KERNEL)
def _tile_4x2(a, b, c, M, N, P, i, j0, alpha, beta):
    L = vwidth(a)
    n0, n1 = _lanes_left(N, j0, L), _lanes_left(N, j0 + L, L)
    z = vsplat(a, _zero(a))
    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = z
    for p in range(P):
        q = p * N + j0
        b0, b1 = vload_part(b, q, n0), vload_part(b, q + L, n1)
        x0, x1, x2, x3 = _a_values(a, i, M, P, p)
        c00, c01, c10, c11 = vfma(x0, b0, c00), vfma(x0, b1, c01), vfma(x1, b0, c10), vfma(x1, b1, c11)
        c20, c21, c30, c31 = vfma(x2, b0, c20), vfma(x2, b1, c21), vfma(x3, b0, c30), vfma(x3, b1, c31)
    rows = ((c00, c01), (c10, c11), (c20, c21), (c30, c31))
    for r in range(min(4, M - i)):
        q = (i + r) * N + j0
        v0, v1 = rows[r]
        _store_row(c, q, v0, n0, alpha, beta)
        _store_row(c, q + L, v1, n1, alpha, beta)


@njit(**KERNEL)
def _tile_2x4(a, b, c, M, N, P, i, j0, alpha, beta):
    # the last rows of a batch that leaves 1 or 2 (a batch of 10: 4 + 4 + 2): half the FMAs of a 4-row tile
    L = vwidth(a)
    n0, n1, n2, n3 = _lanes_left(N, j0, L), _lanes_left(N, j0 + L, L), _lanes_left(N, j0 + 2 * L, L), \
        _lanes_left(N, j0 + 3 * L, L)
    z = vsplat(a, _zero(a))
    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = z
    for p in range(P):
        q = p * N + j0
        b0, b1 = vload_part(b, q, n0), vload_part(b, q + L, n1)
        b2, b3 = vload_part(b, q + 2 * L, n2), vload_part(b, q + 3 * L, n3)
        x0, x1 = _a_values2(a, i, M, P, p)
        c00, c01, c02, c03 = vfma(x0, b0, c00), vfma(x0, b1, c01), vfma(x0, b2, c02), vfma(x0, b3, c03)
        c10, c11, c12, c13 = vfma(x1, b0, c10), vfma(x1, b1, c11), vfma(x1, b2, c12), vfma(x1, b3, c13)
    rows = ((c00, c01, c02, c03), (c10, c11, c12, c13))
    for r in range(min(2, M - i)):
        q = (i + r) * N + j0
        v0, v1, v2, v3 = rows[r]
        _store_row(c, q, v0, n0, alpha, beta)
        _store_row(c, q + L, v1, n1, alpha, beta)
        _store_row(c, q + 2 * L, v2, n2, alpha, beta)
        _store_row(c, q + 3 * L, v3, n3, alpha, beta)


@njit(**KERNEL)
def _tile_2x2(a, b, c, M, N, P, i, j0, alpha, beta):
    L = vwidth(a)
    n0, n1 = _lanes_left(N, j0, L), _lanes_left(N, j0 + L, L)
    z = vsplat(a, _zero(a))
    c00 = c01 = c10 = c11 = z
    for p in range(P):
        q = p * N + j0
        b0, b1 = vload_part(b, q, n0), vload_part(b, q + L, n1)
        x0, x1 = _a_values2(a, i, M, P, p)
        c00, c01, c10, c11 = vfma(x0, b0, c00), vfma(x0, b1, c01), vfma(x1, b0, c10), vfma(x1, b1, c11)
    rows = ((c00, c01), (c10, c11))
    for r in range(min(2, M - i)):
        q = (i + r) * N + j0
        v0, v1 = rows[r]
        _store_row(c, q, v0, n0, alpha, beta)
        _store_row(c, q + L, v1, n1, alpha, beta)


@njit(inline="always", **KERNEL)
def _tile_count(M, N, L):
    return ((M + 3) // 4) * ((N + 4 * L - 1) // (4 * L))


@njit(**KERNEL)
def gemm_tiles(a, b, c, M, N, P, alpha, beta, t0, t1):
    """Tiles ``t0 .. t1-1`` (t1 = -1: to the last) of ``C = alpha·A @ B + beta·C``, row-tile major;
    A (M, P), B (P, N), C (M, N) flat (ravel() here would cost every process numba's array module)."""
    alpha, beta = _as_dtype_of(a, alpha), _as_dtype_of(a, beta)
    L = vwidth(a)
    n_col_tiles = (N + 4 * L - 1) // (4 * L)
    for t in range(t0, _tile_count(M, N, L) if t1 < 0 else t1):
        i = (t // n_col_tiles) * 4
        j0 = (t % n_col_tiles) * 4 * L
        narrow, short = N - j0 <= 2 * L, M - i <= 2
        if narrow and short:
            _tile_2x2(a, b, c, M, N, P, i, j0, alpha, beta)
        elif narrow:
            _tile_4x2(a, b, c, M, N, P, i, j0, alpha, beta)
        elif short:
            _tile_2x4(a, b, c, M, N, P, i, j0, alpha, beta)
        else:
            _tile_4x4(a, b, c, M, N, P, i, j0, alpha, beta)


@njit(**PARALLEL)
def gemm_tiles_parallel(a, b, c, M, N, P, alpha, beta, n_threads):
    """All tiles, in up to ``n_threads`` contiguous runs shared among the threads."""
    n_tiles = _tile_count(M, N, vwidth(a))
    n_chunks = min(n_threads, n_tiles)
    for chunk in prange(n_chunks):
        gemm_tiles(a, b, c, M, N, P, alpha, beta, chunk * n_tiles // n_chunks, (chunk + 1) * n_tiles // n_chunks)


# ---- fused losses and the bias gradient (activations and optimizer steps: layer_ops.py) ----
# Serial: they are memory-bound and short next to the products around them.

@njit(**KERNEL)
def softmax_xent(Z, T, dZ):
    """Softmax cross-entropy on logits, fused; returns the loss (float64), fills dZ.

    Per row: m = max z, s = Σ e^(z−m), loss += Σ t·(m + ln s − z),
    dZ = (e^(z−m)/s · Σt − t) / B.
    """
    B, n = Z.shape
    inv_B = _one(Z) / B
    loss = 0.0
    for i in range(B):
        z, t, dz = Z[i], T[i], dZ[i]
        m = z[0]
        for j in range(1, n):
            m = z[j] if z[j] > m else m
        if z[0] != z[0]:
            m = z[0]  # a NaN logit: let it through to the loss
        s = _zero(Z)
        t_sum = _zero(Z)
        for j in range(n):
            e = exp(z[j] - m)
            dz[j] = e
            s += e
            t_sum += t[j]
        log_sum = m + np.log(s)
        row = 0.0
        for j in range(n):
            row += t[j] * (log_sum - z[j])
        loss += row
        scale = t_sum / s
        for j in range(n):
            dz[j] = (dz[j] * scale - t[j]) * inv_B
    return loss / B


@njit(**KERNEL)
def sigmoid_xent(z, t, dz, B):
    """Sigmoid cross-entropy on logits, fused; returns the loss (float64), fills dZ.

    loss += softplus(z) − t·z with softplus(z) = max(z, 0) + ln(1 + e^−|z|);
    dZ = (σ(z) − t) / B, σ from the same e^−|z| (stable both ways).
    """
    zero, one = _zero(z), _one(z)
    inv_B = one / B
    loss = 0.0
    for k in range(z.size):
        e = exp(-abs(z[k]))
        positive = z[k] >= zero
        loss += (z[k] if positive else zero) + np.log1p(e) - t[k] * z[k]
        sigma = one / (one + e) if positive else e / (one + e)
        if z[k] != z[k]:
            sigma = z[k]
        dz[k] = (sigma - t[k]) * inv_B
    return loss / B


@njit(**KERNEL)
def sum_rows(X, out):
    """``out = Σ_i X[i]``: (B, n) -> (n,), row after row as NumPy adds them."""
    B, n = X.shape
    for j in range(n):
        out[j] = X[0, j]
    for i in range(1, B):
        x = X[i]
        for j in range(n):
            out[j] += x[j]


# ---- last: key numba's cache of every kernel above on simd.py as well ------
quick(globals(), _Cache)
