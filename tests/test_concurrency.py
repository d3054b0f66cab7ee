"""One model, two threads: a second fit or backprop while one runs is refused at once with a
RuntimeError (it would lose or mix updates); the model is free again however the first ends.
"""
import threading

import numpy as np
import pytest

import fastnn
from conftest import blobs


def _net(backend_name):
    return fastnn.Sequential(fastnn.Dense(20, 8), fastnn.ReLU(), fastnn.Dense(8, 4), backend=backend_name, seed=0)


class _Held:
    """A fit in another thread, held inside its first epoch's callback until ``release()``."""

    def __init__(self, net, X, y, raise_in_callback=None):
        self.inside, self.go_on, self.error = threading.Event(), threading.Event(), None

        def on_epoch_end(epoch, logs):
            self.inside.set()
            assert self.go_on.wait(30)
            if raise_in_callback is not None:
                raise raise_in_callback

        def run():
            try:
                net.fit(X, y, epochs=2, batch_size=16, lr=0.05, on_epoch_end=on_epoch_end)
            except BaseException as exc:  # looked at by the test
                self.error = exc
        self.thread = threading.Thread(target=run, name="trainer-A")
        self.thread.start()
        assert self.inside.wait(60), "the first fit never reached its callback"

    def release(self):
        self.go_on.set()
        self.thread.join(60)
        assert not self.thread.is_alive()


def test_a_second_fit_or_backprop_from_another_thread_is_refused(backend_name):
    X, y = blobs(n=64)
    net = _net(backend_name)
    held = _Held(net, X, y)
    try:
        weights = [np.array(net.backend.to_numpy(d.W)) for d in net.dense_layers]
        with pytest.raises(RuntimeError, match=r"fit: this model \(Sequential\(.*\)\) is being trained by another "
                                               r"thread \(trainer-A\)"):
            net.fit(X, y, epochs=1, lr=0.05)
        with pytest.raises(RuntimeError, match=r"backprop: this model .* is being trained by another thread"):
            net.backprop(X[:4], y[:4], loss="cross_entropy")
        for before, layer in zip(weights, net.dense_layers):  # the refused calls touched nothing
            np.testing.assert_array_equal(before, net.backend.to_numpy(layer.W))
    finally:
        held.release()
    assert held.error is None
    net.fit(X, y, epochs=1, lr=0.05)  # free again once the first has ended


def test_other_models_train_side_by_side(backend_name):
    X, y = blobs(n=64)
    held = _Held(_net(backend_name), X, y)
    try:
        _net(backend_name).fit(X, y, epochs=1, lr=0.05)
    finally:
        held.release()
    assert held.error is None


@pytest.mark.parametrize("exception", [KeyboardInterrupt(), ValueError("from a callback")], ids=["ctrl-c", "error"])
def test_the_model_is_free_again_however_the_fit_ended(backend_name, exception):
    X, y = blobs(n=64)
    net = _net(backend_name)
    held = _Held(net, X, y, raise_in_callback=exception)
    held.release()
    assert type(held.error) is type(exception)
    net.fit(X, y, epochs=1, lr=0.05)


def test_the_training_thread_may_call_backprop_from_a_callback(backend_name):
    X, y = blobs(n=64)
    net = _net(backend_name)
    losses = []
    net.fit(X, y, epochs=2, batch_size=16, lr=0.05,
            on_epoch_end=lambda epoch, logs: losses.append(net.backprop(X[:8], y[:8], loss="cross_entropy")))
    assert len(losses) == 2 and all(np.isfinite(losses))
