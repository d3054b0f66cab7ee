"""Training: seeded runs that learn, determinism, user weights, optimizers, History,
predict/evaluate semantics, batches (order, the partial last one), divergence and Ctrl-C.

The learning problem is ``blobs`` (tests/conftest.py): 4 Gaussian classes in 20
dimensions, spread 3.0, so an untrained net is near chance (~0.25) and a trained
one must clear 0.95 on held-out points.
"""
import copy
import re

import numpy as np
import pytest

import fastnn
from conftest import blobs

BAR = 0.95  # held-out accuracy every loss must reach


@pytest.fixture(scope="module")
def data():
    X, y = blobs(n=800, seed=0, spread=3.0)
    return X[:400], y[:400], X[400:], y[400:]


#: name -> (loss, output layer or None, lr)
RECIPES = {
    "mse": ("mse", fastnn.Sigmoid, 3.0),  # Nielsen's network.py: quadratic cost, eta = 3.0
    "cross_entropy": ("cross_entropy", None, 0.5),
    "cross_entropy+softmax": ("cross_entropy", fastnn.Softmax, 0.5),
    "binary_cross_entropy": ("binary_cross_entropy", fastnn.Sigmoid, 0.5),
}


def _net(backend="numpy", head=None, seed=0, dtype="float32", hidden=16, init="glorot_uniform"):
    layers = [fastnn.Dense(20, hidden, init=init), fastnn.Sigmoid(), fastnn.Dense(hidden, 4, init=init)]
    if head is not None:
        layers.append(head())
    return fastnn.Sequential(*layers, backend=backend, seed=seed, dtype=dtype)


def _weights(net):
    return [net.backend.to_numpy(p).copy() for d in net.dense_layers for p in (d.W, d.b)]


def _same_history(a, b):
    assert set(a.history) == set(b.history)
    for key in a.history:
        if key != "seconds":
            assert a[key] == b[key], key


# ---- it learns -----------------------------------------------------------------
@pytest.mark.parametrize("recipe", RECIPES)
def test_training_clears_the_bar(backend_name, data, recipe):
    X, y, X_test, y_test = data
    loss, head, lr = RECIPES[recipe]
    net = _net(backend_name, head)
    before = net.evaluate(X_test, y_test, loss=loss)
    assert before["accuracy"] < 0.6  # untrained: the bar below means something
    history = net.fit(X, y, epochs=8, batch_size=10, loss=loss, lr=lr)
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["accuracy"][-1] >= BAR
    after = net.evaluate(X_test, y_test)
    assert after["loss"] < before["loss"]
    assert after["accuracy"] >= BAR, f"{recipe}: held-out accuracy {after['accuracy']:.3f} < {BAR}"
    assert np.mean(net.predict(X_test) == y_test) == pytest.approx(after["accuracy"])


OPTIMIZERS = {
    "momentum": lambda: fastnn.SGD(0.1, momentum=0.9),
    "nesterov": lambda: fastnn.SGD(0.1, momentum=0.9, nesterov=True),
    "weight_decay": lambda: fastnn.SGD(0.5, weight_decay=1e-3),
    "adam": lambda: fastnn.Adam(0.01),
    "adam_weight_decay": lambda: fastnn.Adam(0.01, weight_decay=1e-3),
}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_optimizers_train(backend_name, data, optimizer):
    X, y, X_test, y_test = data
    net = _net(backend_name)
    history = net.fit(X, y, epochs=6, batch_size=10, loss="cross_entropy", optimizer=OPTIMIZERS[optimizer]())
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert net.evaluate(X_test, y_test)["accuracy"] >= BAR


def test_weight_decay_shrinks_the_weights(data):
    X, y, _, _ = data
    norms = {}
    for decay in (0.0, 0.05):
        net = _net(init="normal")
        net.fit(X, y, epochs=3, batch_size=10, loss="cross_entropy", optimizer=fastnn.SGD(0.1, weight_decay=decay))
        norms[decay] = sum(float(np.sum(d.W ** 2)) for d in net.dense_layers)
    assert norms[0.05] < 0.8 * norms[0.0]


# ---- one optimizer step, by hand ---------------------------------------------------------
def _one_step(optimizer):
    X, y = blobs(n=16, seed=3)
    net = _net(dtype="float64", init="normal")
    W0, b0 = (np.array(p) for p in (net.dense_layers[0].W, net.dense_layers[0].b))
    net.backprop(X, y, loss="cross_entropy")
    dW, db = (np.array(p) for p in (net.dense_layers[0].dW, net.dense_layers[0].db))
    optimizer.step(net.backend, net.dense_layers)
    return W0, b0, dW, db, np.array(net.dense_layers[0].W), np.array(net.dense_layers[0].b)


def test_sgd_weight_decay_applies_to_weights_not_biases():
    W0, b0, dW, db, W1, b1 = _one_step(fastnn.SGD(0.3, weight_decay=0.1))
    np.testing.assert_allclose(W1, W0 - 0.3 * (dW + 0.1 * W0), rtol=1e-12)
    np.testing.assert_allclose(b1, b0 - 0.3 * db, rtol=1e-12)


def test_adam_first_step():
    # after one step m̂ = g and v̂ = g², so each weight moves by lr·g/(|g| + eps)
    W0, b0, dW, db, W1, b1 = _one_step(fastnn.Adam(0.01, eps=1e-8))
    np.testing.assert_allclose(W1, W0 - 0.01 * dW / (np.abs(dW) + 1e-8), rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(b1, b0 - 0.01 * db / (np.abs(db) + 1e-8), rtol=1e-10, atol=1e-15)


# ---- determinism and cross-backend agreement -------------------------------------------
def test_same_seed_same_numbers(backend_name, data):
    X, y, X_val, y_val = data
    runs = []
    for _ in range(2):
        net = _net(backend_name, seed=11)
        history = net.fit(X, y, epochs=2, batch_size=32, loss="cross_entropy", lr=0.3,
                          validation_data=(X_val, y_val))
        runs.append((_weights(net), history))
    for a, b in zip(runs[0][0], runs[1][0]):
        np.testing.assert_array_equal(a, b)
    _same_history(runs[0][1], runs[1][1])
    other = _net(backend_name, seed=12)
    assert not np.array_equal(_weights(other)[0], _weights(_net(backend_name, seed=11))[0])
    other.fit(X, y, epochs=2, batch_size=32, loss="cross_entropy", lr=0.3)
    assert not np.array_equal(_weights(other)[0], runs[0][0][0])


def test_backends_agree_with_numpy(backend_name, data):
    """Same seed: identical initial weights on every backend, and the same training (float64)."""
    X, y, X_val, y_val = data
    nets = [_net(name, seed=5, dtype="float64") for name in ("numpy", backend_name)]
    for a, b in zip(_weights(nets[0]), _weights(nets[1])):
        np.testing.assert_array_equal(a, b)
    histories = [net.fit(X, y, epochs=2, batch_size=16, loss="cross_entropy", lr=0.3) for net in nets]
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(histories[1][key], histories[0][key], rtol=1e-9)
    for a, b in zip(_weights(nets[0]), _weights(nets[1])):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(nets[1].predict_proba(X_val), nets[0].predict_proba(X_val), rtol=1e-9, atol=1e-12)


# ---- weights the user assigns --------------------------------------------------------
def _linear(backend, dtype="float64"):
    return fastnn.Sequential(fastnn.Dense(3, 2), backend=backend, seed=0, dtype=dtype)


def test_assigned_weights_are_used(backend_name):
    g = np.random.default_rng(0)
    X, T = g.standard_normal((10, 3)), g.standard_normal((10, 2))
    W, b = g.standard_normal((3, 2)), g.standard_normal(2)
    W_given, b_given = W.copy(), b.copy()
    net = _linear(backend_name)
    layer = net.dense_layers[0]
    layer.W, layer.b = W, b
    # forward
    np.testing.assert_allclose(net.backend.to_numpy(net(X)), X @ W + b, rtol=1e-12)
    # backprop: mse gradient of a linear layer, by hand
    value = net.backprop(X, T, loss="mse")
    D = X @ W + b - T
    assert value == pytest.approx(np.sum(D ** 2) / (2 * 10), rel=1e-12)
    np.testing.assert_allclose(net.backend.to_numpy(layer.dW), X.T @ D / 10, rtol=1e-12)
    np.testing.assert_allclose(net.backend.to_numpy(layer.db), D.sum(axis=0) / 10, rtol=1e-12)
    # fit: one full batch, one step from the assigned weights
    layer.W, layer.b = W, b
    net.fit(X, T, epochs=1, batch_size=10, loss="mse", lr=0.5, shuffle=False)
    np.testing.assert_allclose(net.backend.to_numpy(layer.W), W - 0.5 * X.T @ D / 10, rtol=1e-12)
    np.testing.assert_allclose(net.backend.to_numpy(layer.b), b - 0.5 * D.sum(axis=0) / 10, rtol=1e-12)
    # training updated the layer's copy, never the caller's arrays
    np.testing.assert_array_equal(W, W_given)
    np.testing.assert_array_equal(b, b_given)


def _manual_sgd(X, T, W, b, lr, order, batch_size):
    """Mini-batch SGD on a linear layer with the quadratic cost, written out (float64)."""
    W, b = W.copy(), b.copy()
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        D = X[rows] @ W + b - T[rows]
        W, b = W - lr * X[rows].T @ D / len(rows), b - lr * D.sum(axis=0) / len(rows)
    return W, b


@pytest.mark.parametrize("shuffle", [False, True], ids=["in_order", "shuffled"])
def test_partial_last_batch_is_used(backend_name, shuffle):
    """n=10, batch_size=4: three steps (4, 4 and 2 rows), in order or in the model's permutation."""
    g = np.random.default_rng(1)
    X, T = g.standard_normal((10, 3)), g.standard_normal((10, 2))
    net = _linear(backend_name)
    W0, b0 = (net.backend.to_numpy(p).copy() for p in (net.dense_layers[0].W, net.dense_layers[0].b))
    orders = copy.deepcopy(net.batch_rng)  # the model's seeded host generator: the same draws
    net.fit(X, T, epochs=2, batch_size=4, loss="mse", lr=0.1, shuffle=shuffle)
    W, b = W0, b0
    for _ in range(2):
        order = orders.permutation(10) if shuffle else np.arange(10)
        W, b = _manual_sgd(X, T, W, b, 0.1, order, 4)
    np.testing.assert_allclose(net.backend.to_numpy(net.dense_layers[0].W), W, rtol=1e-12)
    np.testing.assert_allclose(net.backend.to_numpy(net.dense_layers[0].b), b, rtol=1e-12)
    # dropping the 2-row batch would give other weights: the check above can tell
    W_drop, _ = _manual_sgd(X, T, W0, b0, 0.1, np.arange(8), 4)
    assert not np.allclose(W_drop, W)


# ---- History, validation, evaluate -------------------------------------------------------
@pytest.mark.filterwarnings("ignore::fastnn.UnscaledInputWarning")  # unscaled on purpose
def test_a_backend_may_keep_uint8_pixels_and_convert_each_batch():
    """Backend.training_set: integer pixels kept as they are (as the cupy backend does when the
    floats do not fit its GPU) train to the same numbers as the floats they stand for."""
    from fastnn.backends.numpy_backend import NumpyBackend

    class Compact(NumpyBackend):
        def training_set(self, X, dtype):
            kept.append(X.dtype)
            return self.xp.asarray(X) if X.dtype == np.uint8 else super().training_set(X, dtype)

    kept = []
    g = np.random.default_rng(0)
    X, y = g.integers(0, 256, (75, 12)).astype(np.uint8), g.integers(0, 3, 75)
    nets = []
    for backend, X_given in (("numpy", X.astype(np.float64)), (Compact(), X)):
        net = fastnn.Sequential(fastnn.Dense(12, 7), fastnn.Tanh(), fastnn.Dense(7, 3), backend=backend,
                                seed=1, dtype="float64")
        history = net.fit(X_given, y, epochs=2, batch_size=10, loss="cross_entropy",
                          optimizer=fastnn.SGD(1e-4, momentum=0.9))
        nets.append((net, history))
    assert kept == [np.dtype(np.uint8)]  # the backend was given the integers, not floats
    (ref, ref_hist), (compact, hist) = nets
    for a, b in zip(ref.dense_layers, compact.dense_layers):
        np.testing.assert_array_equal(b.W, a.W)
    assert hist["loss"] == ref_hist["loss"]
    for bad in (X[:, :5], X[:0]):  # checked before the backend places anything
        with pytest.raises(ValueError, match=r"X: (expected 12 columns|is empty)"):
            compact.fit(bad, y[:len(bad)], epochs=1, batch_size=10, loss="cross_entropy", lr=0.1)
    assert kept == [np.dtype(np.uint8)]


def test_history(data):
    X, y, X_val, y_val = data
    net = _net()
    history = net.fit(X, y, epochs=3, batch_size=20, loss="cross_entropy", lr=0.3,
                      validation_data=(X_val, y_val))
    assert len(history) == 3 and history["epoch"] == [1, 2, 3]
    assert set(history.history) == {"epoch", "loss", "accuracy", "lr", "val_loss", "val_accuracy", "seconds"}
    assert all(len(v) == 3 for v in history.history.values())
    assert all(s > 0 for s in history["seconds"]) and not history.interrupted
    assert "val_loss" in history and history.best_epoch() in (1, 2, 3)
    # the last epoch's validation numbers are evaluate's on the final weights
    scores = net.evaluate(X_val, y_val)
    assert history["val_loss"][-1] == pytest.approx(scores["loss"], rel=1e-6)
    assert history["val_accuracy"][-1] == scores["accuracy"]
    no_val = _net().fit(X, y, epochs=1, batch_size=20, loss="cross_entropy", lr=0.3)
    assert set(no_val.history) == {"epoch", "loss", "accuracy", "lr", "seconds"}


def test_evaluate(data):
    X, y, _, _ = data
    net = _net(dtype="float64")
    scores = net.evaluate(X, y, loss="cross_entropy", batch_size=64)  # several batches, a partial one
    assert set(scores) == {"loss", "accuracy"}
    assert scores["loss"] == pytest.approx(net.backprop(X, y, loss="cross_entropy"), rel=1e-12)
    assert scores["accuracy"] == np.mean(net.predict(X) == y)
    mse = net.evaluate(X, y, loss="mse")["loss"]
    T = np.eye(4)[y]
    assert mse == pytest.approx(np.sum((np.asarray(net(X)) - T) ** 2) / (2 * len(y)), rel=1e-12)


def test_fit_with_zero_epochs_changes_nothing(data):
    X, y, _, _ = data
    net = _net()
    before = _weights(net)
    history = net.fit(X, y, epochs=0, batch_size=10, lr=0.1)
    assert len(history) == 0 and not history.interrupted
    for a, b in zip(before, _weights(net)):
        np.testing.assert_array_equal(a, b)


def test_fit_continues_from_the_current_weights(data):
    X, y, _, _ = data
    once, twice = _net(seed=3), _net(seed=3)
    once.fit(X, y, epochs=2, batch_size=20, loss="cross_entropy", lr=0.2)
    twice.fit(X, y, epochs=1, batch_size=20, loss="cross_entropy", lr=0.2)
    twice.fit(X, y, epochs=1, batch_size=20)  # same loss and optimizer as last time
    for a, b in zip(_weights(once), _weights(twice)):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


# ---- predict / predict_proba -------------------------------------------------------------
def _softmax(Z):
    E = np.exp(Z - Z.max(axis=1, keepdims=True))
    return E / E.sum(axis=1, keepdims=True)


def test_predict_proba_after_cross_entropy(data):
    X, y, X_test, _ = data
    net = _net(dtype="float64")
    net.fit(X, y, epochs=1, batch_size=20, loss="cross_entropy", lr=0.3)
    logits = np.asarray(net(X_test))
    P = net.predict_proba(X_test)
    np.testing.assert_allclose(P, _softmax(logits), rtol=1e-12)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(net.predict(X_test), np.argmax(logits, axis=1))
    assert net.predict(X_test).dtype == np.int64


def test_a_final_softmax_is_not_applied_twice(data):
    X, y, X_test, _ = data
    with_layer, without = _net(head=fastnn.Softmax, dtype="float64"), _net(dtype="float64")
    for net in (with_layer, without):
        net.fit(X, y, epochs=1, batch_size=20, loss="cross_entropy", lr=0.3)
    # the same seed and the folded Softmax: the same training, the same probabilities
    P = with_layer.predict_proba(X_test)
    np.testing.assert_allclose(P, without.predict_proba(X_test), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(with_layer(X_test)), P, rtol=1e-12)  # forward already has it
    assert not np.allclose(P, _softmax(P))


def test_mse_outputs_are_returned_as_they_are(data):
    X, y, X_test, _ = data
    net = _net(head=fastnn.Sigmoid, dtype="float64")
    net.fit(X, y, epochs=1, batch_size=20, loss="mse", lr=3.0)
    np.testing.assert_array_equal(net.predict_proba(X_test), np.asarray(net(X_test)))


def test_untrained_model_predicts_its_raw_output(data):
    _, _, X_test, _ = data
    net = _net(head=fastnn.Softmax)
    np.testing.assert_array_equal(net.predict_proba(X_test), np.asarray(net(X_test)))
    assert net.predict(X_test).shape == (len(X_test),)


@pytest.mark.parametrize("head", [None, fastnn.Sigmoid], ids=["logit", "sigmoid_layer"])
def test_one_output_binary_model(backend_name, head):
    X, c = blobs(n=300, n_classes=2, seed=4, spread=3.0)
    layers = [fastnn.Dense(20, 8), fastnn.Tanh(), fastnn.Dense(8, 1)] + ([head()] if head else [])
    net = fastnn.Sequential(*layers, backend=backend_name, seed=0, dtype="float64")
    history = net.fit(X[:200], c[:200], epochs=5, batch_size=10, loss="binary_cross_entropy", lr=0.5)
    assert history["loss"][-1] < history["loss"][0]
    P = net.predict_proba(X[200:])
    assert P.shape == (100, 1) and np.all((P > 0) & (P < 1))
    raw = net.backend.to_numpy(net(X[200:]))
    np.testing.assert_allclose(P, raw if head else 1 / (1 + np.exp(-raw)), rtol=1e-12)
    np.testing.assert_array_equal(net.predict(X[200:]), (P[:, 0] > 0.5).astype(np.int64))
    scores = net.evaluate(X[200:], c[200:])
    assert scores["accuracy"] == np.mean(net.predict(X[200:]) == c[200:]) >= BAR


@pytest.mark.parametrize("last_loss", [None, "mse", "binary_cross_entropy"])
@pytest.mark.parametrize("loss", ["mse", "binary_cross_entropy"])
def test_evaluate_accuracy_is_predict_accuracy(last_loss, loss):
    """One sigmoid output: evaluate thresholds what it computed (logits for bce, outputs for mse),
    whatever loss the model last trained with."""
    g = np.random.default_rng(0)
    X = g.standard_normal((200, 3))
    y = (X[:, 0] > 0).astype(int)
    net = fastnn.Sequential(fastnn.Dense(3, 1), fastnn.Sigmoid(), seed=0, dtype="float64")
    layer = net.dense_layers[0]
    layer.W, layer.b = np.array([[1.0], [0.0], [0.0]]), np.array([-0.25])  # logits in (0, 0.5) tell
    if last_loss:
        net.backprop(X, y, loss=last_loss)  # sets the model's loss, changes no weight
    expected = np.mean(net.predict(X) == y)
    assert expected == pytest.approx(np.mean((X[:, 0] - 0.25 > 0) == y))
    assert net.evaluate(X, y, loss=loss)["accuracy"] == expected


# ---- moving, describing ----------------------------------------------------------------
def test_to_moves_parameters_and_optimizer_state(backend_name, data):
    X, y, X_test, _ = data
    net = _net(dtype="float64")
    net.fit(X, y, epochs=1, batch_size=20, loss="cross_entropy", optimizer=fastnn.SGD(0.1, momentum=0.9))
    before, P = _weights(net), net.predict_proba(X_test)
    assert net.to("numpy") is net  # already there: nothing to do
    net.to(backend_name)
    assert net.backend is fastnn.get_backend(backend_name)
    for a, b in zip(before, _weights(net)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(net.predict_proba(X_test), P, rtol=1e-10)
    twin = _net(dtype="float64")
    twin.fit(X, y, epochs=2, batch_size=20, loss="cross_entropy", optimizer=fastnn.SGD(0.1, momentum=0.9))
    net.fit(X, y, epochs=1, batch_size=20)  # momentum carried over: as if never moved
    for a, b in zip(_weights(twin), _weights(net)):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
    net.to("numpy")
    assert type(net.dense_layers[0].W) is np.ndarray


def test_summary(capsys):
    net = _net()
    lines = []
    assert net.summary(print_fn=lines.append) is None
    text = "\n".join(lines)
    print(net.summary())  # a user's print(...) around it: the table once, then what it returns
    assert capsys.readouterr().out == text + "\nNone\n"
    assert "Dense(20, 16" in text and "Sigmoid()" in text and "(B, 16)" in text and "(B, 4)" in text
    assert f"{20 * 16 + 16:,}" in text and f"{16 * 4 + 4:,}" in text
    assert text.splitlines()[-1].split()[-1] == f"{20 * 16 + 16 + 16 * 4 + 4:,}"
    assert "numpy" in text and "float32" in text


def test_verbose_prints_a_line_per_epoch(capsys, data):
    X, y, _, _ = data
    _net().fit(X, y, epochs=2, batch_size=50, loss="cross_entropy", lr=0.1, verbose=1)
    err = capsys.readouterr().err
    assert "epoch   1: loss" in err and "epoch   2: loss" in err


# ---- divergence and Ctrl-C ---------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::fastnn.UnscaledInputWarning")  # unscaled on purpose
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_divergence_raises_and_leaves_finite_weights(backend_name, data):
    X, y, _, _ = data
    X, y = X[:100] * 100, y[:100]
    net = fastnn.Sequential(fastnn.Dense(20, 4), backend=backend_name, seed=0)
    with pytest.raises(fastnn.TrainingDiverged, match=r"epoch 1\b.*batch \d+") as info:
        net.fit(X, y, epochs=3, batch_size=10, loss="mse", lr=1e3, shuffle=False)
    assert isinstance(info.value, FloatingPointError)
    assert "NaN" in str(info.value) or "inf" in str(info.value)
    for p in _weights(net):
        assert np.all(np.isfinite(p))
    assert np.all(np.isfinite(net.predict_proba(X[:5])))
    # stopped before the bad batch's update: the weights of the steps before it, where finite
    bad = int(re.search(r"batch (\d+)", str(info.value)).group(1))
    assert bad >= 2
    good = fastnn.Sequential(fastnn.Dense(20, 4), backend=backend_name, seed=0)
    good.fit(X[:(bad - 1) * 10], y[:(bad - 1) * 10], epochs=1, batch_size=10, loss="mse", lr=1e3, shuffle=False)
    if all(np.all(np.isfinite(p)) for p in _weights(good)):
        for a, b in zip(_weights(good), _weights(net)):
            np.testing.assert_array_equal(b, a)


def _interrupt_on_call(n):
    calls = {"n": 0}

    def maybe_raise():
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
    return maybe_raise


def test_ctrl_c_in_a_batch_keeps_the_last_epoch(data, capsys):
    X, y, _, _ = data
    X, y = X[:40], y[:40]  # 4 batches of 10 an epoch
    reference = _net(seed=9)
    reference.fit(X, y, epochs=1, batch_size=10, loss="cross_entropy", optimizer=fastnn.SGD(0.1, momentum=0.9))
    net = _net(seed=9)
    optimizer = fastnn.SGD(0.1, momentum=0.9)
    real_step, tick = optimizer.step, _interrupt_on_call(6)  # epoch 2, batch 2

    def step(backend, layers):
        tick()
        real_step(backend, layers)
    optimizer.step = step
    history = net.fit(X, y, epochs=3, batch_size=10, loss="cross_entropy", optimizer=optimizer, verbose=1)
    assert history.interrupted and len(history) == 1
    for a, b in zip(_weights(reference), _weights(net)):
        np.testing.assert_array_equal(a, b)
    for key in ("0.W", "1.b"):  # the momentum too
        np.testing.assert_array_equal(np.asarray(optimizer.state[key]["V"]),
                                      np.asarray(reference.optimizer.state[key]["V"]))
    assert "interrupted" in capsys.readouterr().err


def test_ctrl_c_in_a_compiled_epoch_keeps_the_last_epoch(backend_name, data, monkeypatch):
    """A backend that trains whole epochs: interrupted after epoch 2 ran, epoch 2 is rolled back."""
    X, y, _, _ = data
    reference = _net(backend_name, seed=9)
    reference.fit(X, y, epochs=1, batch_size=10, loss="cross_entropy", lr=0.1)
    net = _net(backend_name, seed=9)
    backend = net.backend
    real = type(backend).epoch_trainer
    tick = _interrupt_on_call(2)

    def epoch_trainer(self, model, loss, optimizer):
        trainer = real(self, model, loss, optimizer)
        if trainer is None:
            pytest.skip(f"backend {backend_name!r} trains layer by layer (covered by the test above)")

        def run(*args):
            result = trainer(*args)  # the whole epoch's updates happen...
            tick()                   # ...then Ctrl-C
            return result
        run.describe = trainer.describe
        return run

    monkeypatch.setattr(type(backend), "epoch_trainer", epoch_trainer)
    history = net.fit(X, y, epochs=3, batch_size=10, loss="cross_entropy", lr=0.1)
    assert history.interrupted and len(history) == 1
    for a, b in zip(_weights(reference), _weights(net)):
        np.testing.assert_array_equal(a, b)


# ---- callbacks -------------------------------------------------------------------
def test_a_callback_can_stop_training_and_sees_every_epoch(backend_name):
    X, y = blobs(n=200)
    seen = []

    class StopAfterTwo(fastnn.Callback):
        def on_train_begin(self, logs=None):
            seen.append("begin")

        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, sorted(logs)))
            if epoch == 2:
                self.model.stop_training = True

        def on_train_end(self, logs=None):
            seen.append(("end", logs["epochs"]))

    net = fastnn.Sequential(fastnn.Dense(20, 8), fastnn.ReLU(), fastnn.Dense(8, 4), backend=backend_name, seed=0)
    calls = []
    history = net.fit(X, y, epochs=10, batch_size=32, lr=0.1, callbacks=[StopAfterTwo()],
                      on_epoch_end=lambda epoch, logs: calls.append(epoch))
    assert len(history) == 2 and calls == [1, 2]  # on_epoch_end runs after the callbacks, as one of them
    assert seen == ["begin", (1, ["accuracy", "loss", "lr", "seconds"]), (2, ["accuracy", "loss", "lr", "seconds"]), ("end", 2)]
    assert len(net.fit(X, y, epochs=3, batch_size=32)) == 3  # the next fit starts afresh


def test_a_callback_changing_the_rate_is_used_from_the_next_epoch(backend_name):
    """lr changed between epochs by a callback == the same rates given to fit epoch by epoch."""
    X, y = blobs(n=200)

    def net():
        return fastnn.Sequential(fastnn.Dense(20, 8), fastnn.ReLU(), fastnn.Dense(8, 4), backend=backend_name,
                                 seed=0, dtype="float64")

    class Halve(fastnn.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.optimizer.lr /= 2

    a = net()
    a.fit(X, y, epochs=3, batch_size=32, optimizer=fastnn.SGD(0.2), callbacks=[Halve()])
    b, optimizer = net(), fastnn.SGD(0.2)
    for _ in range(3):
        b.fit(X, y, epochs=1, batch_size=32, optimizer=optimizer)
        optimizer.lr /= 2
    for da, db in zip(a.dense_layers, b.dense_layers):
        np.testing.assert_allclose(np.asarray(da.W), np.asarray(db.W), rtol=1e-12, atol=1e-12)


def test_callbacks_are_checked():
    net = fastnn.Sequential(fastnn.Dense(2, 2), backend="numpy")
    with pytest.raises(TypeError, match=r"callbacks\[0\] is function, not a fastnn.Callback"):
        net.fit([[0.0, 1.0]], [1], callbacks=[lambda epoch, logs: None])
    with pytest.raises(TypeError, match="on_epoch_end must be callable"):
        net.fit([[0.0, 1.0]], [1], on_epoch_end=3)


# ---- validation_split ------------------------------------------------------------------
def _small_net(backend_name, n_out=4, seed=5):
    return fastnn.Sequential(fastnn.Dense(20, 12), fastnn.Tanh(), fastnn.Dense(12, n_out), backend=backend_name,
                             seed=seed, dtype="float64")


def test_validation_split_holds_out_the_last_rows(backend_name, data):
    X, y = data[0][:203], data[1][:203]
    keep = 162  # floor(203 * 0.8): Keras's rule
    split = _small_net(backend_name).fit(X, y, epochs=3, batch_size=16, lr=0.1, validation_split=0.2)
    given = _small_net(backend_name).fit(X[:keep], y[:keep], epochs=3, batch_size=16, lr=0.1,
                                         validation_data=(X[keep:], y[keep:]))
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(split.history[key], given.history[key], rtol=1e-12, err_msg=key)


def test_validation_split_with_target_rows_and_its_errors(data):
    X, y = data[0][:100], data[1][:100]
    T = np.eye(4)[y]  # one-hot target rows instead of labels
    rows = _small_net("numpy").fit(X, T, epochs=2, batch_size=10, lr=0.1, loss="mse", validation_split=0.3)
    labels = _small_net("numpy").fit(X, y, epochs=2, batch_size=10, lr=0.1, loss="mse", validation_split=0.3)
    np.testing.assert_allclose(rows.history["val_loss"], labels.history["val_loss"], rtol=1e-12)
    given = _small_net("numpy").fit(X, y, epochs=1, batch_size=10, lr=0.1, validation_split=0.5,
                                    validation_data=(X[:10], y[:10]))  # validation_data wins, as in Keras
    assert given.history["accuracy"] and len(given.history["val_loss"]) == 1
    for fraction in (1.0, -0.1, "0.2", True):
        with pytest.raises(ValueError, match="validation_split: expected a fraction"):
            _small_net("numpy").fit(X, y, validation_split=fraction)
    with pytest.raises(ValueError, match="3 rows cannot be split"):
        _small_net("numpy").fit(X[:3], y[:3], validation_split=0.8)  # floor(3 * 0.2): nothing to train on


def test_a_regression_logs_no_training_accuracy_and_a_classification_by_mse_does(capsys):
    X = np.random.default_rng(0).normal(size=(60, 3))
    y = X @ np.array([1.0, 2.0, 3.0])
    net = fastnn.Sequential(fastnn.Dense(3, 8), fastnn.ReLU(), fastnn.Dense(8, 1), backend="numpy")
    history = net.fit(X, y.reshape(-1, 1), epochs=2, loss="mse", verbose=1)
    assert "accuracy" not in history.history and history.best_epoch() is None
    assert "train acc" not in capsys.readouterr().err
    net = fastnn.Sequential(fastnn.Dense(3, 8), fastnn.ReLU(), fastnn.Dense(8, 2), backend="numpy")
    history = net.fit(X, (y > 0).astype(int), epochs=1, loss="mse", verbose=1)  # Nielsen's quadratic cost
    assert 0 <= history.history["accuracy"][0] <= 1 and "train acc" in capsys.readouterr().err


def test_an_optimizer_copies_and_pickles_after_a_fit():
    import copy
    import pickle

    X, y = np.random.default_rng(0).normal(size=(40, 3)), np.arange(40) % 2
    net = fastnn.Sequential(fastnn.Dense(3, 4), fastnn.ReLU(), fastnn.Dense(4, 2), backend="numpy", seed=0)
    opt = fastnn.Adam(lr=0.01)
    net.fit(X, y, epochs=2, optimizer=opt)
    for other in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):  # the layers are not part of a copy
        assert other.t == opt.t and sorted(other.state) == sorted(opt.state)
        np.testing.assert_array_equal(other.state["0.W"]["M"], opt.state["0.W"]["M"])


def test_training_curves_of_a_regression_plot_its_loss_alone(tmp_path):
    pytest.importorskip("matplotlib", reason="fastnn.plots needs matplotlib (pip install 'fastnn[plot]')")
    from fastnn import plots
    X = np.random.default_rng(0).normal(size=(60, 3))
    net = fastnn.Sequential(fastnn.Dense(3, 8), fastnn.ReLU(), fastnn.Dense(8, 1), backend="numpy")
    history = net.fit(X, X.sum(axis=1, keepdims=True), epochs=2, loss="mse", validation_split=0.2)
    plots.training_curves(history, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
