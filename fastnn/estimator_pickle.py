"""Pickling a fitted MLP estimator (``MLPClassifier``, ``MLPRegressor``): host arrays and settings,
never backend objects.

A pickle holds the weights, the layer configs, the dtype, the batch generator's
state and the optimizer's state as NumPy arrays, so it loads on any machine,
and the network is rebuilt on the estimator's ``backend`` when it is read.
"""
from __future__ import annotations

from .layers import layer_from_config
from .losses import get_loss
from .model import Sequential
from .optim import optimizer_from_config


def pickled_state(clf):
    """``clf.__dict__`` with the network and optimizer replaced by host copies of their state."""
    state = dict(clf.__dict__)
    net = state.pop("_net", None)
    optimizer = state.pop("_optimizer", None)
    if net is not None:
        state["_weights"] = [(net.backend.to_numpy(d.W).copy(), net.backend.to_numpy(d.b).copy())
                             for d in net.dense_layers]
        state["_layers"] = [layer.config() for layer in net.layers]
        state["_dtype"] = net.dtype
        state["_batch_rng"] = net.batch_rng.bit_generator.state
    if optimizer is not None:
        arrays, counters = optimizer.state_arrays(net.backend)
        state["_optimizer_state"] = (optimizer.config(), arrays, counters)
    return state


def restore_state(clf, state):
    """The inverse of :func:`pickled_state`: the network and optimizer rebuilt on ``clf.backend``."""
    state = dict(state)
    weights = state.pop("_weights", None)
    layers, dtype = state.pop("_layers", None), state.pop("_dtype", None)
    rng_state = state.pop("_batch_rng", None)
    optimizer_state = state.pop("_optimizer_state", None)
    clf.__dict__.update(state)
    if weights is None:
        return
    net = Sequential(*[layer_from_config(c) for c in layers], backend=clf.backend, dtype=dtype)
    for layer, (W, b) in zip(net.dense_layers, weights):
        layer.W, layer.b = W, b
    net.batch_rng.bit_generator.state = rng_state
    net.loss = get_loss(clf._loss)  # predict_proba applies the loss's output activation
    clf._net = net
    if optimizer_state is not None:
        config, arrays, counters = optimizer_state
        clf._optimizer = optimizer_from_config(config)
        clf._optimizer.load_state_arrays(net.backend, arrays, counters, dtype)
