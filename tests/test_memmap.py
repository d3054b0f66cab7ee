"""Data larger than memory: a uint8 (or float) np.memmap trains, evaluates and predicts with its
rows converted a batch at a time, under a Rescale input layer, on every backend and in the compiled
epoch; never converted whole."""
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import fastnn


def _pixels(tmp_path, rows=530, cols=20, seed=0):
    X = (np.random.default_rng(seed).random((rows, cols)) * 255).astype(np.uint8)
    path = tmp_path / "pixels.npy"
    np.save(path, X)
    return X, np.load(path, mmap_mode="r")


def _net(backend, n_in=20, dropout=False, dtype="float64"):
    layers = [fastnn.Rescale(1 / 255), fastnn.Dense(n_in, 16), fastnn.ReLU()]
    layers += [fastnn.Dropout(0.3)] if dropout else []
    return fastnn.Sequential(*layers, fastnn.Dense(16, 3), backend=backend, seed=0, dtype=dtype)


def test_rescale_layer():
    layer = fastnn.Rescale(0.5)
    net = fastnn.Sequential(layer, fastnn.Dense(2, 1), backend="numpy", dtype="float64")
    X = np.array([[2, 4], [6, 8]], dtype=np.uint8)
    np.testing.assert_array_equal(layer.forward(net.backend.asarray(X)), [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(layer.backward(np.ones((2, 2))), np.full((2, 2), 0.5))
    assert fastnn.gradcheck(net, X.astype(np.float64), np.array([[1.0], [0.0]])) < 1e-6
    for bad in (0, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="Rescale: factor must be a finite number other than 0"):
            fastnn.Rescale(bad)


def test_rescale_silences_the_unscaled_input_warning(tmp_path):
    X, _ = _pixels(tmp_path)
    y = np.arange(len(X)) % 3
    with pytest.warns(fastnn.UnscaledInputWarning, match="divide by 255"):
        fastnn.Sequential(fastnn.Dense(20, 3), backend="numpy").fit(X, y, epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastnn.UnscaledInputWarning)
        net = _net("numpy")
        net.fit(X, y, epochs=1)
        net.predict(X)


@pytest.mark.parametrize("dropout", [False, True])
def test_a_memmap_trains_as_the_array_it_holds(backend_name, dropout, tmp_path, monkeypatch):
    if backend_name == "numba":  # staged in parts of 100 rows: several per epoch, a short last one
        from fastnn.backends.numba import epoch as numba_epoch
        monkeypatch.setattr(numba_epoch, "STAGE_ROWS", 100)
    X, mapped = _pixels(tmp_path)
    y = np.random.default_rng(1).integers(0, 3, len(X))
    reference = _net("numpy", dropout=dropout)
    want = reference.fit(X, y, epochs=3, batch_size=32, optimizer=fastnn.Adam(0.01))
    for data in (mapped, X):
        net = _net(backend_name, dropout=dropout)
        got = net.fit(data, y, epochs=3, batch_size=32, optimizer=fastnn.Adam(0.01))
        if backend_name == "numba":
            assert got.path.startswith("compiled whole epoch"), got.path
        np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-12)
        for a, b in zip(net.dense_layers, reference.dense_layers):
            np.testing.assert_allclose(net.backend.to_numpy(a.W), b.W, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(net.predict_proba(data), reference.predict_proba(X), rtol=1e-10)
        assert net.evaluate(data, y) == pytest.approx(reference.evaluate(X, y), rel=1e-10)


def test_a_float_memmap_without_rescale(tmp_path):
    X = np.random.default_rng(2).standard_normal((300, 20))
    np.save(tmp_path / "x.npy", X)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    y = np.arange(300) % 3
    a = fastnn.Sequential(fastnn.Dense(20, 8), fastnn.Tanh(), fastnn.Dense(8, 3), backend="numpy", seed=3)
    b = fastnn.Sequential(fastnn.Dense(20, 8), fastnn.Tanh(), fastnn.Dense(8, 3), backend="numpy", seed=3)
    np.testing.assert_array_equal(a.fit(mapped, y, epochs=2)["loss"], b.fit(X, y, epochs=2)["loss"])
    np.testing.assert_array_equal(a.predict_proba(mapped), b.predict_proba(X))


def test_a_saved_model_keeps_its_rescale(tmp_path):
    net = _net("numpy")
    net.save(tmp_path / "m.npz")
    back = fastnn.load(tmp_path / "m.npz")
    assert repr(back.layers[0]) == repr(net.layers[0]) and back.input_scale == 1 / 255


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_training_on_a_memmap_does_not_grow_memory_by_a_float_copy(backend, tmp_path):
    """60,000 x 784 uint8 rows (47 MB on disk; 188 MB as float32): after a warm-up fit, a whole
    epoch grows the process's anonymous memory by much less than the float32 copy would."""
    if backend == "numba":
        pytest.importorskip("numba", reason="numba is not installed")
    path = tmp_path / "mnist-sized.npy"
    mapped = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(60_000, 784))
    for start in range(0, 60_000, 10_000):
        mapped[start:start + 10_000] = np.random.default_rng(start).integers(0, 256, (10_000, 784), dtype=np.uint8)
    mapped.flush()
    del mapped
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import numpy as np, fastnn
        def anon():  # resident anonymous memory, bytes (Linux)
            return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("RssAnon:"))
        X = np.load({str(path)!r}, mmap_mode="r")
        y = np.arange(X.shape[0]) % 10
        net = fastnn.Sequential(fastnn.Rescale(1 / 255), fastnn.Dense(784, 32), fastnn.ReLU(),
                                fastnn.Dense(32, 10), backend={backend!r}, seed=0)
        net.fit(X[:2000], y[:2000], epochs=1, batch_size=128, lr=0.1)  # warm-up: kernels, buffers
        before = anon()
        path = net.fit(X, y, epochs=1, batch_size=128, lr=0.1).path
        after_fit = anon()
        net.predict(X), net.evaluate(X, y)
        print(path.split(" (")[0], (after_fit - before) / 2**20, (anon() - after_fit) / 2**20)
        """)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    path, fit_mb, use_mb = out.stdout.split("\n")[0].rsplit(" ", 2)
    assert path == ("compiled whole epoch" if backend == "numba" else "layer by layer")
    assert float(fit_mb) < 40, out.stdout  # the float32 copy: 188 MB
    assert float(use_mb) < 80, out.stdout  # predict and evaluate convert a block of rows at a time
