"""What the compiled epoch's threads and tiles use beside vectors (intrinsics): atomics for the
spin barrier, a cache prefetch, the cycle counter, the x86 pause, ``sched_yield``, and the typing
helpers ``rt`` and ``writable``.

numba's disk cache keys a kernel on its own file only: ``epoch_codegen`` names the generated
epoch module by a hash that includes this file, so an edit here recompiles it. Nothing here can
raise (see ``simd.py``).
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .simd import _I32, _is_flat, _pointer


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


@intrinsic
def writable(typingctx, A):
    """``A`` typed as a writable array (the same data): a read-only and a writable argument would
    compile a callee twice. For arrays the callee only reads."""
    if not (isinstance(A, types.Array) and not A.mutable):
        return None
    plain = A.copy(readonly=False)

    def codegen(context, builder, sig, args):
        return args[0]  # the same data model: only numba's type differs

    return plain(A), codegen
