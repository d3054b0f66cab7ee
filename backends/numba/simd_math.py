"""The SIMD layer's functions beyond arithmetic (intrinsics): a vectorisable exp for both float
widths (numba's ``np.exp`` calls scalar libm here) and the scalar ``exp`` that uses it, log1p, and
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
        if bits == 64:  # n as an integer: n + 1.5·2^52 holds it in its low bits (AVX2 has no vector
            # double-to-int64 conversion: LLVM would convert lane by lane)
            magic = 6755399441055744.0
            low = builder.bitcast(builder.fadd(n, const(magic)), int_t)
            n_int = builder.sub(low, ir.Constant(int_t, [struct.unpack("<q", struct.pack("<d", magic))[0]] * a.width))
        else:
            n_int = builder.fptosi(n, int_t)
        exponent = builder.add(n_int, ir.Constant(int_t, [p["bias"]] * a.width))
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
