"""Loading kernels from numba's disk cache without the set-up numba needs only to compile.

numba's ``FunctionCache.load_overload`` starts with ``target_context.refresh()``, which imports
and installs every lowering registry numba has (NumPy, random, typed containers, jitclass,
...): about 0.3 s on 2 cores, paid by the first cached kernel of every process, although
machine code loaded from disk needs none of it. A compile does not depend on it either: numba's
compiler pipeline refreshes the context itself. So a kernel whose cache is a
:class:`QuickLoadCache` loads with only what loaded code uses, the NRT runtime (the wrapper
that passes NumPy arrays in calls it), and compiles, on a cache miss, exactly as before.

``quick(namespace)`` gives every disk-cached kernel of a module this cache, before anything is
loaded (on a kernel's first call). Where numba's internals are not the ones this was written
for, kernels keep numba's own cache class.
"""
from __future__ import annotations

from numba.core.caching import FunctionCache
from numba.core.dispatcher import Dispatcher

#: the private pieces of numba's cache that ``load_overload`` is made of (numba 0.58-0.68)
USABLE = all(hasattr(FunctionCache, name) for name in ("_load_overload", "_guard_against_spurious_io_errors"))


class QuickLoadCache(FunctionCache):
    """numba's disk cache of one kernel, loading without ``refresh()`` (see the module docstring)."""

    def load_overload(self, sig, target_context):
        if not USABLE:
            return super().load_overload(sig, target_context)
        from numba.core.runtime import rtsys
        rtsys.initialize(target_context)  # once per process; the rest of refresh() serves compiling
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)


def quick(namespace, cache_class=QuickLoadCache):
    """Give each disk-cached kernel defined in ``namespace`` (a module's globals) ``cache_class``;
    returns how many. Kernels without numba's disk cache (``cache=False``), and those the module
    imported, are left alone."""
    count = 0
    for kernel in list(namespace.values()):
        if isinstance(kernel, Dispatcher) and type(kernel._cache) is FunctionCache \
                and kernel.py_func.__module__ == namespace["__name__"]:
            kernel._cache = cache_class(kernel.py_func)  # before anything compiles or loads (first call)
            count += 1
    return count
