"""Every compiled kernel of the numba backend, in one module.

One module on purpose: numba's disk cache (``cache=True``) does not notice edits
in *other* files a kernel uses, and it freezes globals at compile time, so
tunables are passed as arguments. Nothing here may defeat the cache: no ctypes
pointers captured, no ``exec``; BLAS is reached through a symbol registered
with LLVM (``_register_blas``) on every import, before compiled code runs.

Layout conventions: arrays are C-contiguous; a matrix is often handled as its
flat buffer with explicit index arithmetic, because with runtime 2-D strides
LLVM gives up vectorising. Indices are cast to unsigned (``U``) so numba emits
no negative-index wraparound, which would turn contiguous loads into gathers.
"""
import math

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import get_cython_function_address, intrinsic, overload
from numba.np.numpy_support import carray

#: The fast-math flags of every kernel, in one place: reassociation and FMA
#: contraction let LLVM vectorise reductions; no ``nnan``/``ninf``, so NaN and
#: inf still propagate and a diverging loss is still seen.
FASTMATH = {"nsz", "arcp", "contract", "reassoc"}
#: Serial kernels. ``error_model="numpy"``: a kernel never raises (x/0 is inf).
KERNEL = dict(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy", boundscheck=False)
#: Kernels with a ``prange`` loop; called only where there is enough work.
PARALLEL = dict(KERNEL, parallel=True)

U = np.uint64

#: Activation codes (the order of ``fastnn.backend.ACTIVATIONS``).
IDENTITY, SIGMOID, RELU, TANH = 0, 1, 2, 3


# ---- low-level helpers (LLVM intrinsics; all cache-safe) ------------------

#: Bytes of one tile's accumulators: 4 rows of 4 zmm registers (16 of the 32).
TILE_BYTES = 1024


@intrinsic
def _tile_accumulators(typingctx, like):
    """A pointer to one tile's accumulators (TILE_BYTES, ``like``'s dtype) on the stack.

    Accumulators there cannot alias the kernel's arguments, so LLVM keeps them
    in vector registers (a heap array would need runtime alias checks).
    """
    dtype = like.dtype

    def codegen(context, builder, signature, args):
        n = TILE_BYTES // context.get_abi_sizeof(context.get_data_type(dtype))
        return cgutils.alloca_once(builder, context.get_data_type(dtype), size=n)
    return types.CPointer(dtype)(like), codegen


def _lanes_intrinsic(n_bytes):
    """An intrinsic ``f(like)``: how many elements of ``like``'s dtype fill ``n_bytes`` (a constant)."""
    @intrinsic
    def lanes(typingctx, like):
        def codegen(context, builder, signature, args):
            itemsize = context.get_abi_sizeof(context.get_data_type(like.dtype))
            return context.get_constant(types.intp, n_bytes // itemsize)
        return types.intp(like), codegen
    return lanes


#: Tile widths in elements: 4 zmm (64 float32, 32 float64) and 2 zmm for a narrow remainder.
_wide_tile, _narrow_tile = _lanes_intrinsic(TILE_BYTES // 4), _lanes_intrinsic(TILE_BYTES // 8)


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


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret the low 32 bits of an integer as a float32 (vectorises; no memory)."""
    if not isinstance(bits, types.Integer) or bits.bitwidth < 32:
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if bits.bitwidth > 32:
            value = builder.trunc(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())
    return types.float32(bits), codegen


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


# ---- exp: a vectorisable float32 version ----------------------------------
# numba's np.exp calls scalar expf (no SVML here), which would make the fused
# activations slower than NumPy's SIMD exp. Cephes' expf: range reduction by
# ln 2, a degree-6 polynomial, the exponent put in by bit arithmetic (max
# relative error ~2e-7). float64 keeps the exact libm exp.
_F32 = np.float32
_EXP_HI, _EXP_LO = _F32(88.0), _F32(-87.3)
_LOG2E, _LN2_HI, _LN2_LO = _F32(1.44269504088896341), _F32(0.693359375), _F32(-2.12194440e-4)
_P0, _P1, _P2 = _F32(1.9875691500e-4), _F32(1.3981999507e-3), _F32(8.3334519073e-3)
_P3, _P4, _P5 = _F32(4.1665795894e-2), _F32(1.6666665459e-1), _F32(5.0000001201e-1)
_HALF, _ONE = _F32(0.5), _F32(1.0)


def _exp(x):
    """exp(x) for float32/float64 scalars inside kernels."""
    return math.exp(x)


@overload(_exp)
def _exp_overload(x):
    if x == types.float32:
        def exp32(x):
            # comparisons written so that NaN passes through unchanged
            x = _EXP_HI if x > _EXP_HI else x
            x = _EXP_LO if x < _EXP_LO else x
            n = np.floor(x * _LOG2E + _HALF)
            r = x - n * _LN2_HI - n * _LN2_LO
            p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
            p = p * r * r + r + _ONE
            return p * _float32_from_bits((np.int32(n) + 127) << 23)
        return exp32
    return lambda x: math.exp(x)


# ---- BLAS (SciPy's), callable from compiled code and cacheable -------------

def _register_blas():
    """Register SciPy's BLAS gemm under stable names; must run in every process."""
    for name in ("sgemm", "dgemm"):
        llvm.add_symbol(f"fastnn_scipy_{name}", get_cython_function_address("scipy.linalg.cython_blas", name))


_register_blas()
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


# ---- gemm for small batches: register-blocked tiles -----------------------
# C (M, N) = alpha·op(A) (M, P) @ B (P, N) + beta·C, with op(A)[i, p] = a[i*rs + p*ps]
# (rs, ps = P, 1 for A; 1, M for a stored Aᵀ) and B row-major. A tile is 4 rows of C by
# JB columns; its 4·JB accumulators live on the stack, so LLVM keeps them in vector
# registers while p runs (16 zmm registers for the wide tiles; JB is a constant once
# inlined). Rows past M are computed from row M-1 weighted by zero and not stored. A
# tile narrower than JB reads B past the tile's end (still inside B) where it can, and
# stores only its columns.

@njit(inline="always", **KERNEL)
def _tile(a, rs, ps, b, ldb, P, c, ldc, i, M, j0, w, alpha, beta, JB):
    acc = carray(_tile_accumulators(a), (4 * JB,))
    zero, one = _zero(a), _one(a)
    i1, i2, i3 = min(i + 1, M - 1), min(i + 2, M - 1), min(i + 3, M - 1)
    w1 = one if i + 1 < M else zero
    w2 = one if i + 2 < M else zero
    w3 = one if i + 3 < M else zero
    for j in range(4 * JB):
        acc[j] = zero
    # rows p whose full-width tile [j0, j0 + JB) lies inside b
    p_full = P if w == JB else min(P, max(0, (b.size - j0 - JB) // ldb + 1))
    for p in range(p_full):
        x0 = a[U(i * rs + p * ps)]
        x1 = a[U(i1 * rs + p * ps)] * w1
        x2 = a[U(i2 * rs + p * ps)] * w2
        x3 = a[U(i3 * rs + p * ps)] * w3
        q = U(p * ldb + j0)
        for j in range(JB):
            v = b[q + U(j)]
            acc[j] += x0 * v
            acc[JB + j] += x1 * v
            acc[2 * JB + j] += x2 * v
            acc[3 * JB + j] += x3 * v
    for p in range(p_full, P):
        x0 = a[U(i * rs + p * ps)]
        x1 = a[U(i1 * rs + p * ps)] * w1
        x2 = a[U(i2 * rs + p * ps)] * w2
        x3 = a[U(i3 * rs + p * ps)] * w3
        q = U(p * ldb + j0)
        for j in range(w):
            v = b[q + U(j)]
            acc[j] += x0 * v
            acc[JB + j] += x1 * v
            acc[2 * JB + j] += x2 * v
            acc[3 * JB + j] += x3 * v
    for r in range(min(4, M - i)):
        q = U((i + r) * ldc + j0)
        if beta == zero:
            for j in range(w):
                c[q + U(j)] = alpha * acc[r * JB + j]
        else:
            for j in range(w):
                c[q + U(j)] = alpha * acc[r * JB + j] + beta * c[q + U(j)]


@njit(**KERNEL)
def gemm_tiles(a, rs, ps, b, ldb, P, c, ldc, M, N, alpha, beta, t0, t1):
    """Tiles ``t0 .. t1-1`` of the product (row-tile major; see ``gemm_tile_count``)."""
    wide, narrow = _wide_tile(a), _narrow_tile(a)
    n_col_tiles = (N + wide - 1) // wide
    for t in range(t0, t1):
        i = (t // n_col_tiles) * 4
        j0 = (t % n_col_tiles) * wide
        w = min(wide, N - j0)
        if w <= narrow:
            _tile(a, rs, ps, b, ldb, P, c, ldc, i, M, j0, w, alpha, beta, narrow)
        else:
            _tile(a, rs, ps, b, ldb, P, c, ldc, i, M, j0, w, alpha, beta, wide)


@njit(**PARALLEL)
def gemm_tiles_parallel(a, rs, ps, b, ldb, P, c, ldc, M, N, alpha, beta, n_chunks):
    """All tiles of the product, in ``n_chunks`` contiguous runs shared among the threads."""
    n_tiles = ((M + 3) // 4) * ((N + _wide_tile(a) - 1) // _wide_tile(a))
    for chunk in prange(n_chunks):
        gemm_tiles(a, rs, ps, b, ldb, P, c, ldc, M, N, alpha, beta,
                   chunk * n_tiles // n_chunks, (chunk + 1) * n_tiles // n_chunks)


def gemm_tile_count(M, N, dtype):
    """How many tiles ``gemm_tiles`` splits an (M, N) product of ``dtype`` into."""
    wide = TILE_BYTES // 4 // np.dtype(dtype).itemsize
    return ((M + 3) // 4) * ((N + wide - 1) // wide)


@njit(**KERNEL)
def transpose(X, XT):
    """``XT = Xᵀ`` in 16×16 blocks (both C-contiguous): (R, S) -> (S, R)."""
    R, S = X.shape
    for r0 in range(0, R, 16):
        for s0 in range(0, S, 16):
            for r in range(r0, min(r0 + 16, R)):
                for s in range(s0, min(s0 + 16, S)):
                    XT[s, r] = X[r, s]


@njit(**KERNEL)
def axpby(X, Y, alpha, beta):
    """``Y = alpha·X + beta·Y`` on flat views (the scaled update after a BLAS product)."""
    x, y = X.ravel(), Y.ravel()
    for k in range(y.size):
        y[k] = alpha * x[k] + beta * y[k]



# ---- fused element-wise kernels ------------------------------------------
# Serial: they are memory-bound and short next to the products around them.
# Scalars (lr, betas, ...) arrive in the arrays' dtype, so float32 stays float32.

@njit(**KERNEL)
def bias_act(Z, b, has_bias, act, Y):
    """``Y = act(Z + b)``: Z, Y (B, n), b (n,). The bias per row, the activation over Y flat."""
    B, n = Z.shape
    if has_bias:
        for i in range(B):
            z, y = Z[i], Y[i]
            for j in range(n):
                y[j] = z[j] + b[j]
    else:
        Y[:] = Z
    y = Y.ravel()
    zero, one = _zero(Z), _one(Z)
    if act == SIGMOID:
        for k in range(y.size):
            y[k] = one / (one + _exp(-y[k]))
    elif act == RELU:
        for k in range(y.size):
            y[k] = zero if y[k] < zero else y[k]  # NaN passes, as with np.maximum
    elif act == TANH:
        for k in range(y.size):
            y[k] = np.tanh(y[k])


@njit(**KERNEL)
def act_backward(Y, dY, act, dZ):
    """``dZ = dY · act'`` from the activation's output Y; all (B, n), flat here."""
    y, dy, dz = Y.ravel(), dY.ravel(), dZ.ravel()
    zero, one = _zero(Y), _one(Y)
    if act == SIGMOID:
        for k in range(y.size):
            dz[k] = dy[k] * y[k] * (one - y[k])
    elif act == RELU:
        for k in range(y.size):
            dz[k] = dy[k] * (one if y[k] > zero else zero)  # a product: NaN in dY propagates
    elif act == TANH:
        for k in range(y.size):
            dz[k] = dy[k] * (one - y[k] * y[k])
    else:
        for k in range(y.size):
            dz[k] = dy[k]


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
            e = _exp(z[j] - m)
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
def sigmoid_xent(Z, T, dZ):
    """Sigmoid cross-entropy on logits, fused; returns the loss (float64), fills dZ.

    loss += softplus(z) − t·z with softplus(z) = max(z, 0) + ln(1 + e^−|z|);
    dZ = (σ(z) − t) / B, σ from the same e^−|z| (stable both ways).
    """
    B, n = Z.shape
    zero, one = _zero(Z), _one(Z)
    inv_B = one / B
    z, t, dz = Z.ravel(), T.ravel(), dZ.ravel()
    loss = 0.0
    for k in range(z.size):
        e = _exp(-abs(z[k]))
        positive = z[k] >= zero
        loss += (z[k] if positive else zero) + np.log1p(e) - t[k] * z[k]
        sigma = one / (one + e) if positive else e / (one + e)
        if z[k] != z[k]:
            sigma = z[k]
        dz[k] = (sigma - t[k]) * inv_B
    return loss / B


@njit(**KERNEL)
def sgd_update(W, dW, V, has_momentum, lr, momentum, nesterov, weight_decay):
    """One SGD step in place: g = dW + wd·W; V = μV + g; W -= lr·(g + μV if nesterov else V).

    One loop per case, so that no loop touches V when there is none (the caller then
    passes W as V, and LLVM would otherwise see them overlap and not vectorise).
    """
    w, dw, v = W.ravel(), dW.ravel(), V.ravel()
    if not has_momentum:
        for k in range(w.size):
            w[k] -= lr * (dw[k] + weight_decay * w[k])
    elif nesterov:
        for k in range(w.size):
            g = dw[k] + weight_decay * w[k]
            v[k] = momentum * v[k] + g
            w[k] -= lr * (g + momentum * v[k])
    else:
        for k in range(w.size):
            v[k] = momentum * v[k] + dw[k] + weight_decay * w[k]
            w[k] -= lr * v[k]


@njit(**KERNEL)
def adam_update(W, dW, M, V, lr, beta1, beta2, eps, weight_decay, correction1, correction2):
    """One Adam step in place; ``correction_i = 1 − beta_i**t`` (computed once by the caller)."""
    w, dw, m, v = W.ravel(), dW.ravel(), M.ravel(), V.ravel()
    one = _one(W)
    for k in range(w.size):
        g = dw[k] + weight_decay * w[k]
        m[k] = beta1 * m[k] + (one - beta1) * g
        v[k] = beta2 * v[k] + (one - beta2) * (g * g)
        m_hat = m[k] / correction1
        v_hat = v[k] / correction2
        w[k] -= lr * m_hat / (np.sqrt(v_hat) + eps)


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
