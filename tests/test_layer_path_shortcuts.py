"""The layer path's shortcuts give the numbers of the plain computation, bit for bit: an optimizer
stepping every layer's weights (or biases) as one flat array (``fastnn.param_groups``) against one
``backend.update`` per parameter; the first Dense of a model skipping its input gradient against a
full backward pass."""
import numpy as np
import pytest

import fastnn
from fastnn.backend import Backend
from fastnn.layers import Layer
from conftest import blobs

DENSE_BACKWARD = fastnn.Dense.backward  # Dense's own, before any test patches it

OPTIMIZERS = {
    "sgd": lambda: fastnn.SGD(0.1, weight_decay=1e-3),
    "nesterov": lambda: fastnn.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda: fastnn.Adam(0.01, weight_decay=1e-3),
    "adamw": lambda: fastnn.AdamW(0.01),
    "rmsprop": lambda: fastnn.RMSprop(0.01, momentum=0.5),
}


def _net(dtype="float64", seed=0):
    return fastnn.Sequential(fastnn.Dense(6, 5), fastnn.Tanh(), fastnn.Dense(5, 4), fastnn.ReLU(),
                             fastnn.Dense(4, 3), backend="numpy", seed=seed, dtype=dtype)


def _with_gradients(net, seed):
    g = np.random.default_rng(seed)
    for layer in net.dense_layers:
        layer.dW = g.standard_normal(layer.W.shape).astype(net.dtype)
        layer.db = g.standard_normal(layer.b.shape).astype(net.dtype)


def _step_each_parameter(optimizer, net, state):
    """One step the plain way: ``backend.update`` on each parameter (``state``: this function's own)."""
    rule, backend = optimizer.rule, net.backend
    h = optimizer.step_inputs(optimizer.t + 1 if optimizer.counts_steps else optimizer.t)
    for i, layer in enumerate(net.dense_layers):
        for name, decays in (("W", True), ("b", False)):
            P = getattr(layer, name)
            slots = state.setdefault(f"{i}.{name}", {slot: np.zeros_like(P) for slot in rule.slots})
            backend.update(rule, P, getattr(layer, "d" + name), slots, h if decays else dict(h, weight_decay=0.0))


def _step_both(net, plain, optimizer, reference, state, step):
    """One step of ``optimizer`` on ``net`` (grouped) and of ``reference`` on ``plain``, parameter by
    parameter, from the same gradients."""
    _with_gradients(net, step)
    _with_gradients(plain, step)
    optimizer.step(net.backend, net.dense_layers)
    _step_each_parameter(reference, plain, state)
    reference.t = optimizer.t


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_grouped_steps_are_the_per_parameter_steps(kind, dtype):
    grouped, plain = _net(dtype), _net(dtype)
    optimizer, reference = OPTIMIZERS[kind](), OPTIMIZERS[kind]()
    state = {}
    for step in range(4):
        _step_both(grouped, plain, optimizer, reference, state, step)
        for a, b in zip(grouped.dense_layers, plain.dense_layers):
            np.testing.assert_array_equal(a.W, b.W)
            np.testing.assert_array_equal(a.b, b.b)
    for key, slots in state.items():
        for slot, value in slots.items():
            np.testing.assert_array_equal(optimizer.state[key][slot], value)
    assert set(optimizer.state) == {key for key, slots in state.items() if slots}  # none without slots


def test_an_array_put_in_place_of_a_view_is_stepped_from():
    """``layer.W = ...``, a rolled-back state: the next step starts from the arrays as they are then."""
    net, plain = _net(), _net()
    optimizer, reference = fastnn.Adam(0.01), fastnn.Adam(0.01)
    state = {}
    for step in range(3):
        if step == 1:
            W = np.full(net.dense_layers[1].W.shape, 0.25)
            net.dense_layers[1].W = plain.dense_layers[1].W = W
            optimizer.state["0.b"] = {slot: value.copy() for slot, value in optimizer.state["0.b"].items()}
        if step == 2:
            optimizer.state = {key: {slot: v.copy() for slot, v in entry.items()}
                               for key, entry in optimizer.state.items()}
        _step_both(net, plain, optimizer, reference, state, step)
    for a, b in zip(net.dense_layers, plain.dense_layers):
        np.testing.assert_array_equal(a.W, b.W)
        np.testing.assert_array_equal(a.b, b.b)


def test_a_strict_backend_steps_each_parameter():
    """Arrays that are not NumPy's (here: array-api-strict) are never grouped."""
    xps = pytest.importorskip("array_api_strict", reason="array-api-strict is not installed")
    net = fastnn.Sequential(fastnn.Dense(6, 3), backend=Backend(xp=xps), seed=0, dtype="float64")
    W = net.dense_layers[0].W
    net.dense_layers[0].dW, net.dense_layers[0].db = xps.ones((6, 3), dtype=xps.float64), xps.ones(3, dtype=xps.float64)
    optimizer = fastnn.Adam(0.1)
    optimizer.step(net.backend, net.dense_layers)
    assert net.dense_layers[0].W is W  # updated in place, as before
    assert optimizer._groups == {True: None, False: None}


def test_the_first_dense_skips_only_its_input_gradient():
    layer = fastnn.Dense(6, 4)
    layer.initialize(fastnn.get_backend("numpy"), "float64", np.random.default_rng(0))
    X, dZ = np.random.default_rng(1).standard_normal((5, 6)), np.random.default_rng(2).standard_normal((5, 4))
    layer.forward(X)
    dX = layer.backward(dZ)
    dW, db = layer.dW.copy(), layer.db.copy()
    assert dX.shape == (5, 6)
    assert layer.backward(dZ, input_grad=False) is None
    np.testing.assert_array_equal(layer.dW, dW)
    np.testing.assert_array_equal(layer.db, db)


class Recorder(Layer):
    """A user's layer in front of the first Dense: it is owed its input gradient."""

    def __init__(self):
        self.seen = []

    def forward(self, X):
        return X

    def backward(self, dY):
        self.seen.append(dY)
        return dY


def test_a_users_layer_in_front_still_gets_its_gradient():
    X, y = blobs(n=40, n_features=6, n_classes=3, seed=0)
    recorder = Recorder()
    net = fastnn.Sequential(recorder, fastnn.Dense(6, 4), fastnn.Tanh(), fastnn.Dense(4, 3), backend="numpy",
                            seed=0, dtype="float64")
    net.fit(X, y, epochs=1, batch_size=20, lr=0.1)
    assert len(recorder.seen) == 2 and recorder.seen[0].shape == (20, 6)


def test_training_with_and_without_the_skip_is_the_same(monkeypatch):
    """A whole fit with the skip against one whose first Dense computes dX as every other does."""
    X, y = blobs(n=120, n_features=6, n_classes=3, seed=0)
    fits = []
    for skip in (True, False):
        if not skip:  # a replaced backward is called as it is: with the input gradient
            monkeypatch.setattr(fastnn.Dense, "backward", lambda self, dZ: DENSE_BACKWARD(self, dZ))
        net = fastnn.Sequential(fastnn.Rescale(0.5), fastnn.Dense(6, 8), fastnn.ReLU(), fastnn.Dense(8, 3),
                                backend="numpy", seed=3, dtype="float64")
        fits.append((net, net.fit(X, y, epochs=3, batch_size=16, optimizer=fastnn.Adam(0.01))))
    (a, history_a), (b, history_b) = fits
    assert history_a["loss"] == history_b["loss"]
    for da, db in zip(a.dense_layers, b.dense_layers):
        np.testing.assert_array_equal(da.W, db.W)
        np.testing.assert_array_equal(da.b, db.b)

