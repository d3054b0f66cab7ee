"""numba's threads: how many the kernels may use, known without importing numba (a job that
runs on the reference ops while its kernels compile elsewhere never needs numba), and the
threading layer, named for ``fastnn info``."""
from __future__ import annotations

import importlib
import os
import sys
import warnings
from typing import Any

import numpy as np


def max_threads() -> int:
    """``numba.config.NUMBA_NUM_THREADS``: numba's own value once it is imported, else the same rule
    (``numba/core/config.py``): ``$NUMBA_NUM_THREADS``, else the CPUs this process may run on
    (``os.sched_getaffinity``), else ``os.cpu_count()``. A ``.numba_config.yaml`` in the working
    folder can set it too: then numba is asked."""
    numba = sys.modules.get("numba")
    if numba is None and os.path.isfile(".numba_config.yaml"):
        numba = importlib.import_module("numba")
    if numba is not None:
        return int(numba.config.NUMBA_NUM_THREADS)
    value = os.environ.get("NUMBA_NUM_THREADS")
    if value is not None:
        try:
            return int(value)
        except ValueError:
            warnings.warn(f"Environment variable 'NUMBA_NUM_THREADS' is defined but its associated value "
                          f"{value!r} could not be parsed", RuntimeWarning, stacklevel=3)  # as numba says it
    return _default_threads()


def _default_threads() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def checked_num_threads(num_threads: Any, limit: int) -> int:
    """``num_threads`` as an int from 1 to ``limit``; ValueError naming the range otherwise."""
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)) \
            or not 1 <= num_threads <= limit:
        raise ValueError(f"numba backend: num_threads must be an integer from 1 to {limit} "
                         f"(NUMBA_NUM_THREADS), got {num_threads!r}")
    return int(num_threads)


def use_threads(num_threads: int) -> None:
    """Let numba's parallel kernels run on ``num_threads`` threads from here on."""
    import numba

    if numba.get_num_threads() != num_threads:
        numba.set_num_threads(num_threads)


def threading_layer() -> str:
    """numba's threading layer (omp, tbb or workqueue). numba picks it when it first starts its
    threads: started here to name it, since workqueue makes every ``prange`` ~85 us, worth seeing."""
    import numba

    try:
        from numba.np.ufunc.parallel import _launch_threads
        _launch_threads()
        return str(numba.threading_layer())
    except (ImportError, ValueError):  # a numba without that hook: what was configured
        return f"{numba.config.THREADING_LAYER} (configured; no parallel kernel run yet)"
