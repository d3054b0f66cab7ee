"""fastnn on Dask: a GridSearchCV on a 2-worker LocalCluster gives what n_jobs=1 gives; predictions
over a dask array equal the model's own on the computed rows; workers' threads follow the rule.

One cluster (two spawned worker processes, one thread each) serves the whole module.
"""
import logging
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("dask", reason="dask is not installed (pip install 'fastnn[dask]')")
pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install 'fastnn[dask]')")
pytest.importorskip("sklearn", reason="scikit-learn is not installed (GridSearchCV)")

import dask.array as da  # noqa: E402
import joblib  # noqa: E402
from dask.distributed import Client, LocalCluster  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402

import fastnn  # noqa: E402
from conftest import blobs  # noqa: E402
from fastnn import on_dask  # noqa: E402

N_WORKERS = 2


@pytest.fixture(scope="module")
def client():
    cluster = LocalCluster(n_workers=N_WORKERS, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR, env=on_dask.worker_threads(N_WORKERS))
    with cluster, Client(cluster) as client:
        yield client


def _usable(name):
    available, reason = fastnn.available_backends().get(name, (False, "not registered"))
    if not available:
        pytest.skip(f"backend {name!r} unavailable: {reason}")


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_grid_search_on_dask_equals_n_jobs_1(client, backend):
    _usable(backend)
    X, y = blobs(n=160, n_features=8, n_classes=3, spread=2.5)
    # 8 hidden units: too little work for a second numba thread, so every process sums in one order
    estimator = fastnn.MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, batch_size=16, random_state=0,
                                     backend=backend)
    grid = {"alpha": [1e-4, 1e-1], "learning_rate_init": [1e-3, 3e-2]}

    local = GridSearchCV(estimator, grid, cv=2, n_jobs=1).fit(X, y).cv_results_
    before = _tasks_run(client)
    with joblib.parallel_backend("dask"):
        remote = GridSearchCV(estimator, grid, cv=2, n_jobs=-1).fit(X, y).cv_results_
    assert _tasks_run(client) > before  # the fits ran on the workers

    assert remote["params"] == local["params"]
    for key in ("mean_test_score", "std_test_score", "split0_test_score", "split1_test_score", "rank_test_score"):
        np.testing.assert_array_equal(remote[key], local[key], err_msg=key)
    assert len(set(local["mean_test_score"])) > 1  # the grid makes a difference, so equal ranks mean something


def _tasks_run(client):
    return sum(client.run(lambda dask_worker: dask_worker.state.executed_count).values())


def _fitted_classifier():
    X, y = blobs(n=200, n_features=6, n_classes=3)
    labels = np.array(["ant", "bee", "cat"])[y]  # labels that are not the codes
    return fastnn.MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0, backend="numpy").fit(X, labels)


def _fitted_sequential(backend):
    X, y = blobs(n=200, n_features=6, n_classes=3)
    net = fastnn.Sequential(fastnn.Dense(6, 8), fastnn.ReLU(), fastnn.Dense(8, 3), backend=backend, seed=0)
    net.fit(X, y, epochs=2, batch_size=20, loss="cross_entropy", lr=0.1)
    return net


def _rows(seed=1):
    X, _ = blobs(n=250, n_features=6, n_classes=3, seed=seed)
    return X, da.from_array(X, chunks=(60, -1))  # 5 row chunks, the last one short


@pytest.mark.parametrize("proba", [False, True], ids=["predict", "predict_proba"])
def test_predict_over_dask_array_equals_model_on_its_rows(client, proba):
    clf = _fitted_classifier()
    X, dX = _rows()
    out = on_dask.predict(clf, dX, proba=proba)
    expected = clf.predict_proba(X) if proba else clf.predict(X)
    assert out.dtype == expected.dtype and out.chunks[0] == dX.chunks[0]
    got = out.compute()
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_predict_sequential_on_workers(client, backend):
    _usable(backend)
    net = _fitted_sequential(backend)
    X, dX = _rows()
    P = on_dask.predict(net, dX, proba=True)
    assert P.chunks == (dX.chunks[0], (3,)) and P.dtype == np.float32
    np.testing.assert_array_equal(P.compute(), net.predict_proba(X))
    labels = on_dask.predict(net, dX)
    assert labels.dtype == np.int64 and labels.chunks == (dX.chunks[0],)
    np.testing.assert_array_equal(labels.compute(), net.predict(X))


def test_predict_regressor_and_local_threads():
    # no Client here: dask's default threaded scheduler, several chunks at once on one model
    X, _ = blobs(n=200, n_features=5, n_classes=2)
    reg = fastnn.MLPRegressor(hidden_layer_sizes=(6,), max_iter=3, random_state=0, backend="numpy")
    reg.fit(X, np.c_[X[:, 0], X[:, 1] - X[:, 2]])
    dX = da.from_array(X, chunks=(25, -1))
    out = on_dask.predict(reg, dX)
    assert out.chunks == (dX.chunks[0], (2,))
    np.testing.assert_array_equal(out.compute(scheduler="threads"), reg.predict(X))
    with pytest.raises(TypeError, match="no predict_proba"):
        on_dask.predict(reg, dX, proba=True)


def test_predict_refuses_column_chunks_and_other_inputs():
    clf = _fitted_classifier()
    X, dX = _rows()
    with pytest.raises(ValueError, match=r"chunked by rows only .*rechunk"):
        on_dask.predict(clf, dX.rechunk((60, 3)))
    with pytest.raises(ValueError, match="must be 2-D"):
        on_dask.predict(clf, dX[:, 0])
    with pytest.raises(TypeError, match="must be a dask array"):
        on_dask.predict(clf, X)
    with pytest.raises(ValueError, match="not fitted"):  # at once, before any graph is built
        on_dask.predict(fastnn.MLPClassifier(), dX)
    assert on_dask.predict(clf, dX.rechunk((60, 3)).rechunk({1: -1})).compute().shape == (250,)


def test_worker_threads_rule():
    env = on_dask.worker_threads(2, cores=8)
    assert env["NUMBA_NUM_THREADS"] == "4" and env["OPENBLAS_NUM_THREADS"] == "4" and env["OMP_NUM_THREADS"] == "4"
    assert on_dask.worker_threads(3, threads_per_worker=2, cores=16)["NUMBA_NUM_THREADS"] == "2"  # 3 × 2 × 2 ≤ 16
    assert on_dask.worker_threads(4, cores=2)["NUMBA_NUM_THREADS"] == "1"  # never below one thread
    for bad in ({"n_workers": 0}, {"n_workers": 2, "cores": 0}, {"n_workers": 2, "threads_per_worker": 1.5},
                {"n_workers": True}):
        with pytest.raises(ValueError, match="positive integer"):
            on_dask.worker_threads(**bad)


def _worker_state():
    import os

    from threadpoolctl import threadpool_info

    import fastnn as imported

    backend = imported.get_backend("numba")  # imports numba: after the worker set its environment
    return {"numba_threads": backend.num_threads, "path": os.path.dirname(imported.__file__),
            "blas_threads": max([pool["num_threads"] for pool in threadpool_info()
                                 if pool["user_api"] == "blas"], default=1)}


def test_workers_follow_the_rule_and_import_this_fastnn(client):
    _usable("numba")
    per_task = int(on_dask.worker_threads(N_WORKERS)["NUMBA_NUM_THREADS"])
    states = list(client.run(_worker_state).values())
    assert len(states) == N_WORKERS
    for state in states:
        assert state["path"] == fastnn.__path__[0]  # the workers import the fastnn under test
        assert state["numba_threads"] == per_task
        assert state["blas_threads"] <= per_task
    total = sum(state["numba_threads"] for state in states)
    assert total <= max(N_WORKERS, len(__import__("os").sched_getaffinity(0)))


def test_import_fastnn_does_not_import_dask():
    code = "import sys, fastnn, fastnn.on_dask; print('dask' in sys.modules, 'distributed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
