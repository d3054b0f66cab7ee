"""The cupy backend (backends/cupy_*.py) against the NumPy reference.

Every test but the last two needs CuPy and a GPU: it carries the ``gpu`` mark and is
skipped with ``fastnn.available_backends()["cupy"]``'s reason elsewhere (``-rs``).
Training runs through ``Sequential.fit`` on a CupyBackend that records the
trainer ``fit`` asked for, so a test can say which path ran (``last_path``):
the CUDA graph (``"graph"``) or layer by layer (``"layers"``).
"""
import os

import numpy as np
import pytest

import fastnn
from fastnn import BackendUnavailable, TrainingDiverged
from fastnn.layers import Dense, ReLU, Sigmoid, Tanh
from fastnn.model import Sequential
from fastnn.optim import SGD, Adam

from conftest import blobs

CUPY_USABLE, CUPY_REASON = fastnn.available_backends().get("cupy", (False, "not registered"))


def on_gpu(test):
    """The ``gpu`` mark, and a skip with the reason where the cupy backend cannot run."""
    skip = pytest.mark.skipif(not CUPY_USABLE, reason=f"backend 'cupy' unavailable: {CUPY_REASON}")
    return pytest.mark.gpu(skip(test))


def _recording(**options):
    """A CupyBackend whose ``trainers`` lists what ``epoch_trainer`` gave each fit."""
    from fastnn.backends.cupy.backend import CupyBackend

    class Recording(CupyBackend):
        def epoch_trainer(self, net, loss, optimizer):
            trainer = super().epoch_trainer(net, loss, optimizer)
            self.trainers.append(trainer)
            return trainer

    backend = Recording(**options)
    backend.trainers = []
    return backend


# (hidden activation, loss, output layer's activation or None, outputs)
MODELS = {
    "sigmoid-mse": (Sigmoid, "mse", Sigmoid, 3),
    "relu-xent": (ReLU, "cross_entropy", None, 3),
    "tanh-bce": (Tanh, "binary_cross_entropy", None, 1),
}
OPTIMIZERS = {
    "sgd": lambda: SGD(0.2),
    "nesterov+wd": lambda: SGD(0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam": lambda: Adam(0.01),
}


def _net(model, backend, dtype="float64", n_in=6, hidden=9, seed=3):
    act, _, out_act, n_out = MODELS[model]
    layers = [Dense(n_in, hidden), act(), Dense(hidden, n_out)]
    if out_act is not None:
        layers.append(out_act())
    return Sequential(*layers, backend=backend, seed=seed, dtype=dtype)


def _data(model, n, n_in=6, seed=0):
    n_out = MODELS[model][3]
    X, y = blobs(n=n, n_features=n_in, n_classes=max(2, n_out), seed=seed)
    return 0.3 * X.astype(np.float64), y


def _weights(net):
    be = net.backend
    return [be.to_numpy(p) for d in net.dense_layers for p in (d.W, d.b)]


def _fit_both(model, make_opt, n, batch_size, epochs=2, dtype="float64"):
    """(reference net, cupy net, their histories, the cupy backend) after the same fit."""
    X, y = _data(model, n)
    loss = MODELS[model][1]
    gpu = _recording()
    out = []
    for backend in ("numpy", gpu):
        net = _net(model, backend, dtype)
        history = net.fit(X, y, epochs=epochs, batch_size=batch_size, loss=loss, optimizer=make_opt())
        out += [net, history]
    return (*out, gpu)


def _assert_same(ref, gpu, ref_hist, gpu_hist, rtol, atol):
    for a, b in zip(_weights(ref), _weights(gpu)):
        np.testing.assert_allclose(b, a, rtol=rtol, atol=atol)
    np.testing.assert_allclose(gpu_hist["loss"], ref_hist["loss"], rtol=rtol, atol=atol)
    assert gpu_hist["accuracy"] == ref_hist["accuracy"]


# ---- (a) no silent host copies ------------------------------------------------------------
@on_gpu
@pytest.mark.parametrize("op, args", [
    ("gemm", lambda h, d: (h, d)),
    ("bias_act", lambda h, d: (h, None, "relu")),
    ("softmax_xent", lambda h, d: (d, h)),
    ("update", lambda h, d: (fastnn.ops.optimizers.BY_NAME["sgd"], d, h, {}, {"lr": 0.1, "weight_decay": 0.0})),
    ("sum_rows", lambda h, d: (h,)),
])
def test_op_refuses_numpy_array(op, args):
    be = fastnn.get_backend("cupy")
    host = np.ones((4, 4))
    with pytest.raises(TypeError, match=rf"op {op} got a NumPy array"):
        getattr(be, op)(*args(host, be.asarray(host)))


# ---- (b) the CUDA graph against the reference ----------------------------------------------
@on_gpu
@pytest.mark.parametrize("n", [100, 103], ids=["full-batches", "partial-last"])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("model", list(MODELS))
def test_graph_fit_matches_numpy_float64(model, opt, n):
    ref, gpu, ref_hist, gpu_hist, backend = _fit_both(model, OPTIMIZERS[opt], n, batch_size=10)
    trainer = backend.trainers[-1]
    assert trainer is not None and trainer.failure is None, trainer and trainer.failure
    assert trainer.last_path == "graph"
    assert trainer.captures == (2 if n % 10 else 1)
    _assert_same(ref, gpu, ref_hist, gpu_hist, rtol=1e-7, atol=1e-9)


@on_gpu
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_graph_fit_matches_numpy_float32(opt):
    ref, gpu, ref_hist, gpu_hist, backend = _fit_both("relu-xent", OPTIMIZERS[opt], 53, batch_size=10,
                                                      epochs=1, dtype="float32")
    assert backend.trainers[-1].last_path == "graph"
    for a, b in zip(_weights(ref), _weights(gpu)):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(gpu_hist["loss"], ref_hist["loss"], rtol=1e-4)


@on_gpu
def test_second_fit_continues_like_numpy():
    """Adam's step counter and the moments carry from one fit to the next (and the graph is recaptured)."""
    X, y = _data("relu-xent", 47)
    nets = []
    for backend in ("numpy", _recording()):
        net = _net("relu-xent", backend)
        opt = Adam(0.01)
        net.fit(X, y, epochs=1, batch_size=10, loss="cross_entropy", optimizer=opt)
        net.fit(X, y, epochs=1, batch_size=10, loss="cross_entropy", optimizer=opt)
        nets.append(net)
    assert nets[1].optimizer.t == nets[0].optimizer.t == 10
    for a, b in zip(_weights(nets[0]), _weights(nets[1])):
        np.testing.assert_allclose(b, a, rtol=1e-7, atol=1e-9)


# ---- (c) large batches run layer by layer --------------------------------------------------
@on_gpu
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_large_batch_runs_layers_and_matches(opt):
    from fastnn.backends.cupy.graph import GRAPH_BATCH_MAX
    bs = GRAPH_BATCH_MAX + 1
    ref, gpu, ref_hist, gpu_hist, backend = _fit_both("sigmoid-mse", OPTIMIZERS[opt], bs + 40, batch_size=bs)
    assert backend.trainers[-1].last_path == "layers"
    _assert_same(ref, gpu, ref_hist, gpu_hist, rtol=1e-7, atol=1e-9)


@on_gpu
def test_verbose_names_the_path(capsys):
    from fastnn.backends.cupy.graph import GRAPH_BATCH_MAX
    X, y = _data("relu-xent", 30)
    for options, batch_size, said in [({}, 10, "CUDA graph: one training step captured once, replayed for each "
                                                "batch of 10"),
                                      ({}, GRAPH_BATCH_MAX + 1, "layer by layer on cuBLAS (batch"),
                                      ({"graphs": False}, 10, "layer by layer (graphs=False)")]:
        net = _net("relu-xent", _recording(**options))
        net.fit(X, y, epochs=1, batch_size=batch_size, loss="cross_entropy", lr=0.1, verbose=1)
        assert said in capsys.readouterr().err


@on_gpu
def test_graphs_off_means_no_trainer():
    backend = _recording(graphs=False)
    net = _net("relu-xent", backend)
    net.fit(*_data("relu-xent", 30), epochs=1, batch_size=10, loss="cross_entropy", lr=0.1)
    assert backend.trainers == [None]


# ---- (d) divergence ------------------------------------------------------------------------
@on_gpu
@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_overflowing_loss_raises_with_finite_weights():
    # validation refuses NaN/inf in X (ValueError), so the loss overflows instead: rows 40.. of
    # batch 6 (bs 8, no shuffle) square past float64's range
    X, y = _data("relu-xent", 60)
    X[40:] = 1e200
    stopped = []
    for backend in ("numpy", _recording()):
        net = _net("relu-xent", backend)
        with pytest.raises(TrainingDiverged, match=r"epoch 1, batch 6;"):
            net.fit(X, y, epochs=1, batch_size=8, loss="mse", optimizer=SGD(0.01, momentum=0.5),
                    shuffle=False)
        assert all(np.all(np.isfinite(p)) for p in _weights(net))
        stopped.append(net)
    assert stopped[1].backend.trainers[-1].last_path == "graph"
    for a, b in zip(_weights(stopped[0]), _weights(stopped[1])):
        np.testing.assert_allclose(b, a, rtol=1e-7, atol=1e-9)


@on_gpu
def test_nan_in_X_is_refused_before_training():
    X, y = _data("relu-xent", 20)
    X[3, 2] = np.nan
    net = _net("relu-xent", "cupy")
    before = _weights(net)
    with pytest.raises(ValueError, match="NaN"):
        net.fit(X, y, epochs=1, batch_size=10, loss="cross_entropy", lr=0.1)
    for a, b in zip(before, _weights(net)):
        np.testing.assert_array_equal(b, a)


# ---- (d2) a data set that fits the GPU only as uint8 ---------------------------------------
def _room_for(monkeypatch, backend, nbytes):
    """``backend`` (a CupyBackend) believes from now on that it has ``nbytes`` free, and checks
    every copy from the host against that."""
    from fastnn.backends.cupy import backend as cupy_backend
    monkeypatch.setattr(cupy_backend, "CHECK_FIT_BYTES", 0)
    monkeypatch.setattr(backend, "_free_bytes", lambda: (nbytes, 2 * nbytes))
    return backend


@on_gpu
@pytest.mark.parametrize("batch_size", [10, 300], ids=["graph", "layers"])
def test_uint8_pixels_stay_uint8_when_floats_do_not_fit(monkeypatch, batch_size):
    import cupy
    g = np.random.default_rng(0)
    X, y = g.integers(0, 4, (263, 64)).astype(np.uint8), g.integers(0, 3, 263)
    gpu = _room_for(monkeypatch, _recording(), 2 * X.nbytes)  # room for the bytes (and T), not for float64s
    kept = []
    real = gpu.training_set
    monkeypatch.setattr(gpu, "training_set", lambda X, dtype: kept.append(real(X, dtype)) or kept[-1])
    nets = []
    for backend in ("numpy", gpu):
        net = _net("relu-xent", backend, n_in=64)
        history = net.fit(X, y, epochs=2, batch_size=batch_size, loss="cross_entropy",
                          optimizer=SGD(0.01, momentum=0.9))
        nets += [net, history]
    ref, ref_hist, net, hist = nets
    assert isinstance(kept[0], cupy.ndarray) and kept[0].dtype == np.uint8
    assert gpu.trainers[-1].last_path == ("graph" if batch_size == 10 else "layers")
    _assert_same(ref, net, ref_hist, hist, rtol=1e-7, atol=1e-9)


@on_gpu
def test_a_data_set_that_fits_in_no_form_is_a_clear_error(monkeypatch):
    X, y = np.zeros((100, 6), np.uint8), np.zeros(100, np.int64)
    gpu = _recording()
    net = _net("relu-xent", gpu)  # before the room shrinks: its weights would not fit either
    _room_for(monkeypatch, gpu, X.nbytes // 2)
    with pytest.raises(MemoryError, match=r"MiB do not fit in the free memory of GPU"):
        net.fit(X, y, epochs=1, batch_size=10, loss="cross_entropy", lr=0.1)
    assert gpu.trainers == []  # refused while placing X, before training began


# ---- (e) moving between backends, predict ----------------------------------------------------
@on_gpu
def test_to_numpy_and_back_keeps_predictions():
    X, y = _data("relu-xent", 64)
    net = _net("relu-xent", "cupy")
    net.fit(X, y, epochs=2, batch_size=10, loss="cross_entropy", optimizer=SGD(0.1, momentum=0.9))
    proba, classes = net.predict_proba(X), net.predict(X)
    assert isinstance(proba, np.ndarray) and isinstance(classes, np.ndarray) and classes.dtype == np.int64
    net.to("numpy")
    assert net.backend.name == "numpy"
    np.testing.assert_allclose(net.predict_proba(X), proba, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(net.predict(X), classes)
    net.to("cupy")
    assert net.backend.name == "cupy"
    np.testing.assert_allclose(net.predict_proba(X), proba, rtol=1e-10, atol=1e-12)
    net.fit(X, y, epochs=1, batch_size=10)  # momentum state went there and back too


@on_gpu
def test_predict_matches_numpy():
    X, y = _data("sigmoid-mse", 50)
    ref, gpu = _net("sigmoid-mse", "numpy"), _net("sigmoid-mse", "cupy")
    for net in (ref, gpu):
        net.fit(X, y, epochs=1, batch_size=10, loss="mse", lr=1.0)
    np.testing.assert_array_equal(gpu.predict(X), ref.predict(X))
    np.testing.assert_allclose(gpu.predict_proba(X), ref.predict_proba(X), rtol=1e-7, atol=1e-9)


# ---- (f) devices, (g) info, (h) data on the device --------------------------------------------
@on_gpu
def test_out_of_range_device_names_the_count():
    import cupy
    count = cupy.cuda.runtime.getDeviceCount()
    with pytest.raises(ValueError, match=rf"from 0 to {count - 1} \(this machine has {count} CUDA device"):
        fastnn.get_backend(f"cupy:{count}")


@on_gpu
def test_device_zero_by_name():
    be = fastnn.get_backend("cupy:0")
    assert be.device_id == 0 and be.to_numpy(be.asarray([1.0, 2.0])).tolist() == [1.0, 2.0]


@on_gpu
def test_info_keys():
    info = fastnn.get_backend("cupy").info()
    for key in ("gpu", "memory", "cuda_runtime", "cupy"):
        assert key in info and info[key], key
    assert "GiB" in info["memory"]


@on_gpu
def test_parameters_stay_on_device_after_fit():
    import cupy
    net = _net("relu-xent", "cupy")
    net.fit(*_data("relu-xent", 40), epochs=1, batch_size=10, loss="cross_entropy", lr=0.1)
    for d in net.dense_layers:
        assert isinstance(d.W, cupy.ndarray) and isinstance(d.b, cupy.ndarray)


# ---- without a GPU ---------------------------------------------------------------------------
def test_unavailable_cupy_says_what_to_install():
    if CUPY_USABLE:
        pytest.skip("the cupy backend is usable here: this test checks the message where it is not")
    with pytest.raises(BackendUnavailable, match=r"pip install 'fastnn\[cuda12\]'"):
        fastnn.get_backend("cupy")
    assert "pip install 'fastnn[cuda12]'" in CUPY_REASON
    assert fastnn.get_backend("auto").name != "cupy"


def test_no_driver_and_an_old_driver_are_told_apart():
    """The reason names the case: no NVIDIA driver at all, or the CUDA versions that disagree."""
    from fastnn.backends.cupy.backend import no_device_message

    class Runtime:  # cupy.cuda.runtime's two version calls, as CUDA answers them
        def __init__(self, driver):
            self.driver = driver

        def driverGetVersion(self):
            return self.driver

        def runtimeGetVersion(self):
            return 12090

    assert no_device_message(Runtime(0), RuntimeError("cudaErrorInsufficientDriver")) == \
        "no NVIDIA driver found, so no CUDA device can be used"
    message = no_device_message(Runtime(11040), RuntimeError("cudaErrorInsufficientDriver"))
    assert "cudaErrorInsufficientDriver" in message
    assert "the driver supports CUDA 11.4, this CuPy runs on CUDA 12.9" in message


def test_an_unwritable_kernel_cache_is_kept_in_memory(tmp_path, monkeypatch):
    """Runs without CuPy: the check before CuPy's first compile (a read-only home)."""
    from fastnn.backends.cupy import backend as cupy_backend

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.delenv("CUPY_CACHE_IN_MEMORY", raising=False)
    monkeypatch.setenv("CUPY_CACHE_DIR", str(blocker / "kernels"))  # under a regular file: holds as root
    with pytest.warns(RuntimeWarning, match="cannot be written.*CUPY_CACHE_DIR"):
        cupy_backend._keep_kernel_cache_in_memory_if_unwritable()
    assert os.environ["CUPY_CACHE_IN_MEMORY"] == "1"
    monkeypatch.setenv("CUPY_CACHE_DIR", str(tmp_path / "fine"))
    monkeypatch.delenv("CUPY_CACHE_IN_MEMORY")
    cupy_backend._keep_kernel_cache_in_memory_if_unwritable()  # writable: nothing changes
    assert "CUPY_CACHE_IN_MEMORY" not in os.environ
