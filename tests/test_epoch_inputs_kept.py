"""The compiled epoch keeps its read-only views of X, T and labels between calls with the same
arrays (every epoch of a fit), and never a stale conversion or a view of arrays passed before."""
import numpy as np
import pytest

pytest.importorskip("numba", reason="the compiled epoch needs numba (pip install 'fastnn[numba]')")

from fastnn.backends.numba import epoch as numba_epoch  # noqa: E402
from fastnn.backends.numpy_backend import NumpyBackend  # noqa: E402
from fastnn.layers import Dense, ReLU  # noqa: E402
from fastnn.losses import CrossEntropy  # noqa: E402
from fastnn.model import Sequential  # noqa: E402
from fastnn.optim import SGD  # noqa: E402


def _trainer():
    net = Sequential(Dense(4, 5), ReLU(), Dense(5, 3), backend=NumpyBackend(), seed=0, dtype="float64")
    trainer = numba_epoch.make_epoch_trainer(net.backend, net, CrossEntropy(), SGD(0.1))
    if trainer is None:
        pytest.skip("the compiled epoch did not build here")
    return trainer


def _inputs(n=6, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n).astype(np.int64)
    return rng.normal(size=(n, 4)), np.eye(3)[labels], labels, np.arange(n)


def test_the_same_arrays_give_the_same_views():
    trainer = _trainer()
    X, T, labels, order = _inputs()
    first = trainer._checked(X, T, labels, order)
    again = trainer._checked(X, T, labels, order[::-1])
    assert all(a is b for a, b in zip(first[:3], again[:3]))
    assert not any(view.flags.writeable for view in again[:4])
    assert np.array_equal(again[3], order[::-1])  # the order is every call's own


def test_other_arrays_and_conversions_are_read_again():
    trainer = _trainer()
    X, T, labels, order = _inputs()
    trainer._checked(X, T, labels, order)
    T2 = T[::-1].copy()
    assert np.shares_memory(trainer._checked(X, T2, labels, order)[1], T2)
    T32 = T.astype(np.float32)  # converted to float64: a copy, made at every call
    trainer._checked(X, T32, labels, order)
    T32[0] = [0.0, 0.0, 7.0]
    assert trainer._checked(X, T32, labels, order)[1][0, 2] == 7.0


def test_bad_shapes_and_orders_are_refused_with_kept_views():
    trainer = _trainer()
    X, T, labels, order = _inputs()
    trainer._checked(X, T, labels, order)
    with pytest.raises(ValueError, match="order must index the rows of X"):
        trainer._checked(X, T, labels, order + 1)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        trainer._checked(X, T, labels, order[:-1])
    with pytest.raises(ValueError, match="inconsistent shapes"):
        trainer._checked(X, T[:-1], labels, order)
