"""Warming the numba backend: every layer-path kernel called once (compiled or loaded), and how
long a job would take on the reference ops instead (which decides whether a compile pays)."""
from __future__ import annotations

import numpy as np

from . import blas_threads, layer_ops

#: The cost model of ``reference_seconds`` (fit on the reference ops).
PER_BATCH_S, PER_LAYER_S, REFERENCE_FLOPS = 50e-6, 100e-6, 40e9


def reference_seconds(net, rows, epochs, batch_size):
    """Roughly how long ``fit`` takes on the reference ops here (2 cores): a fixed cost per batch
    and Dense layer (Python and NumPy calls), and the three products of every layer at a modest
    BLAS rate. Fitted to fits of the bundled sample, scikit-learn's digits and breast-cancer sets and
    60,000 MNIST-sized rows on 2 cores (Zen 3): within a factor of 2 of what they took."""
    dense = net.dense_layers
    batches = epochs * -(-rows // batch_size)
    macs = sum(layer.n_in * layer.n_out for layer in dense)
    return batches * (PER_BATCH_S + PER_LAYER_S * len(dense)) + 6 * macs * rows * epochs / REFERENCE_FLOPS


def warm_layers(backend, dtype, kernels):
    """Every layer-path kernel (``kernels``: the backend's kernels module), called once for
    ``dtype`` as the ops call them."""
    from fastnn.ops import optimizers

    no_params = np.zeros(layer_ops.N_PARAMS)

    A, B, C = np.ones((2, 3), dtype), np.ones((3, 4), dtype), np.empty((2, 4), dtype)
    a, b, c = A.reshape(-1), B.reshape(-1), C.reshape(-1)
    kernels.gemm_tiles(a, b, c, 2, 4, 3, 1.0, 0.0, 0, -1)
    kernels.gemm_tiles_parallel(a, b, c, 2, 4, 3, 1.0, 0.0, backend.num_threads)
    if kernels.ensure_blas():
        blas_threads.recap_all()
    kernels.blas_gemm(A, False, B, False, C, C.dtype.type(1.0), C.dtype.type(0.0))
    kernels.sum_rows(C, np.empty(4, dtype))
    ops = layer_ops.load()
    for has_bias in (True, False):
        ops.bias_act(c, C[0], 4, has_bias, 1, no_params, np.empty_like(c))
    ops.act_backward(c, c, 1, no_params, np.empty_like(c))
    kernels.softmax_xent(C, C, np.empty_like(C))
    kernels.sigmoid_xent(c, c, np.empty_like(c), 2)
    for rule in optimizers.RULES:
        w = C.reshape(-1)
        getattr(ops, f"update_{rule.name}")(w, w.copy(), w.copy(), w.copy(), np.zeros(len(rule.inputs)))
