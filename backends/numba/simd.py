"""Explicit SIMD vectors, exp and atomics: the numba backend's one vector layer (intrinsics).

Used by the compiled epoch (``epoch_template.py``) and by the register tiles and
element-wise kernels of the layer-by-layer path (``kernels.py``).

Why: numba's loop vectoriser only reaches the FMA peak when every size is a
compile-time constant (see PERF-NOTES); with explicit vectors held in named
variables LLVM keeps a register tile of the products whatever the sizes, so
one compiled kernel serves every layer shape.

A vector ``Vec(dtype x width)`` is a native LLVM vector as wide as the host's
registers (16 float32 / 8 float64 with AVX-512, half that otherwise). Every
array given to these functions is 1-D and contiguous; indices are elements.

numba's disk cache keys a kernel on its own file only: ``epoch_codegen`` names the
generated epoch module by a hash that includes this file, and ``kernels.py`` adds
this file's hash to the cache key of each of its kernels, so an edit here
recompiles both.

No function here can raise: the kernels run on two threads joined by spin
barriers, and an exception in one would leave the other waiting.
"""
from __future__ import annotations

import math

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic, models, overload, register_model


def _vector_bits():
    """512 with AVX-512 on the CPU numba compiles for, else 256."""
    if config.CPU_NAME and config.CPU_NAME != "host":
        features = config.CPU_FEATURES or ""
        return 512 if "+avx512f" in features else 256
    return 512 if llvm.get_host_cpu_features().get("avx512f") else 256


VECTOR_BITS = _vector_bits()


def width(dtype):
    """Elements per vector for a NumPy or numba float dtype."""
    bits = dtype.bitwidth if hasattr(dtype, "bitwidth") else dtype.itemsize * 8
    return VECTOR_BITS // bits


class Vec(types.Type):
    """A SIMD vector of ``width`` floats of ``dtype`` (numba type)."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.width = width(dtype)
        super().__init__(name=f"Vec({dtype}x{self.width})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.width))


_I32 = ir.IntType(32)


def _is_flat(A):
    return isinstance(A, types.Array) and A.ndim == 1 and isinstance(A.dtype, types.Float)


def _pointer(context, builder, array_type, array, index, index_type):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [context.cast(builder, index, index_type, types.intp)])


def _splat(builder, x, vector_type):
    undef = ir.Constant(vector_type, ir.Undefined)
    one = builder.insert_element(undef, x, ir.Constant(_I32, 0))
    zeros = ir.Constant(ir.VectorType(_I32, vector_type.count), [0] * vector_type.count)
    return builder.shuffle_vector(one, undef, zeros)


def _vec_of(context, vec):
    return context.get_value_type(vec)


def _call_intrinsic(builder, name, *args):
    """``llvm.<name>.v<N>f<bits>(args)``: llvmlite only declares scalar intrinsics itself."""
    vt = args[0].type
    bits = 32 if isinstance(vt.element, ir.FloatType) else 64
    fnty = ir.FunctionType(vt, [vt] * len(args))
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.{name}.v{vt.count}f{bits}")
    return builder.call(fn, list(args))


def _fma(builder, a, b, c):
    return _call_intrinsic(builder, "fma", a, b, c)


# ---- memory ------------------------------------------------------------------
@intrinsic
def vload(typingctx, A, i):
    """``A[i : i + width]`` as a vector."""
    if not (_is_flat(A) and isinstance(i, types.Integer)):
        return None
    vec = Vec(A.dtype)

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        ptr = builder.bitcast(ptr, _vec_of(context, vec).as_pointer())
        return builder.load(ptr, align=A.dtype.bitwidth // 8)

    return vec(A, i), codegen


@intrinsic
def vstore(typingctx, A, i, v):
    """``A[i : i + width] = v``."""
    if not (_is_flat(A) and isinstance(i, types.Integer) and isinstance(v, Vec) and v.dtype == A.dtype):
        return None

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        ptr = builder.bitcast(ptr, args[2].type.as_pointer())
        builder.store(args[2], ptr, align=A.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(A, i, v), codegen


def _lane_mask(builder, lanes, n):
    """``<k < n for each lane k>`` (n an int64): the first n lanes; none for n <= 0, all for n >= lanes."""
    index = ir.Constant(ir.VectorType(ir.IntType(64), lanes), list(range(lanes)))
    return builder.icmp_signed("<", index, _splat(builder, n, index.type))


def _masked(builder, name, vector_type, *args):
    """A call of ``llvm.masked.load`` / ``llvm.masked.store`` for ``vector_type``."""
    bits = 32 if isinstance(vector_type.element, ir.FloatType) else 64
    result = vector_type if name == "load" else ir.VoidType()
    fnty = ir.FunctionType(result, [a.type for a in args])
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.masked.{name}.v{vector_type.count}f{bits}.p0")
    return builder.call(fn, list(args))


@intrinsic
def vload_part(typingctx, A, i, n):
    """``A[i : i + n]`` in the first n lanes of a vector, 0 in the others (n <= width); reads
    nothing past them: a partial last vector of a row by a masked load, not a scalar remainder.
    The mask depends on n only, so in a loop with a fixed n LLVM makes it once, outside."""
    if not (_is_flat(A) and isinstance(i, types.Integer) and isinstance(n, types.Integer)):
        return None
    vec = Vec(A.dtype)

    def codegen(context, builder, sig, args):
        vt = _vec_of(context, vec)
        ptr = _pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        mask = _lane_mask(builder, vec.width, context.cast(builder, args[2], sig.args[2], types.int64))
        align = ir.Constant(_I32, A.dtype.bitwidth // 8)
        return _masked(builder, "load", vt, ptr, align, mask, ir.Constant(vt, None))

    return vec(A, i, n), codegen


@intrinsic
def vstore_part(typingctx, A, i, v, n):
    """``A[i : i + n] = v[:n]`` (n <= width); writes nothing past them (a masked store)."""
    if not (_is_flat(A) and isinstance(i, types.Integer) and isinstance(v, Vec) and v.dtype == A.dtype
            and isinstance(n, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        mask = _lane_mask(builder, v.width, context.cast(builder, args[3], sig.args[3], types.int64))
        _masked(builder, "store", args[2].type, args[2], ptr, ir.Constant(_I32, A.dtype.bitwidth // 8), mask)
        return context.get_dummy_value()

    return types.none(A, i, v, n), codegen


@intrinsic
def vbroadcast(typingctx, A, i):
    """A vector of ``A[i]`` in every lane."""
    if not (_is_flat(A) and isinstance(i, types.Integer)):
        return None
    vec = Vec(A.dtype)

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        return _splat(builder, builder.load(ptr), _vec_of(context, vec))

    return vec(A, i), codegen


@intrinsic
def vsplat(typingctx, A, x):
    """A vector of the number ``x`` (converted to ``A``'s dtype) in every lane."""
    if not (_is_flat(A) and isinstance(x, (types.Float, types.Integer))):
        return None
    vec = Vec(A.dtype)

    def codegen(context, builder, sig, args):
        x = context.cast(builder, args[1], sig.args[1], A.dtype)
        return _splat(builder, x, _vec_of(context, vec))

    return vec(A, x), codegen


@intrinsic
def vwidth(typingctx, A):
    """The number of ``A``'s elements per vector (a compile-time constant; ``A`` any float array)."""
    if not (isinstance(A, types.Array) and isinstance(A.dtype, types.Float)):
        return None
    n = width(A.dtype)

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, n)

    return types.intp(A), codegen


# ---- arithmetic --------------------------------------------------------------
def _binary(build):
    @intrinsic
    def op(typingctx, a, b):
        if not (isinstance(a, Vec) and a == b):
            return None

        def codegen(context, builder, sig, args):
            return build(builder, *args)

        return a(a, b), codegen

    return op


vadd = _binary(lambda builder, a, b: builder.fadd(a, b))
vsub = _binary(lambda builder, a, b: builder.fsub(a, b))
vmul = _binary(lambda builder, a, b: builder.fmul(a, b))
vdiv = _binary(lambda builder, a, b: builder.fdiv(a, b))
#: ``b`` where ``a < b`` else ``a``: a NaN in ``a`` stays NaN (like NumPy's maximum).
vmax = _binary(lambda builder, a, b: builder.select(builder.fcmp_ordered("<", a, b), b, a))

@intrinsic
def vfma(typingctx, a, b, c):
    """``a * b + c`` in one rounding."""
    if not (isinstance(a, Vec) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        return _fma(builder, *args)

    return a(a, b, c), codegen


def _unary(name):
    """``llvm.<name>`` lane by lane."""
    @intrinsic
    def op(typingctx, a):
        if not isinstance(a, Vec):
            return None

        def codegen(context, builder, sig, args):
            return _call_intrinsic(builder, name, args[0])

        return a(a), codegen

    return op


vsqrt, vabs = _unary("sqrt"), _unary("fabs")


@intrinsic
def vsum(typingctx, a):
    """The sum of the lanes (a halving tree)."""
    if not isinstance(a, Vec):
        return None

    def codegen(context, builder, sig, args):
        v, n = args[0], a.width
        undef = ir.Constant(v.type, ir.Undefined)
        while n > 1:
            n //= 2
            high = builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(_I32, a.width),
                                                                [n + k if k < n else 0 for k in range(a.width)]))
            v = builder.fadd(v, high)
        return builder.extract_element(v, ir.Constant(_I32, 0))

    return a.dtype(a), codegen


@intrinsic
def vsum4(typingctx, a, b, c, d):
    """A vector whose lanes 0..3 hold the sums of a, b, c and d (a transposing add tree:
    about a third of the work of four separate sums)."""
    if not (isinstance(a, Vec) and a == b == c == d and a.width >= 4):
        return None
    n = a.width

    def codegen(context, builder, sig, args):
        def mix(x, y, lanes):
            return builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(_I32, len(lanes)), lanes))

        def pair(x, y, group):
            # lanes of x and y form groups of `group` partial sums; halve every group
            half = group // 2
            first = [g + i for g in range(0, n, group) for i in range(half)]
            second = [g + half + i for g in range(0, n, group) for i in range(half)]
            lo = mix(x, y, first + [n + i for i in first])
            hi = mix(x, y, second + [n + i for i in second])
            return builder.fadd(lo, hi)

        ab, cd = pair(args[0], args[1], n), pair(args[2], args[3], n)
        v, group = pair(ab, cd, n // 2), n // 4
        undef = ir.Constant(v.type, ir.Undefined)
        while group > 1:  # within one vector: halve each of the four groups
            half = group // 2
            first = [g + i for g in range(0, n, group) for i in range(half)]
            second = [g + half + i for g in range(0, n, group) for i in range(half)]
            pad = [0] * (n - len(first))
            v = builder.fadd(mix(v, undef, first + pad), mix(v, undef, second + pad))
            group = half
        return v

    return a(a, b, c, d), codegen


@intrinsic
def vstore4(typingctx, A, i, v):
    """A[i : i + 4] = lanes 0..3 of v."""
    if not (_is_flat(A) and isinstance(i, types.Integer) and isinstance(v, Vec) and v.dtype == A.dtype):
        return None

    def codegen(context, builder, sig, args):
        quad = builder.shuffle_vector(args[2], ir.Constant(args[2].type, ir.Undefined),
                                      ir.Constant(ir.VectorType(_I32, 4), [0, 1, 2, 3]))
        ptr = _pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        builder.store(quad, builder.bitcast(ptr, quad.type.as_pointer()), align=A.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(A, i, v), codegen


@intrinsic
def vmaxlanes(typingctx, a):
    """The largest lane (a halving tree; NaN lanes may or may not win)."""
    if not isinstance(a, Vec):
        return None

    def codegen(context, builder, sig, args):
        v, n = args[0], a.width
        undef = ir.Constant(v.type, ir.Undefined)
        while n > 1:
            n //= 2
            high = builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(_I32, a.width),
                                                                [n + k if k < n else 0 for k in range(a.width)]))
            v = builder.select(builder.fcmp_ordered("<", v, high), high, v)
        return builder.extract_element(v, ir.Constant(_I32, 0))

    return a.dtype(a), codegen


@intrinsic
def vlane(typingctx, a, k):
    """Lane ``k`` of ``a``."""
    if not (isinstance(a, Vec) and isinstance(k, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.extract_element(args[0], builder.trunc(args[1], _I32)
                                       if args[1].type.width > 32 else args[1])

    return a.dtype(a, k), codegen


# ---- exp ---------------------------------------------------------------------
# exp(x) = 2^n · e^r with n = round(x / ln 2), |r| <= ln2 / 2; e^r by its Taylor
# polynomial (degree 7 for float32: error < 1 ulp; degree 12 for float64).
_EXP = {
    32: dict(hi=88.72283, lo=-87.33654, bias=127, mantissa=23, degree=7),
    64: dict(hi=709.782712893384, lo=-708.3964185322641, bias=1023, mantissa=52, degree=12),
}
_LN2_HI, _LN2_LO = 0.693145751953125, 1.428606765330187e-06


@intrinsic
def vexp(typingctx, a):
    """e^a per lane; +inf above the overflow limit, 0 below the normal range, NaN stays NaN."""
    if not isinstance(a, Vec):
        return None
    bits = a.dtype.bitwidth

    def codegen(context, builder, sig, args):
        x = args[0]
        vt = x.type
        p = _EXP[bits]
        const = lambda value: ir.Constant(vt, [value] * a.width)  # noqa: E731
        clamped = builder.select(builder.fcmp_ordered(">", x, const(p["hi"])), const(p["hi"]), x)
        clamped = builder.select(builder.fcmp_ordered("<", clamped, const(p["lo"])), const(p["lo"]), clamped)
        n = _call_intrinsic(builder, "rint", builder.fmul(clamped, const(1.4426950408889634)))
        r = _fma(builder, n, const(-_LN2_HI), clamped)
        r = _fma(builder, n, const(-_LN2_LO), r)
        poly = const(1.0)
        for k in range(p["degree"], 0, -1):  # Horner: 1 + r(1 + r/2(1 + r/3(...)))
            poly = _fma(builder, builder.fmul(r, const(1.0 / k)), poly, const(1.0))
        int_t = ir.VectorType(ir.IntType(bits), a.width)
        exponent = builder.add(builder.fptosi(n, int_t), ir.Constant(int_t, [p["bias"]] * a.width))
        scale = builder.bitcast(builder.shl(exponent, ir.Constant(int_t, [p["mantissa"]] * a.width)), vt)
        y = builder.fmul(poly, scale)
        y = builder.select(builder.fcmp_ordered(">", x, const(p["hi"])), const(float("inf")), y)
        y = builder.select(builder.fcmp_ordered("<", x, const(p["lo"])), const(0.0), y)
        return builder.select(builder.fcmp_unordered("uno", x, x), x, y)

    return a(a), codegen

# exp: the scalar of the element-wise kernels (kernels.py), in loops that LLVM's loop
# vectoriser widens; numba's own exp calls libm's expf one element at a time (no SVML
# here), slower than NumPy's SIMD exp. float32: Cephes' expf, range reduction by ln 2,
# a degree-6 minimax polynomial, the exponent put in by bit arithmetic (relative error
# about 2e-7; x clamped to [-87.3, 88]). Not vexp's Taylor polynomial, which is closer
# (< 1 ulp) but costs more: a sigmoid loop with it ran 1.6x slower (1.36x with its
# Horner on 1/k! coefficients). float64 keeps the exact libm exp.
_F32 = np.float32
_EXP_HI, _EXP_LO = _F32(88.0), _F32(-87.3)
_LOG2E, _C_LN2_HI, _C_LN2_LO = _F32(1.44269504088896341), _F32(0.693359375), _F32(-2.12194440e-4)
_P0, _P1, _P2 = _F32(1.9875691500e-4), _F32(1.3981999507e-3), _F32(8.3334519073e-3)
_P3, _P4, _P5 = _F32(4.1665795894e-2), _F32(1.6666665459e-1), _F32(5.0000001201e-1)
_HALF, _ONE = _F32(0.5), _F32(1.0)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret the low 32 bits of an integer as a float32 (vectorises; no memory)."""
    if not isinstance(bits, types.Integer) or bits.bitwidth < 32:
        return None

    def codegen(context, builder, sig, args):
        value = args[0]
        if bits.bitwidth > 32:
            value = builder.trunc(value, _I32)
        return builder.bitcast(value, ir.FloatType())

    return types.float32(bits), codegen


def exp(x):
    """e^x of a float32 or float64 scalar inside kernels (float32: Cephes' expf, see above)."""
    return math.exp(x)


@overload(exp)
def _exp_overload(x):
    if x == types.float32:
        def exp32(x):
            # comparisons written so that NaN passes through unchanged
            x = _EXP_HI if x > _EXP_HI else x
            x = _EXP_LO if x < _EXP_LO else x
            n = np.floor(x * _LOG2E + _HALF)
            r = x - n * _C_LN2_HI - n * _C_LN2_LO
            p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
            p = p * r * r + r + _ONE
            return p * _float32_from_bits((np.int32(n) + 127) << 23)
        return exp32
    return lambda x: math.exp(x)


# ---- threads: atomics for the spin barrier ------------------------------------
@intrinsic
def atomic_load(typingctx, A, i):
    """``A[i]`` read with acquire ordering (``A`` an int64 array)."""
    if not (isinstance(A, types.Array) and A.dtype == types.int64 and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        return builder.load_atomic(ptr, "acquire", 8)

    return types.int64(A, i), codegen


@intrinsic
def atomic_store(typingctx, A, i, v):
    """``A[i] = v`` with release ordering (``A`` an int64 array)."""
    if not (isinstance(A, types.Array) and A.dtype == types.int64 and isinstance(i, types.Integer)
            and isinstance(v, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        value = context.cast(builder, args[2], sig.args[2], types.int64)
        builder.store_atomic(value, ptr, "release", 8)
        return context.get_dummy_value()

    return types.none(A, i, v), codegen


@intrinsic
def prefetch(typingctx, A, i):
    """Ask for the cache line of ``A[i]`` ahead of its use (``llvm.prefetch``: read, keep in L1);
    a hint only: an index past the end is harmless."""
    if not (_is_flat(A) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = builder.bitcast(_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1]),
                              ir.IntType(8).as_pointer())
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer(), _I32, _I32, _I32]),
            "llvm.prefetch.p0i8")
        builder.call(fn, [ptr, ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return types.none(A, i), codegen


@intrinsic
def cycles(typingctx):
    """A cycle counter (the TSC on x86; 0 where LLVM has none): for timing waits, not work."""
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(64), []),
                                            "llvm.readcyclecounter")
        return builder.call(fn, [])

    return types.int64(), codegen


@intrinsic
def cpu_relax(typingctx):
    """The x86 ``pause`` hint inside a spin loop (nothing elsewhere)."""
    def codegen(context, builder, sig, args):
        if "x86" in builder.module.triple or "i686" in builder.module.triple:
            fn = builder.module.declare_intrinsic("llvm.x86.sse2.pause", fnty=ir.FunctionType(ir.VoidType(), []))
            builder.call(fn, [])
        return context.get_dummy_value()

    return types.none(), codegen


#: ``sched_yield()`` from the C library: a spinning thread gives its core away
#: when the other thread is not running (more threads than free cores).
sched_yield = types.ExternalFunction("sched_yield", types.int32())


@intrinsic
def rt(typingctx, x):
    """``x`` typed as a run-time value: numba compiles a jitted callee once per *constant*
    argument otherwise (``f(0)`` and ``f(1)`` would be two compilations)."""
    plain = types.unliteral(x)

    def codegen(context, builder, sig, args):
        return context.cast(builder, args[0], sig.args[0], plain)

    return plain(x), codegen


# ---- what the op tables' formulas need beyond arithmetic (fastnn.ops.symbolic) -----------
def _where(predicate):
    @intrinsic
    def where(typingctx, a, b, x, y):
        if not (isinstance(a, Vec) and a == b == x == y):
            return None

        def codegen(context, builder, sig, args):
            return builder.select(builder.fcmp_ordered(predicate, args[0], args[1]), args[2], args[3])

        return a(a, b, x, y), codegen

    return where


#: ``x`` where ``a > b`` (``a >= b``) else ``y``, lane by lane; a NaN compares false.
vwhere_gt, vwhere_ge = _where(">"), _where(">=")


@intrinsic
def vlog1p(typingctx, a):
    """ln(1 + a) per lane, accurate for small a too: ln(u)·a/(u − 1) with u = 1 + a, which cancels
    the rounding of u (Goldberg's trick); LLVM's vector log is libm per lane."""
    if not isinstance(a, Vec):
        return None

    def codegen(context, builder, sig, args):
        x = args[0]
        one = ir.Constant(x.type, [1.0] * a.width)
        u = builder.fadd(one, x)
        scaled = builder.fdiv(builder.fmul(_call_intrinsic(builder, "log", u), x), builder.fsub(u, one))
        return builder.select(builder.fcmp_ordered("==", u, one), x, scaled)

    return a(a), codegen
