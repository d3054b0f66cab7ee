"""The reference path on ``array_api_strict``: the model side uses the array API standard only.

``array_api_strict`` refuses everything outside the standard (NumPy methods,
implicit dtype mixing, ``np.`` functions on its arrays), so a model that trains
on ``Backend(xp=array_api_strict)`` and gives the numpy backend's numbers proves
that layers, losses, optimizers and ``Sequential`` stay inside the standard.
"""
import numpy as np
import pytest

import fastnn
from conftest import blobs

xps = pytest.importorskip("array_api_strict", reason="array-api-strict is not installed (pip install 'fastnn[dev]')")

TOL = {"float32": 1e-5, "float64": 1e-12}
LOSSES = {
    # loss -> (output layer or None, lr)
    "mse": (fastnn.Sigmoid, 2.0),
    "cross_entropy": (None, 0.2),
    "cross_entropy+softmax": (fastnn.Softmax, 0.2),
    "binary_cross_entropy": (fastnn.Sigmoid, 0.2),
}
OPTIMIZERS = {
    "sgd": lambda lr: fastnn.SGD(lr),
    "sgd_momentum": lambda lr: fastnn.SGD(lr / 4, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda lr: fastnn.Adam(0.01, weight_decay=1e-3),
}


@pytest.fixture(scope="module")
def strict():
    return fastnn.Backend(xp=xps)


def _pair(strict, loss_key, dtype):
    head, _ = LOSSES[loss_key]
    nets = []
    for backend in ("numpy", strict):
        layers = [fastnn.Dense(20, 8), fastnn.Tanh(), fastnn.Dense(8, 6), fastnn.ReLU(), fastnn.Dense(6, 4)]
        if head is not None:
            layers.append(head())
        nets.append(fastnn.Sequential(*layers, backend=backend, seed=7, dtype=dtype))
    return nets


def _weights(net):
    return [net.backend.to_numpy(p) for d in net.dense_layers for p in (d.W, d.b)]


def _assert_same(a, b, dtype):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=TOL[dtype], atol=TOL[dtype])


def test_the_namespace_is_strict(strict):
    net = fastnn.Sequential(fastnn.Dense(3, 2), backend=strict, seed=0)
    W = net.dense_layers[0].W
    assert type(W).__module__.startswith("array_api_strict")
    with pytest.raises(AttributeError):
        W.ravel()  # not in the standard: strict arrays refuse it


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("loss_key", LOSSES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fit_matches_numpy(strict, loss_key, optimizer, dtype):
    X, y = blobs(n=90, seed=1)
    X_val, y_val = blobs(n=30, seed=2)
    loss = loss_key.split("+")[0]
    results = []
    for net in _pair(strict, loss_key, dtype):
        history = net.fit(X, y, epochs=2, batch_size=16, loss=loss,
                          optimizer=OPTIMIZERS[optimizer](LOSSES[loss_key][1]),
                          validation_data=(X_val, y_val))
        results.append((net, history))
    (ref, h_ref), (got, h_got) = results
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(h_got[key], h_ref[key], rtol=TOL[dtype], atol=TOL[dtype])
    assert h_ref["loss"][1] < h_ref["loss"][0]  # it trained
    _assert_same(_weights(ref), _weights(got), dtype)
    _assert_same([ref.predict_proba(X_val)], [got.predict_proba(X_val)], dtype)
    np.testing.assert_array_equal(got.predict(X_val), ref.predict(X_val))
    scores_ref, scores_got = ref.evaluate(X_val, y_val), got.evaluate(X_val, y_val)
    assert scores_got["accuracy"] == scores_ref["accuracy"]
    np.testing.assert_allclose(scores_got["loss"], scores_ref["loss"], rtol=TOL[dtype])


@pytest.mark.parametrize("loss_key", LOSSES)
def test_backprop_matches_numpy(strict, loss_key):
    X, y = blobs(n=12, seed=3)
    ref, got = _pair(strict, loss_key, "float64")
    loss = loss_key.split("+")[0]
    value_ref, value_got = ref.backprop(X, y, loss=loss), got.backprop(X, y, loss=loss)
    assert isinstance(value_got, float)
    np.testing.assert_allclose(value_got, value_ref, rtol=1e-12)
    grads = lambda net: [net.backend.to_numpy(g) for d in net.dense_layers for g in (d.dW, d.db)]
    _assert_same(grads(ref), grads(got), "float64")


def test_strict_arrays_as_input(strict):
    """X and y already in the strict namespace go through the same checks and give the same numbers."""
    X, y = blobs(n=40, seed=4)
    ref, got = _pair(strict, "cross_entropy", "float64")
    ref.fit(X, y, epochs=1, batch_size=8, loss="cross_entropy", lr=0.1, shuffle=False)
    got.fit(xps.asarray(X), xps.asarray(y), epochs=1, batch_size=8, loss="cross_entropy", lr=0.1,
            shuffle=False)
    _assert_same(_weights(ref), _weights(got), "float64")
    np.testing.assert_array_equal(got.predict(xps.asarray(X)), ref.predict(X))
    bad = xps.asarray(np.full((2, 20), np.nan))
    with pytest.raises(ValueError, match="X: contains NaN"):
        got.predict(bad)


def test_gradcheck_and_move(strict):
    X, y = blobs(n=6, n_features=5, n_classes=3, seed=5)
    net = fastnn.Sequential(fastnn.Dense(5, 4), fastnn.Sigmoid(), fastnn.Dense(4, 3), fastnn.Softmax(),
                            backend=strict, seed=0, dtype="float64")
    assert fastnn.gradcheck(net, X, y, loss="cross_entropy") < 1e-6
    before = net.predict_proba(X)
    net.to("numpy")
    assert isinstance(net.dense_layers[0].W, np.ndarray)
    np.testing.assert_allclose(net.predict_proba(X), before, rtol=1e-12)
    net.to(strict)
    np.testing.assert_allclose(net.predict_proba(X), before, rtol=1e-12)
