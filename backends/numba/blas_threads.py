"""BLAS's threads beside the numba kernels' own: capped around a call where BLAS would use more
(threadpoolctl), so that BLAS and the kernels' threads never oversubscribe the cores.

The numba backend's ``num_threads`` bounds both pools, and only one of them ever works: the
register tiles of a small batch share their work between numba's threads (``prange``) only when
BLAS runs a single thread (``OPENBLAS_NUM_THREADS=1``, ``threadpoolctl``), else they run on the
calling thread. A training step interleaves the tiles with BLAS calls, and the idle threads of
each pool spin for a while after their work: two pools over the same cores slow a step manyfold.
"""
from __future__ import annotations

import weakref
from typing import Any

_live: weakref.WeakSet[Any] = weakref.WeakSet()  # every backend whose caps recap_all() takes again


def track(backend: Any) -> None:
    """Take ``backend``'s caps again (its ``_cap_blas()``) whenever :func:`recap_all` is called."""
    _live.add(backend)


def recap_all() -> None:
    """SciPy's BLAS was loaded just now (the first ``blas_gemm``): every live backend's BLAS caps
    are taken again, so that they limit its threads too."""
    for backend in list(_live):
        backend._cap_blas()


class _BlasCap:
    """Caps BLAS's threads at ``num_threads`` around a call, when BLAS would use more.

    Nothing to do (a no-op) when ``num_threads`` is at least what BLAS runs with,
    which is the default; otherwise the BLAS libraries NumPy and SciPy loaded are
    limited for the duration of the call through threadpoolctl.
    """

    def __init__(self, num_threads):
        self._limit = None
        self.active = False
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return
        blas = ThreadpoolController().select(user_api="blas")
        if any(lib.num_threads > num_threads for lib in blas.lib_controllers):
            self._blas, self._limit, self.active = blas, num_threads, True
        self._saved = []  # a stack: fit's scope holds the cap while evaluate's enters it again

    def __enter__(self):
        if self._limit is not None:
            self._saved.append([lib.get_num_threads() for lib in self._blas.lib_controllers])
            for lib in self._blas.lib_controllers:
                lib.set_num_threads(self._limit)
        return self

    def __exit__(self, *exc):
        if self._limit is not None:
            for lib, n in zip(self._blas.lib_controllers, self._saved.pop()):
                lib.set_num_threads(n)
        return False


def _blas_info():
    """The BLAS libraries loaded (NumPy's and SciPy's), as threadpoolctl sees them."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl is not installed)"
    keys = ("internal_api", "version", "num_threads", "architecture", "corename", "threading_layer", "filepath")
    return [{k: lib[k] for k in keys if k in lib} for lib in threadpool_info() if lib.get("user_api") == "blas"]
