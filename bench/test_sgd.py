"""Training: one mini-batch SGD step, and one full epoch of 60,000 MNIST-shaped samples.

A = 784-30-10 sigmoid/mse/lr 3.0 at batch 10 and 128; B = 784-128-10
relu/cross_entropy/lr 0.1 at batch 10, 128 and 1024. Every entry starts
from the same weights; epochs reshuffle and keep the last partial batch. The
first epoch (any JIT compile) is a warm-up, timed apart as ``first_call_s``.
"""
import numpy as np
import pytest

from . import entries
from .timing import first_call, measure
from .workloads import DATA_SEED, EPOCH_BUDGET_S, NETS, SGD_CASES, epoch_flops, initial_params, mnist_like

CASES = [pytest.param(case, id=f"{case[0]}-{case[1]}") for case in SGD_CASES]


def _trainer(entry, case):
    net, batch_size = NETS[case[0]], case[1]
    X, labels = mnist_like()
    return net, batch_size, entries.trainer(entry, net, initial_params(net), X, labels, batch_size)


@pytest.mark.benchmark(max_time=0.5)
@pytest.mark.parametrize("entry", entries.params(entries.STEP))
@pytest.mark.parametrize("case", CASES)
def test_step(benchmark, case, entry):
    entries.require(entry)
    net, batch_size, trainer = _trainer(entry, case)
    X, labels = mnist_like()
    fn = trainer.make_step(X[:batch_size], labels[:batch_size])
    measure(benchmark, entry, fn, f"step {net.name} b={batch_size}", suite="step", net=net.name,
            net_desc=net.describe(), batch_size=batch_size, samples=batch_size,
            flops=epoch_flops(net, batch_size))


@pytest.mark.parametrize("entry", entries.params(entries.EPOCH))
@pytest.mark.parametrize("case", CASES)
def test_epoch(benchmark, case, entry, epoch_rounds):
    entries.require(entry)
    net, batch_size, trainer = _trainer(entry, case)
    n = mnist_like()[0].shape[0]
    if entry.impl.startswith("fastnn-"):
        fn = trainer.epoch  # fit draws its own permutation, inside the timing like everyone's
    else:
        rng = np.random.default_rng(DATA_SEED + 1)
        fn = lambda: trainer.epoch(rng.permutation(n))  # noqa: E731
    extra = dict(suite="epoch", net=net.name, net_desc=net.describe(), batch_size=batch_size,
                 samples=n, flops=epoch_flops(net, n))
    with entries.conditions(entry):
        first = first_call(fn)
        if entry.impl.startswith("fastnn-"):
            _check_fit_path(entry, trainer.path)
            extra["path"] = trainer.path
        # a pathologically slow entry still gets timed, in fewer rounds (the suite stays minutes long)
        rounds = max(1, min(epoch_rounds, int(EPOCH_BUDGET_S / first)))
        measure(benchmark, entry, fn, f"epoch {net.name} b={batch_size}", rounds=rounds,
                first_call_s=first, **extra)


def _check_fit_path(entry, path):
    """The numba entries must time the path their name says."""
    layered = path.startswith("layer by layer")
    if entry.impl == "fastnn-numba-layers":
        assert layered, f"get_backend('numba', compiled=False) ran {path!r}, not layer by layer"
    elif entry.impl == "fastnn-numba" and layered:
        pytest.skip("fastnn-numba: fit has no compiled epoch for this model yet (it runs layer by "
                    "layer: that is the fastnn-numba-layers entry)")
