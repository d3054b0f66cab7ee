"""Compiling later: while a dtype's kernels are not compiled on this machine, its ops run the
reference at once (numba would compile on the call: seconds), and a job shorter than the compile
trains on the reference ops while a background process fills the cache for the next run."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from fastnn.backend import Backend

from . import cache as numba_cache

_Op = TypeVar("_Op", bound=Callable[..., Any])


def defer_by_default() -> bool:
    """``FASTNN_DEFER_COMPILE``: on unless set to 0, false, no or off."""
    return numba_cache.switched_on("FASTNN_DEFER_COMPILE")


def kernel_op(method: _Op) -> _Op:
    """An op that runs its kernels once they are compiled for its dtype, else the reference at once
    (see ``NumbaBackend.training_plan``)."""
    name = method.__name__

    @functools.wraps(method)
    def op(self, A, *args, **kwargs):
        if getattr(A, "dtype", None) in self._kernel_dtypes:
            return method(self, A, *args, **kwargs)
        return getattr(Backend, name)(self, A, *args, **kwargs)
    return cast(_Op, op)  # the same signature: typed callers see the op's own


def reference_path(dtype: str, compile_text: str, cacheable: bool) -> str:
    """The path of a job that trains on the reference ops rather than wait for a compile (taking
    ``compile_text``), in words; starts the background compile where the cache can keep it."""
    if not cacheable:
        return (f"the NumPy reference ops: numba's kernels are not compiled in this process, this job is "
                f"shorter than compiling them ({compile_text}), and there is no writable cache to keep "
                f"them for later runs")
    later = ("they compile in the background for the next run" if numba_cache.start_background(dtype)
             else "they compile when a job is long enough to pay for it")
    return (f"the NumPy reference ops: numba's kernels are not compiled on this machine yet, and this "
            f"job is shorter than compiling them ({compile_text}); {later}")

