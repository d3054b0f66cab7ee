"""Backends reach the model only through fastnn.trainer: no private name of the model or its
layers appears in a backend's source, and both compiled trainers are Trainers."""
import pathlib
import re

import pytest

import fastnn
from fastnn.trainer import Trainer, plain_stack

PRIVATE = re.compile(r"\bnet\._|\blayer\._|\._W\b|\._b\b|_training_layers|_epoch_layers|_forward_backward")


def test_no_backend_uses_the_models_private_names():
    import fastnn.backends
    folder = pathlib.Path(fastnn.backends.__file__).parent
    sources = sorted(folder.rglob("*.py"))
    assert len(sources) > 10
    found = [f"{path.relative_to(folder)}:{n}: {line.strip()}" for path in sources
             for n, line in enumerate(path.read_text().splitlines(), 1) if PRIVATE.search(line)]
    assert not found, "\n".join(found)


def test_the_compiled_trainers_are_trainers():
    pytest.importorskip("numba", reason="numba is not installed")
    from fastnn.backends.numba.epoch import EpochTrainer
    assert issubclass(EpochTrainer, Trainer) and EpochTrainer.checks_finite_x
    net = fastnn.Sequential(fastnn.Dense(3, 4), fastnn.ReLU(), fastnn.Dense(4, 2), backend="numba")
    trainer, path = net.backend.training_plan(net, fastnn.get_loss("cross_entropy"), fastnn.SGD(0.1), 1000, 5, 10)
    assert isinstance(trainer, Trainer) and path == trainer.describe(10, 1000)


def test_plain_stack_says_what_it_cannot_take():
    net = fastnn.Sequential(fastnn.Dense(3, 4), fastnn.Tanh(), fastnn.Dropout(0.5), fastnn.Dense(4, 2))
    with pytest.raises(ValueError, match=r"Dropout\(p=0.5\)"):
        plain_stack(net, fastnn.get_loss("mse"))
    assert plain_stack(fastnn.Sequential(fastnn.Dense(3, 4), fastnn.Tanh(), fastnn.Dense(4, 2)),
                       fastnn.get_loss("mse")) == ([3, 4, 2], [("tanh", ()), ("identity", ())])
