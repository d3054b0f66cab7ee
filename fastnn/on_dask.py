"""fastnn on Dask: batch prediction over a dask array, and worker threads that fit the cores.

>>> from dask.distributed import Client, LocalCluster
>>> from fastnn import on_dask
>>> cluster = LocalCluster(n_workers=2, threads_per_worker=1, env=on_dask.worker_threads(2))
>>> client = Client(cluster)
>>> labels = on_dask.predict(clf, X)            # X: a dask array chunked by rows only
>>> labels.compute()

Sweeps need nothing from this module: scikit-learn's ``GridSearchCV`` over a
fastnn estimator runs on the cluster under ``joblib.parallel_backend("dask")``
(estimators pickle as arrays and settings). Spawned workers re-import the
launching script, so it must be a file with an ``if __name__ == "__main__":`` guard.

Dask is imported here on first use only: ``import fastnn`` never imports it
(``pip install 'fastnn[dask]'``).
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from .layers import layer_from_config
from .model import Sequential

# Thread pools that a worker's tasks may start: numba's (fastnn's numba backend) and BLAS's.
_THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def worker_threads(n_workers: int, threads_per_worker: int = 1, cores: int | None = None) -> dict[str, str]:
    """The environment that keeps ``n_workers × threads_per_worker`` concurrent tasks within ``cores``.

    The rule: each task may use ``t = cores // (n_workers × threads_per_worker)``
    threads (at least 1), so that ``n_workers × threads_per_worker × t ≤ cores``.
    ``cores`` defaults to the CPUs this process may run on. Pass the result as
    ``LocalCluster(env=...)`` (or export it before ``dask worker`` on other machines):

    >>> env = worker_threads(2, cores=8)            # {'NUMBA_NUM_THREADS': '4', ...}
    >>> cluster = LocalCluster(n_workers=2, threads_per_worker=1, env=env)

    ``NUMBA_NUM_THREADS`` takes effect because fastnn imports numba on first use,
    after the worker has set its environment. BLAS reads its variables when NumPy
    loads, which in a spawned worker is earlier; Dask starts its workers with BLAS at
    one thread (``distributed.nanny.pre-spawn-environ``), which stays within ``t``.
    """
    for name, value in (("n_workers", n_workers), ("threads_per_worker", threads_per_worker)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"worker_threads: {name} must be a positive integer, got {value!r}")
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    elif isinstance(cores, bool) or not isinstance(cores, (int, np.integer)) or cores < 1:
        raise ValueError(f"worker_threads: cores must be a positive integer, got {cores!r}")
    threads = max(1, int(cores) // (int(n_workers) * int(threads_per_worker)))
    return {name: str(threads) for name in _THREAD_VARIABLES}


def predict(model: Any, X: Any, proba: bool = False) -> Any:
    """``model.predict`` (or ``model.predict_proba`` with ``proba=True``) over a dask array, chunk by chunk.

    ``model``: a fitted :class:`fastnn.Sequential`, ``MLPClassifier`` or
    ``MLPRegressor``. ``X``: a 2-D dask array chunked by rows only (one chunk across
    its columns; ``X.rechunk({1: -1})`` makes it so). Returns a lazy dask array with
    X's row chunks, of the dtype and width ``model`` gives on NumPy rows; each chunk is
    computed where its rows are, by a copy of the model sent once to every worker (a
    Sequential is rebuilt there on the backend of the same name, with the worker's threads).

    >>> P = on_dask.predict(net, da.from_array(X, chunks=(10_000, -1)), proba=True)
    >>> P.compute()                                  # == net.predict_proba(X)
    """
    try:
        import dask
        import dask.array as da
    except ImportError as exc:
        raise ImportError(f"fastnn.on_dask.predict needs dask ({exc}): pip install 'fastnn[dask]'") from exc
    if not isinstance(X, da.Array):
        raise TypeError(f"predict: X must be a dask array, got {type(X).__name__}; "
                        "for NumPy arrays call model.predict directly")
    if X.ndim != 2:
        raise ValueError(f"predict: X must be 2-D (rows, features), got {X.ndim}-D with shape {X.shape}")
    if math.isnan(X.shape[1]):
        raise ValueError("predict: X's number of columns is unknown; compute its chunk sizes first "
                         "(X.compute_chunk_sizes())")
    if len(X.chunks[1]) != 1:
        raise ValueError(f"predict: X must be chunked by rows only (one chunk across its {X.shape[1]} "
                         f"columns), got column chunks {X.chunks[1]}; use X.rechunk({{1: -1}})")
    method = "predict_proba" if proba else "predict"
    if not callable(getattr(model, method, None)):
        raise TypeError(f"predict: {type(model).__name__} has no {method}()")
    # One row of zeros gives the output's dtype and width, whatever the model and labels are
    # (and an unfitted model fails here, before anything is sent).
    probe = getattr(model, method)(np.zeros((1, X.shape[1]), dtype=X.dtype))
    meta = probe[:0]
    # A graph node of its own: each worker receives (and rebuilds) the model once, not once per chunk.
    portable = dask.delayed(_Portable(model), pure=True)
    if probe.ndim == 1:
        return da.map_blocks(_predict_block, X, portable, method, dtype=probe.dtype,
                             chunks=(X.chunks[0],), drop_axis=1, meta=meta)
    return da.map_blocks(_predict_block, X, portable, method, dtype=probe.dtype,
                         chunks=(X.chunks[0], (probe.shape[1],)), meta=meta)


def _predict_block(X, portable, method):
    return getattr(portable.model, method)(X)


class _Portable:
    """A model that pickles: estimators pickle themselves (as arrays); a Sequential is sent as
    its layer configs and host weights and rebuilt on its backend (by name) where it lands."""

    def __init__(self, model):
        self.model = model

    def __getstate__(self):
        net = self.model
        if not isinstance(net, Sequential):
            return {"model": net}
        return {"layers": [layer.config() for layer in net.layers], "dtype": net.dtype,
                "backend": net.backend.name, "loss": net.loss,
                "weights": [(net.backend.to_numpy(d.W), net.backend.to_numpy(d.b)) for d in net.dense_layers]}

    def __setstate__(self, state):
        if "model" in state:
            self.model = state["model"]
            return
        net = Sequential(*[layer_from_config(c) for c in state["layers"]],
                         backend=state["backend"], dtype=state["dtype"])
        for layer, (W, b) in zip(net.dense_layers, state["weights"]):
            layer.W, layer.b = W, b
        net.loss = state["loss"]  # predict_proba applies the loss's output activation
        self.model = net
