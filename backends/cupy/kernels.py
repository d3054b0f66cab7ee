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

#: Activation name -> the code the kernels take (the order of fastnn.backend.ACTIVATIONS).
ACT_CODES = {"identity": 0, "sigmoid": 1, "relu": 2, "tanh": 3}
#: Loss kind -> the code of the loss kernels.
LOSS_CODES = {"cross_entropy": 0, "binary_cross_entropy": 1, "mse": 2}
#: Threads of the one-block loss kernels (a power of two: the reduction halves it).
LOSS_THREADS = 256
#: Output tile of the matrix product (rows x columns; one thread per element) and its depth.
TILE_M, TILE_N, TILE_K = 16, 16, 32

# Activations by code, templated so ElementwiseKernels (type T) and the raw module (real) share them.
# Written as the reference writes them: sigmoid from e^-|z| (never overflows), the derivatives
# from the activation's output y.
_DEVICE = r"""
template <typename T> __device__ __forceinline__ T fastnn_act(T z, int act) {
    if (act == 1) {
        T e = exp(-fabs(z));
        return z >= (T)0 ? (T)1 / ((T)1 + e) : e / ((T)1 + e);
    }
    if (act == 2) return z <= (T)0 ? (T)0 : z;  /* NaN stays NaN, as max(z, 0) in NumPy */
    if (act == 3) return tanh(z);
    return z;
}

template <typename T> __device__ __forceinline__ T fastnn_act_backward(T y, T dy, int act) {
    if (act == 1) return dy * y * ((T)1 - y);
    if (act == 2) return dy * (y > (T)0 ? (T)1 : (T)0);
    if (act == 3) return dy * ((T)1 - y * y);
    return dy;
}
"""

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
        v = fastnn_act(v, act);
        if (dact) v = fastnn_act_backward(Y[at], v, dact);
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
        dz[j] = (fastnn_act(z[j], 1) - t[j]) / B;
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
    if (kind == 0) return softmax_xent_row(y, t, dy, n, B);
    if (kind == 1) return sigmoid_xent_row(y, t, dy, n, B);
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
            for (int j = 0; j < n; ++j) dZ[at + j] = fastnn_act_backward(Y[at + j], dZ[at + j], out_act);
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

/* Adam's step count and bias corrections on the device: s = (t, 1 - b1^t, 1 - b2^t). */
extern "C" __global__ void adam_tick(double* s, double b1, double b2) {
    s[0] += 1.0;
    s[1] = 1.0 - pow(b1, s[0]);
    s[2] = 1.0 - pow(b2, s[0]);
}
"""

_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
#: The dtypes every kernel here takes.
DTYPES = tuple(_CTYPES)


def source(dtype):
    """The raw module's CUDA source for ``dtype`` (float32 or float64)."""
    params = {"TILE_M": TILE_M, "TILE_N": TILE_N, "TILE_K": TILE_K, "LOSS_THREADS": LOSS_THREADS}
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


def adam_tick(s, beta1, beta2, dtype):
    raw("adam_tick", dtype)((1, 1, 1), (1, 1, 1), (s, np.float64(beta1), np.float64(beta2)))


# ---- element-wise kernels (any strides, broadcasting) ---------------------------------
@functools.cache
def bias_act(act, with_bias):
    """``Y = act(Z + b)`` (``b`` broadcast over the rows), or ``act(Z)``."""
    code = ACT_CODES[act]
    if with_bias:
        return cupy.ElementwiseKernel("T z, T b", "T y", f"y = fastnn_act(z + b, {code})",
                                      f"fastnn_bias_{act}", preamble=_DEVICE)
    return cupy.ElementwiseKernel("T z", "T y", f"y = fastnn_act(z, {code})", f"fastnn_{act}",
                                  preamble=_DEVICE)


@functools.cache
def act_backward(act):
    """``dZ`` from the activation's output ``Y`` and ``dY``."""
    return cupy.ElementwiseKernel("T y, T dy", "T dz", f"dz = fastnn_act_backward(y, dy, {ACT_CODES[act]})",
                                  f"fastnn_{act}_backward", preamble=_DEVICE)


# The optimizer steps update W (and their state) in place: they are the kernel's outputs, read
# and written (as Chainer's optimizers do). Each line computes what the reference's line does, in
# its order (NVRTC may fuse a multiply and an add, so the last bit can differ).
_SGD = """
T g = wd != 0 ? dw + (T)wd * w : dw;
w = w - (T)lr * g;
"""
_SGD_MOMENTUM = """
T g = wd != 0 ? dw + (T)wd * w : dw;
v = v * (T)mu + g;
T step = nesterov ? g + (T)mu * v : v;
w = w - (T)lr * step;
"""
_ADAM = """
T g = wd != 0 ? dw + (T)wd * w : dw;
m = m * (T)b1 + (T)(1 - b1) * g;
v = v * (T)b2 + (T)(1 - b2) * (g * g);
T m_hat = m / (T)(C1);
T v_hat = v / (T)(C2);
w = w - (T)lr * m_hat / (sqrt(v_hat) + (T)eps);
"""


# In a CUDA graph (in_graph=True) a step also takes ``raw float64 stop`` and changes nothing once
# stop[0] >= 0 (a batch had a NaN/inf loss); Adam's bias corrections then come from
# ``s = (t, c1, c2)`` on the device, since a graph replays the same arguments every step.
def _guarded(body):
    return "if (stop[0] < 0) {" + body + "}"


@functools.cache
def sgd(in_graph=False):
    params = "T dw, float64 lr, float64 wd"
    if in_graph:
        return cupy.ElementwiseKernel(params + ", raw float64 stop", "T w", _guarded(_SGD), "fastnn_sgd_graph")
    return cupy.ElementwiseKernel(params, "T w", _SGD, "fastnn_sgd")


@functools.cache
def sgd_momentum(in_graph=False):
    params = "T dw, float64 lr, float64 mu, int32 nesterov, float64 wd"
    if in_graph:
        return cupy.ElementwiseKernel(params + ", raw float64 stop", "T w, T v", _guarded(_SGD_MOMENTUM),
                                      "fastnn_sgd_momentum_graph")
    return cupy.ElementwiseKernel(params, "T w, T v", _SGD_MOMENTUM, "fastnn_sgd_momentum")


@functools.cache
def adam(in_graph=False):
    params = "T dw, float64 lr, float64 b1, float64 b2, float64 eps, float64 wd, "
    if in_graph:
        body = _ADAM.replace("C1", "s[1]").replace("C2", "s[2]")
        return cupy.ElementwiseKernel(params + "raw float64 s, raw float64 stop", "T w, T m, T v",
                                      _guarded(body), "fastnn_adam_graph")
    return cupy.ElementwiseKernel(params + "float64 c1, float64 c2", "T w, T m, T v",
                                  _ADAM.replace("C1", "c1").replace("C2", "c2"), "fastnn_adam")
