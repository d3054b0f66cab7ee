"""The numba backend on a machine whose kernels are not compiled yet: a small job trains at once
on the reference ops and the kernels compile in the background for the next run; a long job
compiles first and says so. (The rest of the suite turns the deferral off: see conftest.)"""
import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import fastnn
from fastnn import notices

from conftest import blobs

numba_backend = pytest.importorskip("fastnn.backends.numba.backend", reason="numba is not installed")
from fastnn.backends.numba import cache as numba_cache  # noqa: E402


@pytest.fixture
def cold(tmp_path, monkeypatch):
    """No part marked as cached (markers in an empty folder); no background process unless a test asks."""
    from fastnn.backends.numba import epoch as numba_epoch

    monkeypatch.setattr(numba_cache, "folder", lambda: str(tmp_path))
    monkeypatch.setattr(numba_epoch, "_built", set())  # as in a new process (earlier tests loaded them)
    monkeypatch.setenv("FASTNN_BACKGROUND_COMPILE", "0")
    return tmp_path


def _net(backend, seed=3):
    return fastnn.Sequential(fastnn.Dense(20, 16), fastnn.ReLU(), fastnn.Dense(16, 4), backend=backend, seed=seed)


def _weights(net):
    return [np.array(p) for d in net.dense_layers for p in (d.W, d.b)]


def test_a_small_job_trains_at_once_on_the_reference_ops(cold, monkeypatch):
    be = numba_backend.NumbaBackend(defer_compile=True)
    from fastnn.backends.numba import epoch as numba_epoch

    def no_compile(*args):
        raise AssertionError("a small job must not wait for the compiled epoch")
    monkeypatch.setattr(numba_epoch, "make_epoch_trainer", no_compile)
    X, y = blobs(n=300)
    net, ref = _net(be), _net("numpy")
    history = net.fit(X, y, epochs=3, batch_size=16, lr=0.1)
    ref.fit(X, y, epochs=3, batch_size=16, lr=0.1)
    assert "reference ops" in history.path and "not compiled" in history.path
    for a, b in zip(_weights(net), _weights(ref)):  # the same numbers as the reference backend
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(net.predict(X), ref.predict(X))


def test_a_small_job_starts_the_background_compile(cold, monkeypatch):
    started = []
    monkeypatch.setattr(numba_cache, "start_background", lambda dtype: started.append(dtype) or True)
    be = numba_backend.NumbaBackend(defer_compile=True)
    X, y = blobs(n=100)
    history = _net(be).fit(X, y, epochs=1, batch_size=16, lr=0.1)
    assert started == ["float32"] and "compile in the background for the next run" in history.path


def test_a_long_job_compiles_first_and_says_so(cold, monkeypatch, caplog):
    monkeypatch.setattr(numba_backend, "reference_seconds", lambda *args: 1e6)
    monkeypatch.setattr(numba_cache, "start_background", lambda dtype: False)
    waited = []
    monkeypatch.setattr(numba_backend, "waiting", lambda message: waited.append(message) or notices.waiting(message))
    be = numba_backend.NumbaBackend(defer_compile=True)
    X, y = blobs(n=100)
    with caplog.at_level(logging.INFO, logger="fastnn"):
        history = _net(be).fit(X, y, epochs=1, batch_size=16, lr=0.1)
    assert history.path.startswith("compiled whole epoch")
    assert len(waited) == 1 and "compiling the whole-epoch kernels for float32" in waited[0]
    assert "about 13 s" in waited[0]
    assert numba_cache.is_cached("epoch", "float32")  # marked: the next process loads it


def test_cached_kernels_are_used_at_once(cold, monkeypatch):
    for part in numba_cache.PARTS:
        numba_cache.mark_cached(part, "float32")
    monkeypatch.setattr(numba_backend, "reference_seconds", lambda *args: 0.0)  # would defer, if not cached
    be = numba_backend.NumbaBackend(defer_compile=True)
    X, y = blobs(n=100)
    assert _net(be).fit(X, y, epochs=1, batch_size=16, lr=0.1).path.startswith("compiled whole epoch")
    assert np.dtype(np.float32) in be._kernel_dtypes and np.dtype(np.float64) not in be._kernel_dtypes


def test_reference_seconds_grows_with_the_job():
    net = _net("numpy")
    small = numba_backend.reference_seconds(net, 1_000, 1, 32)
    assert 0 < small < numba_backend.reference_seconds(net, 1_000, 10, 32)
    assert small < numba_backend.reference_seconds(net, 1_000, 1, 4)  # more batches, more calls


def test_the_waiting_notice_only_for_a_real_wait(caplog):
    with caplog.at_level(logging.INFO, logger="fastnn"):
        with notices.waiting("short", after=0.5):
            pass
        with notices.waiting("long", after=0.01):
            time.sleep(0.2)
    assert [r.getMessage() for r in caplog.records] == ["long"]


def test_verbose_shows_the_notices_once(capsys):
    with notices.shown(True):
        notices.logger.info("seen")
    with notices.shown(False):
        notices.logger.info("not seen")
    assert capsys.readouterr().err == "seen\n"


def test_the_background_switch_and_what_is_missing(cold, monkeypatch):
    calls = []
    monkeypatch.setattr(numba_cache.subprocess, "Popen", lambda *a, **k: calls.append((a, k)))
    assert numba_cache.start_background("float32") is False  # switched off by the cold fixture
    monkeypatch.setenv("FASTNN_BACKGROUND_COMPILE", "1")
    for part in numba_cache.PARTS:
        numba_cache.mark_cached(part, "float64")
    assert numba_cache.start_background("float64") is False  # nothing missing
    assert numba_cache.start_background("float32") is True
    (command,), options = calls[0]
    assert command[1:] == ["-m", "fastnn.backends.numba.cache", "float32", *numba_cache.PARTS]  # what it misses
    assert options["start_new_session"] and options["env"]["FASTNN_BACKGROUND_COMPILE"] == "0"


def test_the_ranks_whole_epoch_compiles_for_mpi_alone_and_in_the_background(cold, monkeypatch):
    from fastnn.backends.numba import epoch_shared
    from fastnn.losses import get_loss

    monkeypatch.setattr(epoch_shared, "_ranks_built", set())  # as in a new process
    monkeypatch.setattr(numba_cache, "_spawned", [])  # (none running: earlier tests' are not this one's)
    calls = []
    monkeypatch.setattr(numba_cache.subprocess, "Popen", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setenv("FASTNN_BACKGROUND_COMPILE", "1")
    assert numba_cache.RANKS not in numba_cache.PARTS  # neither warmup nor a job's background compile takes it
    steps = {}
    for defer in (True, False):
        net = _net(fastnn.get_backend("numba", defer_compile=defer))
        loss, opt = get_loss("cross_entropy"), fastnn.SGD(lr=0.1)
        net.loss, net.optimizer = loss, opt
        X, y = blobs(64, 20, 4)
        T = np.eye(4, dtype=np.float32)[y]
        trainer = net.backend.epoch_trainer(net, loss, opt)
        steps[defer] = trainer.data_parallel(X.astype(np.float32), T, y.astype(np.int64), None, 8, 1)
    assert steps[False].ranks_ready()  # no deferring: it compiles at the first epoch, saying so
    assert not steps[True].ranks_ready()
    assert steps[True].ranks_later() is True
    (command,), _ = calls[0]
    assert command[1:] == ["-m", "fastnn.backends.numba.cache", "float32", numba_cache.RANKS]
    numba_cache.mark_cached(numba_cache.RANKS, "float32")  # as the background process does when done
    assert steps[True].ranks_ready() and steps[True].ranks_later() is False


def test_one_lock_holder_at_a_time(tmp_path):
    path = str(tmp_path / numba_cache.LOCK)
    with numba_cache._lock(path) as first:
        with numba_cache._lock(path) as second:
            assert first and not second
    with numba_cache._lock(path) as again:
        assert again


def test_the_background_process_fills_the_cache_and_logs_its_cpu(tmp_path):
    """The real process, on the part this suite has compiled already (numba's cache loads it):
    it marks the part, logs its CPU seconds, releases its lock and leaves no temporary file."""
    env = dict(os.environ, FASTNN_CACHE_DIR=str(tmp_path))
    env.pop("FASTNN_DEFER_COMPILE", None)
    # the epoch part counts as done: its generated module would compile afresh in a new folder
    subprocess.run([sys.executable, "-c", "from fastnn.backends.numba import cache as numba_cache; "
                    "numba_cache.mark_cached('epoch', 'float64')"], env=env, check=True, timeout=60)
    fastnn.get_backend("numba", num_threads=1, defer_compile=False).warm("layers", "float64")  # cache it here
    done = subprocess.run([sys.executable, "-m", "fastnn.backends.numba.cache", "float64"], env=env,
                          timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / numba_cache.LOG).read_text())
    assert record["dtype"] == "float64" and record["parts"] == ["layers"] and record["cpu_seconds"] > 0
    names = sorted(os.listdir(tmp_path))
    assert not [n for n in names if n.endswith(".tmp")], names
    assert any(n.startswith("ready-") and n.endswith("-layers-float64") for n in names), names
    env_check = subprocess.run([sys.executable, "-c", "from fastnn.backends.numba import cache as numba_cache; "
                                "print(numba_cache.is_cached('layers', 'float64'), numba_cache.running())"],
                               env=env, capture_output=True, text=True, timeout=60)
    assert env_check.stdout.split() == ["True", "False"], env_check.stderr


def test_a_long_wait_keeps_telling(caplog):
    with caplog.at_level(logging.INFO, logger="fastnn"):
        with notices.waiting("compiling", after=0.01, every=0.05):
            time.sleep(0.18)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "compiling" and 2 <= len(messages) <= 5
    assert all("still at it" in m for m in messages[1:])


def test_reference_work_runs_blas_on_one_thread_and_restores_it(cold):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    if max(before, default=1) < 2:
        pytest.skip("BLAS runs one thread here: nothing to cap")
    seen = []

    class Look(fastnn.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append([lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"])

    X, y = blobs(n=100)
    net = _net(numba_backend.NumbaBackend(defer_compile=True))
    net.fit(X, y, epochs=2, batch_size=16, lr=0.1, validation_data=(X, y), callbacks=[Look()])
    assert seen and all(threads == [1] * len(before) for threads in seen)
    after = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    assert after == before  # nested scopes (evaluate inside fit) restored it in order


def test_the_background_compile_waits_for_the_job_that_started_it():
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.6)"])
    started = time.monotonic()
    numba_cache.wait_for_exit(job.pid, 30)  # returns when the job ends (here a zombie until reaped)
    job.wait()
    assert 0.3 < time.monotonic() - started < 10
    started = time.monotonic()
    numba_cache.wait_for_exit(job.pid, 30)  # ended: at once
    assert time.monotonic() - started < 0.5
    started = time.monotonic()
    numba_cache.wait_for_exit(os.getpid(), 0.3)  # alive: until the limit
    assert 0.25 < time.monotonic() - started < 5
