"""The compiled whole epoch (backends/numba_epoch.py) against the NumPy reference.

Most tests train through ``Sequential.fit`` on a NumPy backend whose
``epoch_trainer`` is the compiled one (``_Compiled`` below), so they compare the
compiled epoch with the reference directly, whatever the state of the numba
backend; the last tests check that the numba backend itself uses it. Shapes
are tiny and few: the kernels compile once per dtype, whatever the shape.
"""
import os
import platform
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

numba = pytest.importorskip("numba", reason="the compiled epoch needs numba (pip install 'fastnn[numba]')")

import fastnn  # noqa: E402
from fastnn.backend import Backend  # noqa: E402
from fastnn.backends.numba import epoch as numba_epoch  # noqa: E402
from fastnn.backends.numpy_backend import NumpyBackend  # noqa: E402
from fastnn.layers import Dense, Identity, ReLU, Sigmoid, Softmax, Tanh  # noqa: E402
from fastnn.losses import MSE  # noqa: E402
from fastnn.model import Sequential, TrainingDiverged  # noqa: E402
from fastnn.optim import SGD, Adam  # noqa: E402

from conftest import blobs  # noqa: E402


class _Compiled(NumpyBackend):
    """The reference backend with the compiled epoch plugged in (threads: ``num_threads``)."""

    name = "numpy+compiled"

    def __init__(self, num_threads=1):
        super().__init__()
        self.num_threads = num_threads

    def epoch_trainer(self, net, loss, optimizer):
        return numba_epoch.make_epoch_trainer(self, net, loss, optimizer)


ACTS = {"sigmoid": Sigmoid, "relu": ReLU, "tanh": Tanh, "identity": None}
OPTIMIZERS = {
    "sgd": lambda: SGD(0.2),
    "momentum+wd": lambda: SGD(0.05, momentum=0.9, weight_decay=0.01),
    "nesterov": lambda: SGD(0.05, momentum=0.8, nesterov=True),
    "adam+wd": lambda: Adam(0.01, weight_decay=0.001),
}


def _net(sizes, act, backend, dtype="float64", seed=3, head=None):
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Dense(n_in, n_out))
        if ACTS[act] is not None and i < len(sizes) - 2:
            layers.append(ACTS[act]())
    if head is not None:
        layers.append(head())
    return Sequential(*layers, backend=backend, seed=seed, dtype=dtype)


def _data(sizes, n=23, seed=0):
    X, y = blobs(n=n, n_features=sizes[0], n_classes=max(2, sizes[-1]), seed=seed)
    return 0.3 * X.astype(np.float64), y


def _fit_both(sizes, act, loss, make_opt, batch_size, epochs=2, dtype="float64", threads=1, head=None,
              data=None, **fit_kw):
    """(reference net, compiled net, their histories) after the same fit."""
    X, y = data if data is not None else _data(sizes)
    out = []
    for backend in ("numpy", _Compiled(threads)):
        net = _net(sizes, act, backend, dtype, head=head)
        history = net.fit(X, y, epochs=epochs, batch_size=batch_size, loss=loss, optimizer=make_opt(), **fit_kw)
        out += [net, history]
    ref, ref_hist, comp, comp_hist = out
    return ref, comp, ref_hist, comp_hist


def _assert_same(ref, comp, ref_hist, comp_hist, rtol=1e-9, atol=1e-11):
    for a, b in zip(ref.dense_layers, comp.dense_layers):
        np.testing.assert_allclose(b.W, a.W, rtol=rtol, atol=atol)
        np.testing.assert_allclose(b.b, a.b, rtol=rtol, atol=atol)
    for key in ref_hist.history:
        if key != "seconds":
            np.testing.assert_allclose(comp_hist.history[key], ref_hist.history[key], rtol=rtol * 10, atol=atol,
                                       err_msg=key)
    assert set(comp.optimizer.state) == set(ref.optimizer.state)
    for key, entry in ref.optimizer.state.items():
        assert set(comp.optimizer.state[key]) == set(entry)
        for slot, value in entry.items():
            np.testing.assert_allclose(comp.optimizer.state[key][slot], value, rtol=rtol, atol=atol)
    assert comp.optimizer._counters() == ref.optimizer._counters()


# ---- parity: every activation x loss x optimizer, partial last batch (23 = 5·4 + 3) ----
@pytest.mark.parametrize("opt", OPTIMIZERS)
@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "binary_cross_entropy"])
@pytest.mark.parametrize("act", ACTS)
def test_same_as_reference_float64(act, loss, opt):
    ref, comp, ref_hist, comp_hist = _fit_both([5, 19, 3], act, loss, OPTIMIZERS[opt], batch_size=4)
    _assert_same(ref, comp, ref_hist, comp_hist)
    assert not np.allclose(comp.dense_layers[0].W, _net([5, 19, 3], act, "numpy").dense_layers[0].W)


@pytest.mark.parametrize("sizes, act, loss, batch_size", [
    ([9, 21, 17, 4], "relu", "cross_entropy", 7),       # depth 3
    ([9, 40, 33, 18, 4], "tanh", "mse", 6),              # depth 4, several vectors per layer
    ([9, 40, 12, 30, 4], "sigmoid", "mse", 6),           # a narrow hidden layer
    ([6, 3], "identity", "cross_entropy", 5),            # one layer
    ([6, 1], "identity", "binary_cross_entropy", 5),     # one output
    ([6, 8, 1], "sigmoid", "mse", 23),                   # one output, one batch
    ([6, 8, 2], "relu", "cross_entropy", 100),           # batch larger than the data
])
def test_same_as_reference_shapes(sizes, act, loss, batch_size):
    _assert_same(*_fit_both(sizes, act, loss, OPTIMIZERS["adam+wd"], batch_size))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch_size", [64, 65, 200])
def test_plain_sgds_weight_decay_is_taken_once_per_step_at_batches_past_a_row_chunk(batch_size, threads):
    # plain SGD adds to W in chunks of ROW_CHUNK rows (64): the decay belongs to the step, not to each chunk
    sizes = [20, 16, 3]
    ref, comp, ref_hist, comp_hist = _fit_both(sizes, "relu", "cross_entropy", lambda: SGD(0.1, weight_decay=0.5),
                                               batch_size, threads=threads, data=_data(sizes, n=400),
                                               shuffle=False)
    _assert_same(ref, comp, ref_hist, comp_hist)


@pytest.mark.parametrize("head, loss", [(Softmax, "cross_entropy"), (Sigmoid, "binary_cross_entropy")])
def test_final_activation_folded_into_the_loss(head, loss):
    _assert_same(*_fit_both([5, 12, 3], "tanh", loss, OPTIMIZERS["momentum+wd"], 4, head=head))


@pytest.mark.parametrize("head", [Sigmoid, Tanh, ReLU])
def test_output_activation_under_mse(head):
    """A last activation that no loss folds in runs inside the compiled epoch too."""
    _assert_same(*_fit_both([5, 12, 3], "relu", "mse", OPTIMIZERS["nesterov"], 4, head=head))


def test_float32_a_few_batches_of_nielsens_network():
    """784-30-10 sigmoid/mse at lr 3.0 over 10 batches: chaotic over an epoch, close over a few."""
    g = np.random.default_rng(0)
    X, y = g.random((100, 784)), g.integers(0, 10, 100)
    out = []
    for backend in ("numpy", _Compiled()):
        net = Sequential(Dense(784, 30, init="normal"), Sigmoid(), Dense(30, 10, init="normal"), Sigmoid(),
                         backend=backend, seed=0, dtype="float32")
        out.append((net, net.fit(X, y, epochs=1, batch_size=10, loss="mse", lr=3.0)))
    (ref, ref_hist), (comp, comp_hist) = out
    for a, b in zip(ref.dense_layers, comp.dense_layers):
        np.testing.assert_allclose(b.W, a.W, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b.b, a.b, rtol=1e-4, atol=1e-5)
    assert comp_hist.history["loss"][0] == pytest.approx(ref_hist.history["loss"][0], rel=1e-5)
    assert comp_hist.history["accuracy"] == ref_hist.history["accuracy"]


def test_two_threads_float32_a_few_batches(monkeypatch):
    """Two threads split the sums differently from one: float32 stays within rounding."""
    monkeypatch.setattr(numba_epoch, "WORK_PER_THREAD", 1)
    g = np.random.default_rng(0)
    X, y = g.random((60, 30)), g.integers(0, 10, 60)  # MNIST-like: inputs in [0, 1]
    ref, comp, ref_hist, comp_hist = _fit_both([30, 40, 10], "sigmoid", "mse", lambda: SGD(3.0), 6, epochs=1,
                                               dtype="float32", threads=2, data=(X, y))
    assert comp.backend.epoch_trainer(comp, comp.loss, comp.optimizer)._threads_for(6) == 2
    for a, b in zip(ref.dense_layers, comp.dense_layers):
        np.testing.assert_allclose(b.W, a.W, rtol=1e-4, atol=1e-5)
    assert comp_hist.history["loss"][0] == pytest.approx(ref_hist.history["loss"][0], rel=1e-5)


@pytest.mark.parametrize("opt, sizes", [("sgd", [9, 40, 35, 3]), ("adam+wd", [9, 40, 35, 3]),
                                         ("sgd", [9, 40, 12, 30, 3])])
def test_two_threads_same_as_reference(opt, sizes, monkeypatch):
    monkeypatch.setattr(numba_epoch, "WORK_PER_THREAD", 1)
    ref, comp, ref_hist, comp_hist = _fit_both(sizes, "relu", "cross_entropy", OPTIMIZERS[opt], 6, threads=2)
    assert comp.backend.epoch_trainer(comp, comp.loss, comp.optimizer)._threads_for(6) == 2
    _assert_same(ref, comp, ref_hist, comp_hist)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("opt", ["sgd", "adam+wd"])
def test_dx_through_transposed_w_same_as_reference(opt, threads, monkeypatch):
    """From DX_VIA_FORWARD_ROWS rows per batch, dX of a layer with few outputs (a narrow hidden
    layer, the last layer) runs the forward tiles on a transposed copy of W; partial last batch."""
    monkeypatch.setattr(numba_epoch, "WORK_PER_THREAD", 1)
    batch = numba_epoch.codegen.load().DX_VIA_FORWARD_ROWS + 3
    sizes = [9, 40, 12, 30, 3]
    ref, comp, ref_hist, comp_hist = _fit_both(sizes, "relu", "cross_entropy", OPTIMIZERS[opt], batch,
                                               threads=threads, data=_data(sizes, n=2 * batch + 7))
    assert comp.backend.epoch_trainer(comp, comp.loss, comp.optimizer)._threads_for(batch) == threads
    _assert_same(ref, comp, ref_hist, comp_hist)


@pytest.mark.parametrize("opt", ["adam+wd", "nesterov"])
def test_an_epoch_in_many_calls_same_as_reference(opt, monkeypatch):
    monkeypatch.setattr(numba_epoch, "CHUNK_WORK", 1.0)  # one batch per compiled call
    _assert_same(*_fit_both([5, 19, 3], "tanh", "cross_entropy", OPTIMIZERS[opt], 4))


def test_thread_count_follows_the_work_per_batch():
    loss = fastnn.losses.get_loss("cross_entropy")

    def threads(sizes, batch_size, available=2):
        net = _net(sizes, "relu", _Compiled(available), dtype="float32")
        return numba_epoch.make_epoch_trainer(net.backend, net, loss, SGD(0.1))._threads_for(batch_size)

    assert threads([784, 30, 10], 10) == 2 and threads([784, 128, 10], 1024) == 2
    assert threads([30, 30, 10], 10) == 1      # too little work per batch
    one_vector = numba_epoch.simd.width(np.dtype(np.float32))  # 8 floats with AVX2, 16 with AVX-512
    assert threads([784, one_vector, 10], 100) == 1  # one vector of hidden units: nothing to split
    assert threads([784, 128, 10], 1024, available=1) == 1
    net = _net([64, 64, 10], "relu", _Compiled(2), dtype="float64")
    trainer = numba_epoch.make_epoch_trainer(net.backend, net, loss, SGD(0.1))
    assert trainer._threads_for(200) == 2 and trainer._threads_for(200, rows=1198) == 1  # a short epoch
    assert trainer._threads_for(200, rows=60_000) == 2


# ---- behaviour: assigned weights, validation, checkpoints, divergence, fallback ----
def test_assigned_weights_are_used():
    X, y = _data([5, 9, 3])
    nets = []
    for backend in ("numpy", _Compiled()):
        net = _net([5, 9, 3], "sigmoid", backend)
        net.fit(X, y, epochs=1, batch_size=4, loss="mse", lr=0.5)
        net.dense_layers[0].W = np.full((5, 9), 0.1)
        net.dense_layers[1].b = np.arange(3.0)
        net.fit(X, y, epochs=1, batch_size=4)
        nets.append(net)
    for a, b in zip(*(n.dense_layers for n in nets)):
        np.testing.assert_allclose(b.W, a.W, rtol=1e-10)
        np.testing.assert_allclose(b.b, a.b, rtol=1e-10)


def test_validation_and_checkpoint_resume(tmp_path):
    X, y = _data([5, 9, 3], n=40)
    ref, comp, ref_hist, comp_hist = _fit_both([5, 9, 3], "relu", "cross_entropy", OPTIMIZERS["adam+wd"], 8,
                                               epochs=3, data=(X, y), validation_data=(X[:10], y[:10]))
    _assert_same(ref, comp, ref_hist, comp_hist)
    assert "val_loss" in comp_hist.history
    path = str(tmp_path / "ckpt.npz")
    first = _net([5, 9, 3], "relu", _Compiled())
    first.fit(X, y, epochs=2, batch_size=8, loss="cross_entropy", optimizer=Adam(0.01), checkpoint=path)
    resumed = _net([5, 9, 3], "relu", _Compiled())
    history = resumed.fit(X, y, epochs=3, batch_size=8, loss="cross_entropy", optimizer=Adam(0.01),
                          checkpoint=path, resume=True)
    straight = _net([5, 9, 3], "relu", _Compiled())
    straight.fit(X, y, epochs=3, batch_size=8, loss="cross_entropy", optimizer=Adam(0.01))
    assert history["epoch"][-1] == 3 and resumed.optimizer.t == straight.optimizer.t
    for a, b in zip(straight.dense_layers, resumed.dense_layers):
        np.testing.assert_array_equal(b.W, a.W)


@pytest.mark.filterwarnings("ignore:overflow encountered")
@pytest.mark.parametrize("threads", [1, 2])
def test_nan_loss_stops_with_finite_weights(threads, monkeypatch):
    monkeypatch.setattr(numba_epoch, "WORK_PER_THREAD", 1)
    X, y = _data([5, 9, 3], n=60)
    X[40:] = 1e200  # the loss of batch 6 (rows 40..47) overflows
    stops = []
    for backend in ("numpy", _Compiled(threads)):
        net = _net([5, 9, 3], "relu", backend)
        with pytest.raises(TrainingDiverged, match=r"epoch 1, batch 6;"):
            net.fit(X, y, epochs=1, batch_size=8, loss="mse", optimizer=SGD(0.01, momentum=0.5), shuffle=False)
        assert all(np.all(np.isfinite(d.W)) for d in net.dense_layers)
        stops.append(net)
    for a, b in zip(stops[0].dense_layers, stops[1].dense_layers):
        np.testing.assert_allclose(b.W, a.W, rtol=1e-10)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("sizes, act", [([6, 3], "identity"), ([6, 20, 3], "sigmoid"), ([6, 20, 3], "relu"),
                                        ([6, 20, 9, 3], "tanh")])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_nan_or_inf_in_x_is_refused_by_the_compiled_epoch(value, sizes, act, threads, monkeypatch):
    """fit leaves the NaN/inf check of X to the compiled epoch (one pass over the data set
    less): it stops at the batch holding the row (whose first-layer sums are all NaN/inf, even
    where sigmoid(inf) = 1 or relu(-inf) = 0 would hide it), the epoch is undone, and X is refused
    with the message of the check before training, changing nothing."""
    monkeypatch.setattr(numba_epoch, "WORK_PER_THREAD", 1)
    X, y = _data(sizes, n=40)
    bad_X = X.copy()
    bad_X[29, 2] = value
    net, fresh = _net(sizes, act, _Compiled(threads)), _net(sizes, act, _Compiled(threads))
    net.fit(X, y, epochs=1, batch_size=6, loss="cross_entropy", lr=0.1)
    fresh.fit(X, y, epochs=1, batch_size=6, loss="cross_entropy", lr=0.1)
    stops, real_call = [], numba_epoch.EpochTrainer.__call__

    def call(self, *args):
        result = real_call(self, *args)
        stops.append(result[2])
        return result
    monkeypatch.setattr(numba_epoch.EpochTrainer, "__call__", call)
    with pytest.raises(ValueError, match=r"^X: contains NaN or inf \(first in row 29\)$"):
        net.fit(bad_X, y, epochs=2, batch_size=6, loss="mse", optimizer=Adam(0.01))
    assert len(stops) == 1 and stops[0] >= 0  # the compiled epoch found it (fit did not look first)
    assert net.loss.name == "cross_entropy" and isinstance(net.optimizer, SGD)  # nothing changed
    monkeypatch.setattr(numba_epoch.EpochTrainer, "__call__", real_call)
    for model in (net, fresh):  # same weights, same batch generator: the same next epoch
        model.fit(X, y, epochs=1, batch_size=6)
    for a, b in zip(net.dense_layers, fresh.dense_layers):
        np.testing.assert_array_equal(a.W, b.W)
        np.testing.assert_array_equal(a.b, b.b)


@pytest.mark.parametrize("threads", [1, 2])
def test_an_inf_the_loss_cannot_see_is_refused(threads, monkeypatch):
    """With W ≥ 0, a -inf in a row makes all its first-layer sums -inf and ReLU makes them 0:
    the loss stays finite, and in the last batch no later loss sees the step it poisons. Only
    the check of the first layer's sums stops the epoch there."""
    monkeypatch.setattr(numba_epoch, "WORK_PER_THREAD", 1)
    X, y = _data([6, 16, 3], n=40)  # 16: whole vectors (a padding unit's 0 · -inf would be NaN)
    X[37, 2] = -np.inf  # in the last batch: a step would not show it to a later loss
    net = _net([6, 16, 3], "relu", _Compiled(threads))
    net.dense_layers[0].W = np.abs(net.dense_layers[0].W)
    before = [p.copy() for d in net.dense_layers for p in (d.W, d.b)]
    with pytest.raises(ValueError, match=r"^X: contains NaN or inf \(first in row 37\)$"):
        net.fit(X, y, epochs=1, batch_size=6, loss="cross_entropy", lr=1e-6, shuffle=False)
    for a, b in zip(before, [p for d in net.dense_layers for p in (d.W, d.b)]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings("ignore::fastnn.UnscaledInputWarning")  # unscaled on purpose
@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_first_layer_sums_that_overflow_stop_as_diverged():
    """A finite X whose first-layer sums overflow float32 stops the epoch too: not as bad input
    (X is finite) but as a diverged fit, with the message saying which sums it may be."""
    X, y = _data([6, 16, 3], n=40)
    X[5, :] = 3e38
    net = _net([6, 16, 3], "sigmoid", _Compiled(1), dtype="float32")
    net.dense_layers[0].W = np.abs(net.dense_layers[0].W) + np.float32(1)
    with pytest.raises(TrainingDiverged, match=r"the loss or a first-layer sum became NaN or inf in epoch 1, batch 1;"):
        net.fit(X, y, epochs=1, batch_size=6, loss="cross_entropy", lr=0.1, shuffle=False)
    assert all(np.all(np.isfinite(d.W)) for d in net.dense_layers)


def _with_own_forward(layer):
    """``layer`` with a forward of the user's own, set on the instance."""
    plain = layer.forward
    layer.forward = lambda X, *args: plain(X, *args) * 1.0
    return layer


@pytest.mark.parametrize("layers, loss, optimizer", [
    ([Dense(4, 6), Softmax(), Dense(6, 2)], "mse", SGD(0.1)),           # softmax inside
    ([Dense(4, 6), Sigmoid(), Tanh(), Dense(6, 2)], "mse", SGD(0.1)),    # two activations in a row
    ([Dense(4, 2)], type("MyLoss", (MSE,), {"__call__": MSE.__call__})(), SGD(0.1)),  # a user's loss
    ([Dense(4, 2)], "mse", type("MySGD", (SGD,), {})(0.1)),               # a user's optimizer
    ([_with_own_forward(Dense(4, 2))], "mse", SGD(0.1)),                  # one layer's own forward
])
def test_unsupported_models_fall_back_visibly(layers, loss, optimizer, capsys):
    net = Sequential(*layers, backend=_Compiled(), seed=0, dtype="float64")
    loss = fastnn.losses.get_loss(loss)
    assert numba_epoch.make_epoch_trainer(net.backend, net, loss, optimizer) is None
    assert numba_epoch.unsupported_reason(net, loss, optimizer)
    X, y = _data([4, 2], n=12)
    net.fit(X, y, epochs=1, batch_size=4, loss=loss, optimizer=optimizer, verbose=1)
    assert "layer by layer" in capsys.readouterr().err


def test_verbose_names_the_compiled_path(capsys):
    X, y = _data([5, 9, 3])
    _net([5, 9, 3], "relu", _Compiled()).fit(X, y, epochs=1, batch_size=4, verbose=1)
    assert "compiled whole epoch (" in capsys.readouterr().err
    _net([5, 9, 3], "relu", _Compiled(2)).fit(X, y, epochs=1, batch_size=4, verbose=1)
    assert "1 thread of 2 (as many as the work pays for) at batch 4)" in capsys.readouterr().err


def test_a_failed_build_falls_back_to_layers_with_a_warning(monkeypatch):
    def broken(dtypes):
        raise numba.core.errors.TypingError("Failed in nopython mode pipeline\nmore detail")
    monkeypatch.setattr(numba_epoch, "warmup", broken)
    monkeypatch.setattr(numba_epoch, "_built", set())
    monkeypatch.setattr(numba_epoch, "_build_failures", {})
    net = _net([5, 9, 3], "relu", _Compiled())
    loss = fastnn.losses.get_loss("cross_entropy")
    with pytest.warns(RuntimeWarning, match=r"could not be built for float64 \(TypingError: Failed in "
                                            r"nopython mode pipeline\); fit runs layer by layer"):
        assert numba_epoch.make_epoch_trainer(net.backend, net, loss, SGD(0.1)) is None
    assert "failed to build (TypingError" in numba_epoch.unsupported_reason(net, loss, SGD(0.1))
    assert numba_epoch.make_epoch_trainer(net.backend, net, loss, SGD(0.1)) is None  # warned once
    X, y = _data([5, 9, 3])
    ref = _net([5, 9, 3], "relu", "numpy")
    ref_hist = ref.fit(X, y, epochs=1, batch_size=4, loss=loss, lr=0.1)
    _assert_same(ref, net, ref_hist, net.fit(X, y, epochs=1, batch_size=4, loss=loss, lr=0.1))


def test_the_numba_backend_says_why_it_trains_layer_by_layer(capsys):
    available, reason = fastnn.available_backends().get("numba", (False, "not registered"))
    if not available:
        pytest.skip(f"backend 'numba' unavailable: {reason}")
    X, y = _data([4, 2], n=12)
    net = Sequential(Dense(4, 6), Softmax(), Dense(6, 2), backend="numba", seed=0)
    net.fit(X, y, epochs=1, batch_size=4, loss="mse", lr=0.1, verbose=1)
    assert "layer by layer (no compiled epoch for it: layer Softmax()" in capsys.readouterr().err
    net.to(fastnn.get_backend("numba", compiled=False))
    net.fit(X, y, epochs=1, batch_size=4, verbose=1)
    assert "layer by layer (compiled=False)" in capsys.readouterr().err


# ---- threads never hang: a failing or interrupted thread releases the others ----
def _trainer_with_two_threads(monkeypatch):
    monkeypatch.setattr(numba_epoch, "WORK_PER_THREAD", 1)
    monkeypatch.setattr(numba_epoch, "CHUNK_WORK", 1.0)  # one batch per call
    X, y = _data([5, 9, 3], n=40)
    net = _net([5, 9, 3], "relu", _Compiled(2))
    return net, X, y


def test_a_failing_worker_cannot_hang_the_epoch(monkeypatch):
    net, X, y = _trainer_with_two_threads(monkeypatch)
    kern = numba_epoch.codegen.load()
    real = kern.epoch

    def epoch(*args):
        if args[-2] == 1:  # tid
            raise MemoryError("worker lost")
        return real(*args)

    monkeypatch.setattr(kern, "epoch", epoch)
    done = []
    thread = threading.Thread(target=lambda: done.append(pytest.raises(RuntimeError, net.fit, X, y, epochs=1,
                                                                       batch_size=8)), daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert done and "worker lost" in str(done[0].value)


def test_a_thread_off_its_core_hands_the_epoch_to_one_thread(monkeypatch):
    """Another process on the cores: the barriers wait long, the epoch goes on with one thread."""
    X, y = _data([5, 9, 3], n=120)
    ref = _net([5, 9, 3], "relu", "numpy")
    ref_hist = ref.fit(X, y, epochs=2, batch_size=8, loss="cross_entropy", optimizer=Adam(0.01))
    monkeypatch.setattr(numba_epoch, "WORK_PER_THREAD", 1)
    monkeypatch.setattr(numba_epoch, "LONG_WAIT_CYCLES", 1)  # every wait counts as long
    net = _net([5, 9, 3], "relu", _Compiled(2))
    kern = numba_epoch.codegen.load()
    real, threads = kern.epoch, []

    def epoch(*args):
        if args[-2] == 1 and args[7]:  # the worker, late for its run of batches (not the compile call)
            time.sleep(0.05)
        threads.append(args[-1])
        return real(*args)

    monkeypatch.setattr(kern, "epoch", epoch)
    hist = net.fit(X, y, epochs=2, batch_size=8, loss="cross_entropy", optimizer=Adam(0.01))
    assert threads.count(2) and threads[-1] == 1  # began on two threads, ended on one
    _assert_same(ref, net, ref_hist, hist)


def test_ctrl_c_keeps_the_last_completed_epoch(monkeypatch):
    net, X, y = _trainer_with_two_threads(monkeypatch)
    net.fit(X, y, epochs=1, batch_size=8)
    before = [d.W.copy() for d in net.dense_layers]
    kern = numba_epoch.codegen.load()
    real, calls = kern.epoch, []

    def epoch(*args):
        calls.append(args[-2])
        if args[-2] == 0 and calls.count(0) == 4:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(kern, "epoch", epoch)
    history = net.fit(X, y, epochs=3, batch_size=8)
    assert history.interrupted and len(history) == 0
    for W0, d in zip(before, net.dense_layers):
        np.testing.assert_array_equal(d.W, W0)
    assert not [t for t in threading.enumerate() if t.daemon and t.is_alive() and "worker" in t.name]


# ---- the disk cache and warm-up ----
def test_a_new_process_loads_the_kernels_from_the_cache():
    numba_epoch.warmup(("float32",))  # compiled here (or already cached)
    code = ("import time; t = time.perf_counter()\n"
            "from fastnn.backends.numba import epoch as numba_epoch\n"
            "numba_epoch.warmup(('float32',))\n"
            "kern = numba_epoch.codegen.load()\n"
            "print(kern.epoch.stats.cache_hits and sum(kern.epoch.stats.cache_hits.values()),"
            " sum(kern.epoch.stats.cache_misses.values()), time.perf_counter() - t)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    hits, misses, seconds = result.stdout.split()
    assert int(hits) >= 1 and int(misses) == 0
    assert float(seconds) < 10  # a cold compile takes far longer


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners and modes")
def test_the_temporary_cache_folder_is_private(tmp_path, monkeypatch):
    """With a read-only home the module goes to the temp dir: never into a folder others can write."""
    numba_cache = numba_epoch.numba_cache
    monkeypatch.setattr(numba_cache.tempfile, "gettempdir", lambda: str(tmp_path))
    folder = numba_cache._private_temp_path()
    numba_cache._make_private(folder)
    assert os.stat(folder).st_mode & 0o777 == 0o700
    os.chmod(folder, 0o777)  # as if someone else had made it, open to all
    with pytest.raises(PermissionError, match=r"not a private folder of this user .*will not import code"):
        numba_cache._make_private(folder)


# ---- the numba backend uses it ----
def test_the_numba_backend_trains_compiled(capsys):
    available, reason = fastnn.available_backends().get("numba", (False, "not registered"))
    if not available:
        pytest.skip(f"backend 'numba' unavailable: {reason}")
    backend = fastnn.get_backend("numba")
    if type(backend).epoch_trainer is Backend.epoch_trainer:
        pytest.skip("the numba backend does not offer epoch_trainer yet")
    X, y = _data([5, 9, 3])
    ref = _net([5, 9, 3], "relu", "numpy")
    ref_hist = ref.fit(X, y, epochs=2, batch_size=4, loss="cross_entropy", lr=0.1)
    net = _net([5, 9, 3], "relu", "numba")
    hist = net.fit(X, y, epochs=2, batch_size=4, loss="cross_entropy", lr=0.1, verbose=1)
    assert "compiled whole epoch" in capsys.readouterr().err
    _assert_same(ref, net, ref_hist, hist)


#: Example arguments of the tiles by parameter name (anything else is an int64 offset or size).
_TILE_ARGS = {"rows": np.zeros(1, np.int64), "h": np.zeros(1), "decays": True, "sgd": True, "keep": 1.0}
_TILE_ARRAYS = {"A", "W", "B", "Z", "D", "O", "P", "S1", "S2", "G"}


def _tile_asm(dispatcher, dtype):
    """The assembly of one tile for ``dtype``, compiled here without the disk cache: a kernel
    loaded from numba's cache has no assembly to show (and its tiles no signatures)."""
    import inspect

    flat = np.zeros(64, dtype)
    types = []
    for name in inspect.signature(dispatcher.py_func).parameters:
        value = flat if name in _TILE_ARRAYS else _TILE_ARGS.get(name, np.int64(0))
        types.append(numba.typeof(value))
    fresh = numba.njit(**{k: v for k, v in dispatcher.targetoptions.items() if k != "nopython"})(
        dispatcher.py_func)
    fresh.compile(tuple(types))
    return next(iter(fresh.inspect_asm().values()))


def _innermost_loops(asm):
    """The instructions of each innermost loop of a function's assembly.

    Blocks start at labels and end at jumps. A jump back to a block (the head) that every
    path from the entry to the jump passes closes a loop: its body is the head and every
    block that reaches the jump without passing the head. LLVM lays a loop's blocks out of
    order, so line ranges would not do. Innermost: holding no other loop.
    """
    blocks, names = [[]], {}
    for line in asm.splitlines():
        label = re.match(r"^(\.?\w+):", line)
        if label:
            blocks.append([])
            names[label.group(1)] = len(blocks) - 1
        blocks[-1].append(line)
    succ = {i: set() for i in range(len(blocks))}
    for i, block in enumerate(blocks):
        jumps = [re.match(r"^\s+(j\w+)\s+(\S+)$", line) for line in block]
        jumps = [j for j in jumps if j]
        succ[i] |= {names[j.group(2)] for j in jumps if j.group(2) in names}
        ends = block and re.match(r"^\s+(jmp|ret)", block[-1] if not block[-1].startswith("#") else "")
        if not ends and i + 1 < len(blocks):
            succ[i].add(i + 1)  # falls through to the next block
    pred = {i: {u for u in succ if i in succ[u]} for i in succ}
    loops = set()
    for tail in succ:
        for head in succ[tail]:
            body, todo = {head, tail}, [tail] if tail != head else []
            while todo:
                for u in pred[todo.pop()]:
                    if u not in body:
                        body.add(u)
                        todo.append(u)
            if 0 not in body or head == 0:  # the entry reaches the tail only through the head
                loops.add(frozenset(body))
    inner = [body for body in loops if not any(other < body for other in loops)]
    return [[line for i in sorted(body) for line in blocks[i]] for body in inner]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_register_tiles_fit_in_the_registers(dtype):
    """No tile of the compiled epoch keeps vectors on the stack inside its innermost loop: its
    accumulators and loads fit the machine's register file (AVX-512: 32 vectors, AVX2: 16;
    tile_shapes chooses by it). Spilled tiles made B epochs 1.3-1.6x slower on Zen 3 (AVX2) than
    tiles that fit. (A constant spilled once outside the loops costs nothing.)"""
    kern = numba_epoch.codegen.load()
    tiles = [name for name in dir(kern) if name.split("_")[0] in ("fwd", "upd", "dx") and name[-1].isdigit()]
    assert len(tiles) >= 6
    for name in tiles:
        loops = _innermost_loops(_tile_asm(getattr(kern, name), dtype))
        assert loops, f"{name}: no loop found in its assembly"
        fmas = [line for loop in loops for line in loop if "vfmadd" in line]
        assert fmas, f"{name}: no vector FMA inside its innermost loops"
        spills = [line for loop in loops for line in loop
                  if "(%rsp)" in line and any(op in line for op in ("vmovap", "vmovup", "vfmadd", "vbroadcast"))]
        assert not spills, f"{name}: vectors spilled to the stack in its innermost loop, e.g. {spills[:3]}"
