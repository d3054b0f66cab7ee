"""Explicit SIMD vectors: the numba backend's one vector layer (intrinsics; its functions beyond
arithmetic, exp and log1p, are in ``simd_math.py``; the atomics, prefetch and cycle counter its
threads use beside them in ``sync.py``).

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

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic, models, register_model


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
def vfind(typingctx, a, x):
    """The first lane of ``a`` equal to the number ``x``, or the width where none is (no branches)."""
    if not (isinstance(a, Vec) and isinstance(x, types.Float) and x == a.dtype):
        return None

    def codegen(context, builder, sig, args):
        v, n, i64 = args[0], a.width, ir.IntType(64)
        hits = builder.bitcast(builder.fcmp_ordered("==", v, _splat(builder, args[1], v.type)), ir.IntType(n))
        hits = builder.or_(builder.zext(hits, i64), ir.Constant(i64, 1 << n))  # bit n: "none" reads as n
        cttz = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64, ir.IntType(1)]),
                                              "llvm.cttz.i64")
        return builder.call(cttz, [hits, ir.Constant(ir.IntType(1), 1)])

    return types.intp(a, x), codegen


@intrinsic
def vlane(typingctx, a, k):
    """Lane ``k`` of ``a``."""
    if not (isinstance(a, Vec) and isinstance(k, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.extract_element(args[0], builder.trunc(args[1], _I32)
                                       if args[1].type.width > 32 else args[1])

    return a.dtype(a, k), codegen


# exp, log, log1p and where (the op tables' formulas and the loss use them) are in simd_math.py: their names stay
# importable from here
from .simd_math import exp, vexp, vexp2, vlog, vlog1p, vwhere_ge, vwhere_gt  # noqa: E402,F401
