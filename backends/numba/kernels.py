"""Every compiled kernel of the numba backend, in one module.

One module on purpose: numba's disk cache (``cache=True``) does not notice edits
in *other* files a kernel uses, and it freezes globals at compile time, so
tunables are passed as arguments. Nothing here may defeat the cache: no ctypes
pointers captured, no ``exec``; BLAS is reached through a symbol registered
with LLVM (``ensure_blas``) in every process, before ``blas_gemm`` first runs.

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
from numba.extending import get_cython_function_address, intrinsic, models, overload, register_model

from . import cache as numba_cache
from .simd import VECTOR_BITS

#: The fast-math flags of every kernel, in one place: reassociation and FMA
#: contraction let LLVM vectorise reductions; no ``nnan``/``ninf``, so NaN and
#: inf still propagate and a diverging loss is still seen.
FASTMATH = {"nsz", "arcp", "contract", "reassoc"}
#: numba's disk cache where it has a folder for this file; none (a read-only install, home and
#: temp folder): the kernels compile in memory, in every process (``cache=True`` would raise here).
CACHE = numba_cache.kernels_cacheable()
#: Serial kernels. ``error_model="numpy"``: a kernel never raises (x/0 is inf).
KERNEL = dict(cache=CACHE, nogil=True, fastmath=FASTMATH, error_model="numpy", boundscheck=False)
#: Kernels with a ``prange`` loop; called only where there is enough work.
PARALLEL = dict(KERNEL, parallel=True)

U = np.uint64

#: Activation codes (the order of ``fastnn.backend.ACTIVATIONS``).
IDENTITY, SIGMOID, RELU, TANH = 0, 1, 2, 3


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


@intrinsic
def _as_dtype_of(typingctx, like, x):
    """The number ``x`` converted to ``like``'s dtype (an array's or a scalar's)."""
    dtype = like.dtype if isinstance(like, types.Array) else like

    def codegen(context, builder, signature, args):
        return context.cast(builder, args[1], signature.args[1], dtype)
    return dtype(like, x), codegen


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

_blas_registered = False


def ensure_blas():
    """Register SciPy's BLAS gemm under stable names, once per process, before ``blas_gemm``
    first runs (its machine code calls them). Not at import: importing ``scipy.linalg`` takes
    ~0.25 s, which a process that never calls ``blas_gemm`` should not pay. Returns True
    the first time (SciPy's BLAS library has just been loaded)."""
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


# ---- explicit SIMD vectors ------------------------------------------------
# numba runs no SLP vectoriser, and LLVM keeps a tile of accumulators in registers
# only when it can prove they alias nothing; named vector variables make the
# register tile explicit, whatever the sizes. Masked loads and stores handle a
# partial last vector (AVX-512 masks) instead of a slow scalar remainder.
# VECTOR_BITS: the compiled epoch's reading of the CPU numba compiles for (one rule for both).


class Vec(types.Type):
    """A native vector of floats (16 float32 / 8 float64 with AVX-512)."""

    def __init__(self, dtype):
        self.dtype, self.lanes = dtype, VECTOR_BITS // dtype.bitwidth
        super().__init__(name=f"Vec({dtype}x{self.lanes})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(dmm.lookup(fe_type.dtype).get_value_type(), fe_type.lanes))


def _is_flat(a):
    return isinstance(a, types.Array) and a.ndim == 1 and isinstance(a.dtype, types.Float)


def _lane_mask(builder, lanes, n):
    """``<lane < n for each lane>``: the first n lanes."""
    index = ir.Constant(ir.VectorType(ir.IntType(64), lanes), list(range(lanes)))
    limit = builder.insert_element(ir.Constant(index.type, ir.Undefined), n, ir.Constant(ir.IntType(32), 0))
    limit = builder.shuffle_vector(limit, ir.Constant(index.type, ir.Undefined),
                                   ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))
    return builder.icmp_signed("<", index, limit)


def _masked(builder, name, vector_type, *args):
    """Call ``llvm.masked.load`` / ``llvm.masked.store`` for ``vector_type``."""
    suffix = f"v{vector_type.count}{'f32' if isinstance(vector_type.element, ir.FloatType) else 'f64'}.p0"
    types_ = [a.type for a in args]
    result = vector_type if name == "load" else ir.VoidType()
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(result, types_), f"llvm.masked.{name}.{suffix}")
    return builder.call(fn, list(args))


@intrinsic
def _vload(typingctx, a, i, n):
    """Elements ``a[i : i + n]`` (n ≤ lanes; the other lanes 0) as a vector; reads nothing past them."""
    if not (_is_flat(a) and isinstance(i, types.Integer) and isinstance(n, types.Integer)):
        return None
    vec = Vec(a.dtype)

    def codegen(context, builder, signature, args):
        vt = context.get_value_type(vec)
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        ptr = builder.gep(data, [context.cast(builder, args[1], signature.args[1], types.intp)])
        mask = _lane_mask(builder, vec.lanes, context.cast(builder, args[2], signature.args[2], types.int64))
        align = ir.Constant(ir.IntType(32), a.dtype.bitwidth // 8)
        return _masked(builder, "load", vt, ptr, align, mask, ir.Constant(vt, None))
    return vec(a, i, n), codegen


@intrinsic
def _vstore(typingctx, a, i, v, n):
    """``a[i : i + n] = v[:n]`` (n ≤ lanes); writes nothing past them."""
    if not (_is_flat(a) and isinstance(v, Vec) and v.dtype == a.dtype):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        ptr = builder.gep(data, [context.cast(builder, args[1], signature.args[1], types.intp)])
        mask = _lane_mask(builder, v.lanes, context.cast(builder, args[3], signature.args[3], types.int64))
        _masked(builder, "store", args[2].type, args[2], ptr, ir.Constant(ir.IntType(32), a.dtype.bitwidth // 8), mask)
        return context.get_dummy_value()
    return types.none(a, i, v, n), codegen


@intrinsic
def _vsplat(typingctx, x):
    """A vector with the float ``x`` in every lane."""
    if not isinstance(x, types.Float):
        return None
    vec = Vec(x)

    def codegen(context, builder, signature, args):
        vt = context.get_value_type(vec)
        one = builder.insert_element(ir.Constant(vt, ir.Undefined), args[0], ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(one, ir.Constant(vt, ir.Undefined),
                                      ir.Constant(ir.VectorType(ir.IntType(32), vec.lanes), [0] * vec.lanes))
    return vec(x), codegen


@intrinsic
def _vfma(typingctx, x, y, z):
    """``x·y + z`` lane by lane, one rounding."""
    if not (isinstance(x, Vec) and x == y == z):
        return None

    def codegen(context, builder, signature, args):
        vt = args[0].type
        name = f"llvm.fma.v{x.lanes}{'f32' if x.dtype == types.float32 else 'f64'}"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt] * 3), name)
        return builder.call(fn, list(args))
    return x(x, y, z), codegen


@intrinsic
def _vlanes(typingctx, a):
    """Elements of ``a``'s dtype per vector (a compile-time constant)."""
    lanes = VECTOR_BITS // a.dtype.bitwidth

    def codegen(context, builder, signature, args):
        return context.get_constant(types.intp, lanes)
    return types.intp(a), codegen


# ---- gemm for small batches: register tiles -------------------------------
# C (M, N) = alpha·A (M, P) @ B (P, N) + beta·C, all row-major, M a small batch (the
# forward product X @ W, where BLAS is poorest). A tile is 4 rows of C by 4 vectors
# (64 float32 columns), or by 2 vectors for a narrow last tile, and 2 rows for the
# last 1 or 2 rows of a batch: up to 16 accumulators in registers, and per row p of B
# 4 vector loads, 4 broadcasts of A and 16 FMAs. Rows past M (a tile's 3rd row of a
# batch of 11, say) are computed from row M-1 weighted by zero and not stored.

@njit(inline="always", **KERNEL)
def _a_values(a, i, M, P, p):
    """``A[i : i+4, p]`` as 4 broadcast vectors; rows past M count as 0 (and read row M-1)."""
    zero = _zero(a)
    x0 = a[U(i * P + p)]
    x1 = a[U(min(i + 1, M - 1) * P + p)] if i + 1 < M else zero
    x2 = a[U(min(i + 2, M - 1) * P + p)] if i + 2 < M else zero
    x3 = a[U(min(i + 3, M - 1) * P + p)] if i + 3 < M else zero
    return _vsplat(x0), _vsplat(x1), _vsplat(x2), _vsplat(x3)


@njit(inline="always", **KERNEL)
def _a_values2(a, i, M, P, p):
    """``A[i : i+2, p]`` as 2 broadcast vectors; a row past M counts as 0."""
    x1 = a[U(min(i + 1, M - 1) * P + p)] if i + 1 < M else _zero(a)
    return _vsplat(a[U(i * P + p)]), _vsplat(x1)


@njit(inline="always", **KERNEL)
def _lanes_left(N, j, L):
    """How many of the L lanes from column j lie inside a row of N columns."""
    return min(L, max(0, N - j))


@njit(inline="always", **KERNEL)
def _store_row(c, q, acc, n, alpha, beta):
    """``c[q : q+n] = alpha·acc (+ beta·c)``, masked to n lanes."""
    if beta == _zero(c):
        out = _vfma(acc, _vsplat(alpha), _vsplat(beta))
    else:
        out = _vfma(acc, _vsplat(alpha), _vfma(_vload(c, q, n), _vsplat(beta), _vsplat(_zero(c))))
    _vstore(c, q, out, n)


@njit(**KERNEL)
def _tile_4x4(a, b, c, M, N, P, i, j0, alpha, beta):
    L = _vlanes(a)
    n0, n1, n2, n3 = _lanes_left(N, j0, L), _lanes_left(N, j0 + L, L), _lanes_left(N, j0 + 2 * L, L), \
        _lanes_left(N, j0 + 3 * L, L)
    z = _vsplat(_zero(a))
    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = z
    c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = z
    for p in range(P):
        q = p * N + j0
        b0, b1, b2, b3 = _vload(b, q, n0), _vload(b, q + L, n1), _vload(b, q + 2 * L, n2), _vload(b, q + 3 * L, n3)
        x0, x1, x2, x3 = _a_values(a, i, M, P, p)
        c00, c01, c02, c03 = _vfma(x0, b0, c00), _vfma(x0, b1, c01), _vfma(x0, b2, c02), _vfma(x0, b3, c03)
        c10, c11, c12, c13 = _vfma(x1, b0, c10), _vfma(x1, b1, c11), _vfma(x1, b2, c12), _vfma(x1, b3, c13)
        c20, c21, c22, c23 = _vfma(x2, b0, c20), _vfma(x2, b1, c21), _vfma(x2, b2, c22), _vfma(x2, b3, c23)
        c30, c31, c32, c33 = _vfma(x3, b0, c30), _vfma(x3, b1, c31), _vfma(x3, b2, c32), _vfma(x3, b3, c33)
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
    L = _vlanes(a)
    n0, n1 = _lanes_left(N, j0, L), _lanes_left(N, j0 + L, L)
    z = _vsplat(_zero(a))
    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = z
    for p in range(P):
        q = p * N + j0
        b0, b1 = _vload(b, q, n0), _vload(b, q + L, n1)
        x0, x1, x2, x3 = _a_values(a, i, M, P, p)
        c00, c01, c10, c11 = _vfma(x0, b0, c00), _vfma(x0, b1, c01), _vfma(x1, b0, c10), _vfma(x1, b1, c11)
        c20, c21, c30, c31 = _vfma(x2, b0, c20), _vfma(x2, b1, c21), _vfma(x3, b0, c30), _vfma(x3, b1, c31)
    rows = ((c00, c01), (c10, c11), (c20, c21), (c30, c31))
    for r in range(min(4, M - i)):
        q = (i + r) * N + j0
        v0, v1 = rows[r]
        _store_row(c, q, v0, n0, alpha, beta)
        _store_row(c, q + L, v1, n1, alpha, beta)


@njit(**KERNEL)
def _tile_2x4(a, b, c, M, N, P, i, j0, alpha, beta):
    # the last rows of a batch that leaves 1 or 2 (a batch of 10: 4 + 4 + 2): half the FMAs of a 4-row tile
    L = _vlanes(a)
    n0, n1, n2, n3 = _lanes_left(N, j0, L), _lanes_left(N, j0 + L, L), _lanes_left(N, j0 + 2 * L, L), \
        _lanes_left(N, j0 + 3 * L, L)
    z = _vsplat(_zero(a))
    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = z
    for p in range(P):
        q = p * N + j0
        b0, b1, b2, b3 = _vload(b, q, n0), _vload(b, q + L, n1), _vload(b, q + 2 * L, n2), _vload(b, q + 3 * L, n3)
        x0, x1 = _a_values2(a, i, M, P, p)
        c00, c01, c02, c03 = _vfma(x0, b0, c00), _vfma(x0, b1, c01), _vfma(x0, b2, c02), _vfma(x0, b3, c03)
        c10, c11, c12, c13 = _vfma(x1, b0, c10), _vfma(x1, b1, c11), _vfma(x1, b2, c12), _vfma(x1, b3, c13)
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
    L = _vlanes(a)
    n0, n1 = _lanes_left(N, j0, L), _lanes_left(N, j0 + L, L)
    z = _vsplat(_zero(a))
    c00 = c01 = c10 = c11 = z
    for p in range(P):
        q = p * N + j0
        b0, b1 = _vload(b, q, n0), _vload(b, q + L, n1)
        x0, x1 = _a_values2(a, i, M, P, p)
        c00, c01, c10, c11 = _vfma(x0, b0, c00), _vfma(x0, b1, c01), _vfma(x1, b0, c10), _vfma(x1, b1, c11)
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
def gemm_tiles(A, B, C, alpha, beta, t0, t1):
    """Tiles ``t0 .. t1-1`` (t1 = -1: to the last) of ``C = alpha·A @ B + beta·C``, row-tile major."""
    M, P = A.shape
    N = B.shape[1]
    a, b, c = A.ravel(), B.ravel(), C.ravel()
    alpha, beta = _as_dtype_of(a, alpha), _as_dtype_of(a, beta)
    L = _vlanes(a)
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
def gemm_tiles_parallel(A, B, C, alpha, beta, n_threads):
    """All tiles, in up to ``n_threads`` contiguous runs shared among the threads."""
    n_tiles = _tile_count(C.shape[0], C.shape[1], _vlanes(A))
    n_chunks = min(n_threads, n_tiles)
    for chunk in prange(n_chunks):
        gemm_tiles(A, B, C, alpha, beta, chunk * n_tiles // n_chunks, (chunk + 1) * n_tiles // n_chunks)


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
    y = Y.ravel()
    if not has_bias:
        z = Z.ravel()
        for k in range(y.size):  # (not Y[:] = Z: numba's slice assignment takes seconds to compile)
            y[k] = z[k]
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
