"""The CUDA kernels of the cupy backend, each compiled on first use.

Two kinds, from one set of device functions (``_DEVICE``):

- ``ElementwiseKernel`` s for the ops of the contract that map element to
  element (bias + activation, activation backward, the optimizer steps). They
  take any strides and broadcast ``b`` over the rows, so non-contiguous inputs
  need no copy.
- One ``RawModule`` per dtype with what the CUDA-graph training step needs
  (``graph.py``) and the fused losses: a tiled matrix product with a fused
  epilogue, the bias gradient, the losses, and two one-thread bookkeeping
  kernels. The graph step cannot use cuBLAS: CuPy refuses cuBLAS calls on a
  capturing stream ("calling cuBLAS API during stream capture is currently
  unsupported", CuPy 14).

CuPy compiles a kernel on its first call and caches the binary on disk
(``~/.cupy/kernel_cache``), so later processes start at once.
"""
from __future__ import annotations

import functools

import cupy
import numpy as np

from fastnn import losses
from fastnn.ops import activations, optimizers

from . import ops_source

#: Activation name -> the code the kernels take; loss name -> its code (the op tables: one place).
ACT_CODES = activations.CODES
LOSS_CODES = losses.CODES
#: Threads of the one-block loss kernels (a power of two: the reduction halves it).
LOSS_THREADS = 256
#: Output tile of the matrix product (rows x columns; one thread per element) and its depth.
TILE_M, TILE_N, TILE_K = 16, 16, 32

# The activations' device functions and the codes, generated from the op tables (ops_source.py).
_DEVICE = ops_source.DEVICE

_MODULE = r"""
#define TILE_M %(TILE_M)d
#define TILE_N %(TILE_N)d
#define TILE_K %(TILE_K)d

/* Row i of a stored matrix: the batch's i-th row of the data set (gather) or row i itself. */
__device__ __forceinline__ long long stored_row(const long long* order, const long long* offset,
                                                int gather, int i) {
    return gather ? order[offset[0] + i] : (long long)i;
}

/* C (M, N) = act(alpha * op(A) @ op(B) + beta * C + bias), or with dact the activation
   backward from Y instead: C = act'(Y) * (alpha * op(A) @ op(B)).
   op(A) is (M, K), op(B) is (K, N), all row-major. With gather, the stored A's rows are the
   rows order[offset[0] + i] of a larger array (a batch drawn from the data set, no copy).
   beta == 0 never reads C (it may hold NaN). Nothing runs once stop[0] >= 0 (a batch of the
   epoch had a NaN/inf loss). One thread per element of a 16x16 tile. */
extern "C" __global__ void gemm_tiled(
        const real* A, long long lda, int trans_a,
        const long long* order, const long long* offset, int gather,
        const real* B, long long ldb, int trans_b,
        real* C, int M, int N, int K, real alpha, real beta,
        const real* bias, int has_bias, int act, const real* Y, int dact, const double* stop) {
    if (stop[0] >= 0.0) return;
    __shared__ real As[TILE_M][TILE_K + 1];
    __shared__ real Bs[TILE_K][TILE_N + 1];
    const int tx = threadIdx.x, ty = threadIdx.y, t = ty * TILE_N + tx;
    const int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;
    real acc = (real)0;
    for (int k0 = 0; k0 < K; k0 += TILE_K) {
        /* each thread loads 2 elements of each tile; neighbours read neighbouring addresses */
        for (int e = t; e < TILE_M * TILE_K; e += TILE_M * TILE_N) {
            int mm = trans_a ? e %% TILE_M : e / TILE_K;
            int kk = trans_a ? e / TILE_M : e %% TILE_K;
            int m = m0 + mm, k = k0 + kk;
            real v = (real)0;
            if (m < M && k < K) {
                v = trans_a ? A[stored_row(order, offset, gather, k) * lda + m]
                            : A[stored_row(order, offset, gather, m) * lda + k];
            }
            As[mm][kk] = v;
        }
        for (int e = t; e < TILE_K * TILE_N; e += TILE_M * TILE_N) {
            int kk = trans_b ? e %% TILE_K : e / TILE_N;
            int nn = trans_b ? e / TILE_K : e %% TILE_N;
            int k = k0 + kk, n = n0 + nn;
            real v = (real)0;
            if (k < K && n < N) v = trans_b ? B[(long long)n * ldb + k] : B[(long long)k * ldb + n];
            Bs[kk][nn] = v;
        }
        __syncthreads();
        for (int kk = 0; kk < TILE_K; ++kk) acc += As[ty][kk] * Bs[kk][tx];
        __syncthreads();
    }
    const int m = m0 + ty, n = n0 + tx;
    if (m < M && n < N) {
        const long long at = (long long)m * N + n;
        real v = alpha * acc;
        if (beta != (real)0) v += beta * C[at];
        if (has_bias) v += bias[n];
        v = fastnn_act(v, act, (real)0);
        if (dact) v = fastnn_act_backward(Y[at], v, dact, (real)0);
        C[at] = v;
    }
}

/* out (N,) = alpha * (sum over the M rows of dZ) + beta * out; beta == 0 never reads out. */
extern "C" __global__ void bias_grad(const real* dZ, int M, int N, real* out, real alpha, real beta,
                                     const double* stop) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N || stop[0] >= 0.0) return;
    real s = (real)0;
    for (int m = 0; m < M; ++m) s += dZ[(long long)m * N + n];
    real v = alpha * s;
    if (beta != (real)0) v += beta * out[n];
    out[n] = v;
}

/* ---- losses: one row at a time; the row's loss (summed over outputs) in double ---- */
__device__ double softmax_xent_row(const real* z, const real* t, real* dz, int n, real B) {
    real m = z[0];
    for (int j = 1; j < n; ++j) m = z[j] > m ? z[j] : m;
    real s = (real)0;
    for (int j = 0; j < n; ++j) s += exp(z[j] - m);
    const real lse = m + log(s);
    double loss = 0.0;
    real t_sum = (real)0;
    for (int j = 0; j < n; ++j) {
        loss += (double)(t[j] * (lse - z[j]));
        t_sum += t[j];
    }
    for (int j = 0; j < n; ++j) dz[j] = (exp(z[j] - m) / s * t_sum - t[j]) / B;
    return loss;
}

__device__ double sigmoid_xent_row(const real* z, const real* t, real* dz, int n, real B) {
    double loss = 0.0;
    for (int j = 0; j < n; ++j) {
        /* softplus(z) - t z, softplus(z) = max(z, 0) + log1p(e^-|z|): stable for large |z| */
        const real softplus = (z[j] > (real)0 ? z[j] : (real)0) + log1p(exp(-fabs(z[j])));
        loss += (double)(softplus - t[j] * z[j]);
        dz[j] = (fastnn_act(z[j], ACT_SIGMOID, (real)0) - t[j]) / B;
    }
    return loss;
}

__device__ double mse_row(const real* y, const real* t, real* dy, int n, real B) {
    double loss = 0.0;
    for (int j = 0; j < n; ++j) {
        const real d = y[j] - t[j];
        loss += (double)(d * d);
        dy[j] = d / B;
    }
    return 0.5 * loss;
}

__device__ double loss_row(int kind, const real* y, const real* t, real* dy, int n, real B) {
    if (kind == LOSS_CROSS_ENTROPY) return softmax_xent_row(y, t, dy, n, B);
    if (kind == LOSS_BINARY_CROSS_ENTROPY) return sigmoid_xent_row(y, t, dy, n, B);
    return mse_row(y, t, dy, n, B);
}

/* The class a row picks, as Sequential._n_correct: argmax (first of equals), or for one
   output a threshold: 0 on logits (a loss that applies the activation), else 0.5. */
__device__ long long row_guess(const real* y, int n, int logits) {
    if (n == 1) return y[0] > (logits ? (real)0 : (real)0.5) ? 1 : 0;
    int best = 0;
    for (int j = 1; j < n; ++j) best = y[j] > y[best] ? j : best;
    return best;
}

/* Sums two per-thread values over the block (blockDim.x a power of two); thread 0 reads them. */
__device__ void block_sum2(double* a, double* b) {
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        __syncthreads();
        if (threadIdx.x < stride) {
            a[threadIdx.x] += a[threadIdx.x + stride];
            b[threadIdx.x] += b[threadIdx.x + stride];
        }
    }
    __syncthreads();
}

/* The loss op: loss[0] = (sum of row losses) / B and dY, for Y, T (B, n) C-contiguous.
   One block: the sum is taken in a fixed order (the same bits every run). */
extern "C" __global__ void loss_op(int kind, const real* Y, const real* T, real* dY, int B, int n,
                                   real* loss) {
    __shared__ double s_loss[%(LOSS_THREADS)d];
    __shared__ double s_none[%(LOSS_THREADS)d];
    double acc = 0.0;
    for (int i = threadIdx.x; i < B; i += blockDim.x) {
        const long long at = (long long)i * n;
        acc += loss_row(kind, Y + at, T + at, dY + at, n, (real)B);
    }
    s_loss[threadIdx.x] = acc;
    s_none[threadIdx.x] = 0.0;
    block_sum2(s_loss, s_none);
    if (threadIdx.x == 0) loss[0] = (real)(s_loss[0] / B);
}

/* The loss of one training batch: rows order[offset[0] + i] of the data set's targets T and
   labels; writes dZ (the output activation's backward applied when out_act is set) and adds
   the summed row losses and the number of right guesses to acc[0], acc[1]. acc[2] is the
   epoch's stop flag: -1, or the index of the first batch whose loss was NaN/inf (offset / bs);
   from then on every kernel of the step returns at once, so that batch is not applied. */
extern "C" __global__ void loss_epoch(int kind, const real* Y, const real* T, const long long* labels,
                                      const long long* order, const long long* offset, int rows,
                                      int bs, int n, int out_act, int logits, real* dZ, double* acc) {
    if (acc[2] >= 0.0) return;
    __shared__ double s_loss[%(LOSS_THREADS)d];
    __shared__ double s_hits[%(LOSS_THREADS)d];
    double loss = 0.0, hits = 0.0;
    for (int i = threadIdx.x; i < rows; i += blockDim.x) {
        const long long src = order[offset[0] + i];
        const long long at = (long long)i * n;
        loss += loss_row(kind, Y + at, T + src * n, dZ + at, n, (real)rows);
        hits += row_guess(Y + at, n, logits) == labels[src] ? 1.0 : 0.0;
        if (out_act)
            for (int j = 0; j < n; ++j) dZ[at + j] = fastnn_act_backward(Y[at + j], dZ[at + j], out_act, (real)0);
    }
    s_loss[threadIdx.x] = loss;
    s_hits[threadIdx.x] = hits;
    block_sum2(s_loss, s_hits);
    if (threadIdx.x == 0) {
        if (isfinite(s_loss[0])) {
            acc[0] += s_loss[0];
            acc[1] += s_hits[0];
        } else {
            acc[2] = (double)(offset[0] / bs);
        }
    }
}

/* Xb (rows, nI) = rows order[offset[0] + i] of the uint8 data set X (N, nI), as real: a data
   set kept as uint8 (it did not fit in GPU memory as floats) enters a training step through
   this copy, the same numbers float(X) would give. Nothing runs once stop[0] >= 0. */
extern "C" __global__ void gather_u8(const unsigned char* X, long long nI, const long long* order,
                                     const long long* offset, int rows, real* Xb, const double* stop) {
    if (stop[0] >= 0.0) return;
    const long long n = (long long)rows * nI;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (long long)gridDim.x * blockDim.x) {
        const long long i = e / nI, k = e %% nI;
        Xb[e] = (real)X[order[offset[0] + i] * nI + k];
    }
}

/* The next batch starts `rows` further into the epoch's order (the last kernel of a step). */
extern "C" __global__ void advance(long long* offset, int rows) {
    offset[0] += rows;
}

/* The update rules' step counts and per-step scalars (ops_source.tick). */
%(TICKS)s
"""

_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
#: The dtypes every kernel here takes.
DTYPES = tuple(_CTYPES)


def source(dtype):
    """The raw module's CUDA source for ``dtype`` (float32 or float64)."""
    ticks = "\n".join(ops_source.tick(rule) for rule in optimizers.RULES if rule.step_scalars)
    params = {"TILE_M": TILE_M, "TILE_N": TILE_N, "TILE_K": TILE_K, "LOSS_THREADS": LOSS_THREADS,
              "TICKS": ticks.replace("%", "%%")}
    return f"typedef {_CTYPES[np.dtype(dtype)]} real;\n" + _DEVICE + _MODULE % params


@functools.cache
def _module(dtype):
    return cupy.RawModule(code=source(dtype))


@functools.cache
def raw(name, dtype):
    """The raw kernel ``name`` for ``dtype``; the module compiles on the first call.

    Cached: ``get_function`` builds a new RawKernel each time (a per-call cost on the
    layer-by-layer path); a RawKernel keeps its compiled function per device itself.
    """
    return _module(np.dtype(dtype)).get_function(name)


def scalar(dtype, value):
    """``value`` as a kernel argument of the C type ``real`` (CuPy passes NumPy scalars by value)."""
    return np.dtype(dtype).type(value)


# ---- launchers of the raw kernels: arguments converted to the C types in one place ----------
_I32, _I64 = np.int32, np.int64


def gemm(A, B, C, M, N, K, stop, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, bias=None,
         act="identity", Y=None, dact="identity", gather=None):
    """``C (M, N) = act(alpha·op(A) @ op(B) + beta·C + bias)``, or ``act'(Y) ⊙ (alpha·op(A) @ op(B))``.

    All arrays C-contiguous on the device, of one dtype; ``gather=(order, offset)`` reads the
    stored A's row i from row ``order[offset[0] + i]`` (int64 device arrays). Does nothing
    when ``stop[0] >= 0`` (a float64 device array).
    """
    dtype = C.dtype
    order, offset = gather if gather is not None else (C, C)  # unread without gather
    lda = A.shape[1]
    ldb = B.shape[1]
    grid = ((N + TILE_N - 1) // TILE_N, (M + TILE_M - 1) // TILE_M, 1)
    raw("gemm_tiled", dtype)(grid, (TILE_N, TILE_M, 1), (
        A, _I64(lda), _I32(trans_a), order, offset, _I32(gather is not None),
        B, _I64(ldb), _I32(trans_b), C, _I32(M), _I32(N), _I32(K),
        scalar(dtype, alpha), scalar(dtype, beta),
        C if bias is None else bias, _I32(bias is not None), _I32(ACT_CODES[act]),
        C if Y is None else Y, _I32(ACT_CODES[dact]), stop))


def bias_grad(dZ, out, M, N, stop, alpha=1.0, beta=0.0):
    """``out (N,) = alpha·(sum of dZ's first M rows) + beta·out``, unless ``stop[0] >= 0``."""
    dtype = out.dtype
    raw("bias_grad", dtype)(((N + 127) // 128, 1, 1), (128, 1, 1),
                            (dZ, _I32(M), _I32(N), out, scalar(dtype, alpha), scalar(dtype, beta), stop))


def loss_op(kind, Y, T, dY, loss):
    """The loss op: ``loss`` (1,) = mean over rows, ``dY`` filled; all C-contiguous."""
    B, n = Y.shape
    raw("loss_op", Y.dtype)((1, 1, 1), (LOSS_THREADS, 1, 1),
                            (_I32(LOSS_CODES[kind]), Y, T, dY, _I32(B), _I32(n), loss))


def loss_epoch(kind, Y, T, labels, order, offset, rows, bs, out_act, logits, dZ, acc):
    """One training batch's loss: rows ``order[offset[0]:][:rows]`` of T and labels; ``acc`` is
    (loss sum, right guesses, stop flag) in float64 (see the kernel)."""
    n = T.shape[1]
    raw("loss_epoch", Y.dtype)((1, 1, 1), (LOSS_THREADS, 1, 1), (
        _I32(LOSS_CODES[kind]), Y, T, labels, order, offset, _I32(rows), _I32(bs), _I32(n),
        _I32(ACT_CODES[out_act]), _I32(logits), dZ, acc))


def gather_u8(X, order, offset, rows, Xb, stop):
    """``Xb[:rows] = X[order[offset[0]:][:rows]]`` as floats (X uint8 (N, nI), Xb C-contiguous),
    unless ``stop[0] >= 0``."""
    n_in = X.shape[1]
    blocks = max(1, min(1024, (rows * n_in + 255) // 256))  # a grid-stride loop covers the rest
    raw("gather_u8", Xb.dtype)((blocks, 1, 1), (256, 1, 1),
                               (X, _I64(n_in), order, offset, _I32(rows), Xb, stop))


def advance(offset, rows, dtype):
    raw("advance", dtype)((1, 1, 1), (1, 1, 1), (offset, _I32(rows)))


def tick(rule, s, hyper, dtype):
    """Count a step of ``rule`` and compute its per-step scalars into ``s`` (device float64)."""
    settings = [name for name in rule.inputs if name not in dict(rule.step_scalars)]
    raw(f"tick_{rule.name}", dtype)((1, 1, 1), (1, 1, 1), (s, *[np.float64(hyper[name]) for name in settings]))


# ---- element-wise kernels (any strides, broadcasting) ---------------------------------
@functools.cache
def bias_act(act, with_bias):
    """``Y = act(Z + b)`` (``b`` broadcast over the rows), or ``act(Z)``; ``p``: the setting."""
    code = ACT_CODES[act]
    if with_bias:
        return cupy.ElementwiseKernel("T z, T b, T p", "T y", f"y = fastnn_act(z + b, {code}, p)",
                                      f"fastnn_bias_{act}", preamble=_DEVICE)
    return cupy.ElementwiseKernel("T z, T p", "T y", f"y = fastnn_act(z, {code}, p)", f"fastnn_{act}",
                                  preamble=_DEVICE)


@functools.cache
def act_backward(act):
    """``dZ`` from ``V`` (the output Y, or the input Z where the entry needs it) and ``dY``."""
    return cupy.ElementwiseKernel("T v, T dy, T p", "T dz", f"dz = fastnn_act_backward(v, dy, {ACT_CODES[act]}, p)",
                                  f"fastnn_{act}_backward", preamble=_DEVICE)


@functools.cache
def update(rule, in_graph=False):
    """One step of update rule ``rule`` in place (W and its slots are the kernel's outputs, read and
    written, as Chainer's optimizers do); arguments: dW, the rule's inputs, then (in a CUDA graph)
    the device's per-step scalars ``s`` and ``stop``, then W and the slots."""
    in_params, out_params, body = ops_source.update(rule, in_graph)
    return cupy.ElementwiseKernel(in_params, out_params, body,
                                  f"fastnn_{rule.name}{'_graph' if in_graph else ''}")
