"""Every entry computes the same training as the NumPy float64 reference (not a benchmark).

A benchmark is only fair if everyone does the same work: same loss scaling, same
update, the last partial batch kept. From the shared initial weights, a few
steps and a short epoch (25 samples, batch 10: batches of 10, 10, 5) must land on
the float64 reference's weights. Run it with ``pytest bench -k agree`` (``bench.run``
does it first); under ``--benchmark-only`` it is skipped.
"""
import copy

import numpy as np
import pytest

from . import entries
from .peer_numpy import Trainer as Reference
from .workloads import NETS, batches, initial_params, mnist_like

N, BATCH = 25, 10
TRAINERS = [entry for entry in entries.EPOCH if entry.variant != "1t"]  # threads change no result


def _reference(net, order):
    X, labels = mnist_like(N)
    params64 = [p.astype(np.float64) for p in initial_params(net)]
    reference = Reference(net, params64, X.astype(np.float64), labels, BATCH)
    reference.epoch(order)
    return reference.weights()


def _start(net_name, entry):
    """The net, the small data set and the entry's trainer from the shared initial weights."""
    entries.require(entry)
    net = NETS[net_name]
    X, labels = mnist_like(N)
    return net, X, labels, entries.trainer(entry, net, initial_params(net), X, labels, BATCH)


def _assert_close(got, expected, what):
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g.dtype == np.float32, f"{what}: parameter {i} is {g.dtype}, not float32"
        scale = max(1.0, float(np.abs(e).max()))
        err = float(np.abs(g.astype(np.float64) - e).max()) / scale
        assert err < 2e-5, f"{what}: parameter {i} is off the float64 reference by {err:.2e}"


@pytest.mark.parametrize("entry", entries.params(TRAINERS))
@pytest.mark.parametrize("net_name", sorted(NETS))
def test_steps_agree(net_name, entry):
    """``make_step`` over the batches of one fixed order (the timed step of test_sgd)."""
    net, X, labels, trainer = _start(net_name, entry)
    order = np.random.default_rng(7).permutation(N)
    for idx in batches(order, BATCH):
        trainer.make_step(X[idx], labels[idx])()
    _assert_close(trainer.weights(), _reference(net, order), f"{entry.id} steps on {net_name}")


@pytest.mark.parametrize("entry", entries.params(TRAINERS))
@pytest.mark.parametrize("net_name", sorted(NETS))
def test_epoch_agrees(net_name, entry):
    """One epoch as timed in test_sgd, the last partial batch included."""
    net, _, _, trainer = _start(net_name, entry)
    if entry.impl.startswith("fastnn-"):
        # fit draws its permutation from the model's generator: peek at the same draw
        order = copy.deepcopy(trainer.model.batch_rng).permutation(N)
        trainer.epoch()
        if entry.impl == "fastnn-numba" and trainer.path.startswith("layer by layer"):
            pytest.skip("fastnn-numba: no compiled epoch for this model yet (runs layer by layer)")
    else:
        order = np.random.default_rng(7).permutation(N)
        trainer.epoch(order)
    _assert_close(trainer.weights(), _reference(net, order), f"{entry.id} epoch on {net_name}")
