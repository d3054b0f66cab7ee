"""Dropout: inverted dropout whose masks are a hash of (seed, epoch counter, layer, row index in X,
unit): the same on every backend, independent of batching, continued by a resumed fit."""
import numpy as np
import pytest

import fastnn
from fastnn.ops import dropout

from conftest import blobs


class Spy(fastnn.Dropout):
    """A Dropout that records the mask of every training row it saw: {(epoch, row): mask row}."""

    def __init__(self, p):
        super().__init__(p)
        self.seen, self.epoch = {}, 0

    def forward(self, X):
        Y = super().forward(X)
        if self.batch is not None:
            rows = np.asarray(self._bound().to_numpy(self.batch[1]))
            M = self._bound().to_numpy(self.M)
            for r, m in zip(rows, M):
                self.seen[(self.epoch, int(r))] = m.copy()
        return Y


def _net(backend="numpy", p=0.4, seed=7, spy=False, dtype="float64"):
    drop = Spy(p) if spy else fastnn.Dropout(p)
    net = fastnn.Sequential(fastnn.Dense(20, 16), fastnn.ReLU(), drop, fastnn.Dense(16, 4), backend=backend,
                            seed=seed, dtype=dtype)
    return net, drop


def _fit_epochs(net, drop, X, y, epochs, **kw):
    for e in range(epochs):
        drop.epoch = e
        net.fit(X, y, epochs=1, **kw)


def test_the_mask_op():
    base = dropout.layer_base(123, 4, 2)
    M = dropout.mask(np, base, np.arange(5000), 64, 0.25, np.float32)
    assert M.dtype == np.float32 and set(np.unique(M)) == {0.0, np.float32(1 / 0.75)}
    assert abs((M == 0).mean() - 0.25) < 0.01
    rows = np.array([4999, 3, 3, 17])
    np.testing.assert_array_equal(dropout.mask(np, base, rows, 64, 0.25, np.float32), M[rows])
    other = dropout.mask(np, dropout.layer_base(123, 5, 2), np.arange(5000), 64, 0.25, np.float32)
    assert 0.3 < (other != M).mean() < 0.45  # another epoch: independent masks (2·p·(1-p) = 0.375 differ)
    assert not dropout.mask(np, base, rows, 64, 0.0, np.float64).min() == 0  # p = 0 keeps all


def test_masks_follow_the_row_not_the_batch():
    X, y = blobs(n=150, n_features=20)
    seen = []
    for batch_size, shuffle in ((7, True), (50, True), (150, False)):
        net, drop = _net(spy=True)
        _fit_epochs(net, drop, X, y, 2, batch_size=batch_size, lr=0.1, shuffle=shuffle)
        seen.append(drop.seen)
    assert len(seen[0]) == 2 * 150
    for other in seen[1:]:
        assert other.keys() == seen[0].keys()
        for key, mask in seen[0].items():
            np.testing.assert_array_equal(other[key], mask, err_msg=str(key))
    assert any(not np.array_equal(seen[0][(0, r)], seen[0][(1, r)]) for r in range(150))  # epochs differ


def test_every_backend_gives_the_numpy_numbers(backend_name):
    X, y = blobs(n=120, n_features=20)
    reference, _ = _net("numpy")
    tested, _ = _net(backend_name)
    want = reference.fit(X, y, epochs=3, batch_size=16, lr=0.1)
    got = tested.fit(X, y, epochs=3, batch_size=16, lr=0.1)
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-10)
    for a, b in zip(tested.dense_layers, reference.dense_layers):
        np.testing.assert_allclose(tested.backend.to_numpy(a.W), b.W, rtol=1e-9, atol=1e-12)
    assert tested.epochs_trained == reference.epochs_trained == 3


def test_off_outside_training_and_the_gradient():
    X, y = blobs(n=30, n_features=20)
    net, drop = _net(p=0.5)
    plain = fastnn.Sequential(fastnn.Dense(20, 16), fastnn.ReLU(), fastnn.Dense(16, 4), seed=7, dtype="float64")
    net.fit(X, y, epochs=2, batch_size=8, lr=0.1)
    for a, b in zip(plain.dense_layers, net.dense_layers):
        a.W, a.b = b.W, b.b
    plain.loss = net.loss
    np.testing.assert_array_equal(net.predict_proba(X), plain.predict_proba(X))  # identity at inference
    assert net.evaluate(X, y) == pytest.approx(plain.evaluate(X, y), rel=1e-12)
    assert drop.batch is None and drop.M is None
    assert fastnn.gradcheck(net, X[:6], y[:6], loss="cross_entropy") < 1e-6  # with the masks of training
    value = net.backprop(X[:6], y[:6], loss="cross_entropy")
    assert value != pytest.approx(float(plain.backprop(X[:6], y[:6], loss="cross_entropy")), rel=1e-9)


def test_a_resumed_fit_continues_the_masks(tmp_path):
    X, y = blobs(n=90, n_features=20)
    first, _ = _net(seed=None)
    path = tmp_path / "ckpt.npz"
    first.fit(X, y, epochs=2, batch_size=10, lr=0.1, checkpoint=path)
    resumed, _ = _net(seed=None)  # another key: the checkpoint's must win
    assert resumed.dropout_key != first.dropout_key
    resumed.fit(X, y, epochs=4, batch_size=10, lr=0.1, checkpoint=path, resume=True)
    first.fit(X, y, epochs=2, batch_size=10, lr=0.1)  # the same two epochs more, uninterrupted
    assert resumed.epochs_trained == first.epochs_trained == 4
    for a, b in zip(resumed.dense_layers, first.dense_layers):
        np.testing.assert_array_equal(a.W, b.W)


def test_settings_and_files(tmp_path):
    with pytest.raises(ValueError, match=r"Dropout: p must be a probability in \[0, 1\)"):
        fastnn.Dropout(1.0)
    with pytest.raises(ValueError, match="probability"):
        fastnn.Dropout(True)
    net, _ = _net(p=0.3, dtype="float32")
    X, y = blobs(n=40, n_features=20)
    net.fit(X, y, epochs=1, batch_size=8, lr=0.1)
    net.save(tmp_path / "m.npz")
    back = fastnn.load(tmp_path / "m.npz")
    assert repr(back.layers[2]) == "Dropout(p=0.3)"
    np.testing.assert_array_equal(back.predict_proba(X), net.predict_proba(X))


# ---- the compiled numba epoch applies the same masks ----------------------------------
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("act", [fastnn.ReLU, fastnn.Sigmoid, fastnn.GELU])  # derivative from Y, Y, Z
def test_the_compiled_epoch_gives_the_reference_numbers(act, threads, monkeypatch):
    pytest.importorskip("numba", reason="numba is not installed")
    from fastnn.backends.numba import epoch as numba_epoch
    monkeypatch.setattr(numba_epoch, "EPOCH_WORK_FACTOR", 0)  # two threads even for this small job
    monkeypatch.setattr(numba_epoch, "WORK_PER_THREAD", 1)
    X, y = blobs(n=130, n_features=12, n_classes=3)

    def trained(backend):
        net = fastnn.Sequential(fastnn.Dense(12, 16), act(), fastnn.Dropout(0.3), fastnn.Dense(16, 9), fastnn.Tanh(),
                                fastnn.Dropout(0.5), fastnn.Dense(9, 3), backend=backend, seed=4, dtype="float64")
        history = net.fit(X, y, epochs=3, batch_size=16, optimizer=fastnn.Adam(0.01))
        net.fit(X, y, epochs=1, batch_size=16)  # a second fit: the epoch counter goes on
        return net, history

    reference, _ = trained("numpy")
    compiled, history = trained(fastnn.get_backend("numba", num_threads=threads))
    assert history.path.startswith("compiled whole epoch") and f"{threads} thread" in history.path
    for a, b in zip(compiled.dense_layers, reference.dense_layers):
        np.testing.assert_allclose(a.W, b.W, rtol=1e-11, atol=1e-13)


def test_dropout_after_the_output_layer_trains_layer_by_layer():
    pytest.importorskip("numba", reason="numba is not installed")
    X, y = blobs(n=40, n_features=20)
    net = fastnn.Sequential(fastnn.Dense(20, 4), fastnn.Dropout(0.2), backend="numba", seed=1)
    history = net.fit(X, y, epochs=1, batch_size=8, lr=0.1, loss="mse")
    assert history.path.startswith("layer by layer") and "after the output layer" in history.path
