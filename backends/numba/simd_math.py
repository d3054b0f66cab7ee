"""The SIMD layer's functions beyond arithmetic (intrinsics): a vectorisable exp for both float
widths (numba's ``np.exp`` calls scalar libm here) and the scalar ``exp`` that uses it, log, log1p, and
lane-wise selects, as the op tables' formulas need them (``fastnn.ops.symbolic``).

Nothing here can raise (see ``simd.py``); numba's disk cache does not see this file, so the
kernels' cache keys include it (``kernels.SIMD_DIGEST``, ``epoch_codegen``).
"""
from __future__ import annotations

import math
import struct

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from .simd import _I32, Vec, _call_intrinsic, _fma


# ---- exp ---------------------------------------------------------------------
# exp(x) = 2^n · e^r with n = round(x / ln 2), |r| <= ln2 / 2; e^r by its Taylor
# polynomial (degree 7 for float32: error < 1 ulp; degree 12 for float64).
_EXP = {
    32: dict(hi=88.72283, lo=-87.33654, bias=127, mantissa=23, degree=7),
    64: dict(hi=709.782712893384, lo=-708.3964185322641, bias=1023, mantissa=52, degree=12),
}
_LN2_HI, _LN2_LO = 0.693145751953125, 1.428606765330187e-06


def _exp_ir(builder, x, bits):
    """The IR of e^x for a vector x of floats of ``bits`` (any number of lanes)."""
    vt, lanes = x.type, x.type.count
    p = _EXP[bits]
    const = lambda value: ir.Constant(vt, [value] * lanes)  # noqa: E731
    clamped = builder.select(builder.fcmp_ordered(">", x, const(p["hi"])), const(p["hi"]), x)
    clamped = builder.select(builder.fcmp_ordered("<", clamped, const(p["lo"])), const(p["lo"]), clamped)
    n = _call_intrinsic(builder, "rint", builder.fmul(clamped, const(1.4426950408889634)))
    r = _fma(builder, n, const(-_LN2_HI), clamped)
    r = _fma(builder, n, const(-_LN2_LO), r)
    poly = const(1.0)
    for k in range(p["degree"], 0, -1):  # Horner: 1 + r(1 + r/2(1 + r/3(...)))
        poly = _fma(builder, builder.fmul(r, const(1.0 / k)), poly, const(1.0))
    int_t = ir.VectorType(ir.IntType(bits), lanes)
    # n as an integer: n + 1.5·2^mantissa holds it in its low bits. (AVX2 has no vector double-to-int64
    # conversion: LLVM would convert lane by lane; and fptosi of a NaN is poison, this a NaN's bits)
    magic = 1.5 * 2.0 ** p["mantissa"]
    magic_bits = struct.unpack("<q" if bits == 64 else "<i", struct.pack("<d" if bits == 64 else "<f", magic))[0]
    low = builder.bitcast(builder.fadd(n, const(magic)), int_t)
    n_int = builder.sub(low, ir.Constant(int_t, [magic_bits] * lanes))
    exponent = builder.add(n_int, ir.Constant(int_t, [p["bias"]] * lanes))
    scale = builder.bitcast(builder.shl(exponent, ir.Constant(int_t, [p["mantissa"]] * lanes)), vt)
    y = builder.fmul(poly, scale)
    y = builder.select(builder.fcmp_ordered(">", x, const(p["hi"])), const(float("inf")), y)
    # a NaN went through the clamps (ordered compares) and the polynomial: y is NaN already. (A
    # select of x here made LLVM write e^x over x in place by a masked store: slow on AMD)
    return builder.select(builder.fcmp_ordered("<", x, const(p["lo"])), const(0.0), y)


@intrinsic
def vexp(typingctx, a):
    """e^a per lane; +inf above the overflow limit, 0 below the normal range, NaN stays NaN."""
    if not isinstance(a, Vec):
        return None

    def codegen(context, builder, sig, args):
        return _exp_ir(builder, args[0], a.dtype.bitwidth)

    return a(a), codegen


@intrinsic
def vexp2(typingctx, a, b):
    """(e^a, e^b) as ``vexp``, the two computed step by step together: its long chain of dependent
    steps leaves the core idle where one vector's steps follow another's."""
    if not (isinstance(a, Vec) and a == b):
        return None
    n = a.width

    def codegen(context, builder, sig, args):
        both = builder.shuffle_vector(args[0], args[1], ir.Constant(ir.VectorType(_I32, 2 * n), list(range(2 * n))))
        y = _exp_ir(builder, both, a.dtype.bitwidth)
        halves = [builder.shuffle_vector(y, y, ir.Constant(ir.VectorType(_I32, n), list(range(h * n, h * n + n))))
                  for h in (0, 1)]
        return context.make_tuple(builder, sig.return_type, halves)

    return types.UniTuple(a, 2)(a, b), codegen


# ---- log -----------------------------------------------------------------------
# fdlibm's log (e_log.c): x = 2^k·(1 + f) with 1 + f in [√2/2, √2), log(1 + f) from s = f / (2 + f) and
# a minimax polynomial in s² (error < 1 ulp); float32 goes through it in float64 and rounds once.
_LG = (6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01, 2.222219843214978396e-01,
       1.818357216161805012e-01, 1.531383769920937332e-01, 1.479819860511658591e-01)
_LN2_HI_LOG, _LN2_LO_LOG = 6.93147180369123816490e-01, 1.90821492927058770002e-10
_K_MAGIC = 6755399441055744.0  # 1.5·2^52: a small integer added to its bits is the integer plus it


@intrinsic
def vlog(typingctx, a):
    """ln(a) per lane, inline (LLVM's vector log calls libm lane by lane): −inf at 0, NaN below 0
    or at NaN, +inf at +inf; subnormals too."""
    if not isinstance(a, Vec):
        return None

    def codegen(context, builder, sig, args):
        x = args[0]
        n = a.width
        dt = ir.VectorType(ir.DoubleType(), n)
        it = ir.VectorType(ir.IntType(64), n)
        const = lambda value: ir.Constant(dt, [value] * n)  # noqa: E731
        iconst = lambda value: ir.Constant(it, [value] * n)  # noqa: E731
        xd = builder.fpext(x, dt) if a.dtype.bitwidth == 32 else x
        tiny = builder.fcmp_ordered("<", xd, const(2.2250738585072014e-308))  # subnormal (or <= 0): scale up
        xs = builder.select(tiny, builder.fmul(xd, const(18014398509481984.0)), xd)
        bits = builder.bitcast(xs, it)
        hx = builder.lshr(bits, iconst(32))
        k = builder.sub(builder.lshr(hx, iconst(20)), builder.select(tiny, iconst(1023 + 54), iconst(1023)))
        hx = builder.and_(hx, iconst(0xFFFFF))
        i = builder.and_(builder.add(hx, iconst(0x95F64)), iconst(0x100000))
        high = builder.or_(hx, builder.xor(i, iconst(0x3FF00000)))  # x or x/2 normalised to [√2/2, √2)
        k = builder.add(k, builder.lshr(i, iconst(20)))
        m = builder.bitcast(builder.or_(builder.shl(high, iconst(32)), builder.and_(bits, iconst(0xFFFFFFFF))), dt)
        f = builder.fsub(m, const(1.0))
        dk = builder.fsub(builder.bitcast(builder.add(k, iconst(0x4338000000000000)), dt), const(_K_MAGIC))
        s = builder.fdiv(f, builder.fadd(const(2.0), f))
        z = builder.fmul(s, s)
        w = builder.fmul(z, z)
        lg = [const(c) for c in _LG]
        t1 = builder.fmul(w, builder.fadd(lg[1], builder.fmul(w, builder.fadd(lg[3], builder.fmul(w, lg[5])))))
        t2 = builder.fmul(z, builder.fadd(lg[0], builder.fmul(w, builder.fadd(
            lg[2], builder.fmul(w, builder.fadd(lg[4], builder.fmul(w, lg[6])))))))
        r = builder.fadd(t2, t1)
        far = builder.icmp_signed(">", builder.or_(builder.sub(hx, iconst(0x6147A)), builder.sub(iconst(0x6B851), hx)),
                                  iconst(0))
        hfsq = builder.fmul(const(0.5), builder.fmul(f, f))
        lo = builder.fmul(dk, const(_LN2_LO_LOG))
        near_far = builder.fsub(hfsq, builder.fadd(builder.fmul(s, builder.fadd(hfsq, r)), lo))
        near = builder.fsub(builder.fmul(s, builder.fsub(f, r)), lo)
        y = builder.fsub(builder.fmul(dk, const(_LN2_HI_LOG)),
                         builder.fsub(builder.select(far, near_far, near), f))
        y = builder.select(builder.fcmp_ordered("==", xd, const(0.0)), const(-math.inf), y)
        y = builder.select(builder.fcmp_ordered("==", xd, const(math.inf)), xd, y)
        y = builder.select(builder.fcmp_unordered("<", xd, const(0.0)), const(math.nan), y)  # < 0 or NaN
        return builder.fptrunc(y, x.type) if a.dtype.bitwidth == 32 else y

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
