"""Inputs that look unscaled (0-255 pixels, raw measurements) get one UnscaledInputWarning per call.

The check looks at a strided sample of at most 1,000 rows (its root mean square against 10),
so data in [0, 1] and standardized data stay silent, and a large X costs no extra pass.
"""
import warnings

import numpy as np
import pytest

import fastnn
from fastnn import validation
from fastnn.datasets import load_mnist_sample

from conftest import blobs


@pytest.fixture(scope="module")
def sample():
    return load_mnist_sample()


def small_net(n_in=784, backend="numpy"):
    return fastnn.Sequential(fastnn.Dense(n_in, 16), fastnn.ReLU(), fastnn.Dense(16, 10),
                             backend=backend, seed=0)


def scale_warnings(call):
    """The UnscaledInputWarnings ``call()`` raises, each shown (no once-per-place filtering)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [w for w in caught if issubclass(w.category, fastnn.UnscaledInputWarning)]


def test_the_warning_is_exported():
    assert fastnn.UnscaledInputWarning is validation.UnscaledInputWarning
    assert issubclass(fastnn.UnscaledInputWarning, UserWarning)
    assert "UnscaledInputWarning" in fastnn.__all__


@pytest.mark.parametrize("dtype", ["float32", "float64", "uint8"])
def test_0_255_pixels_warn_once_per_call_and_say_divide_by_255(sample, dtype):
    X = np.round(sample.X_train[:300] * 255).astype(dtype)
    y = sample.y_train[:300]
    net = small_net()
    for call in (lambda: net.fit(X, y, epochs=2, batch_size=50, lr=0.01),
                 lambda: net.evaluate(X, y), lambda: net.predict(X), lambda: net.predict(X[:1])):
        caught = scale_warnings(call)
        assert len(caught) == 1, [str(w.message) for w in caught]
        message = str(caught[0].message)
        assert message.startswith("X: values from 0 to 255 look unscaled") and "divide by 255" in message
        assert caught[0].filename == __file__  # the user's line, not fastnn's


def test_unscaled_validation_data_warns_once_per_fit_not_per_epoch(sample):
    net = small_net()
    caught = scale_warnings(lambda: net.fit(sample.X_train[:200], sample.y_train[:200], epochs=3, lr=0.1,
                                            validation_data=(sample.X_test * 255, sample.y_test)))
    assert [str(w.message).split(":")[0] for w in caught] == ["validation_data X_val"]


def test_other_unscaled_data_is_told_to_standardize():
    X = np.random.default_rng(0).normal(100.0, 1.0, (50, 4))  # e.g. a measurement around 100
    caught = scale_warnings(lambda: small_net(n_in=4).predict(X))
    assert len(caught) == 1 and "Standardize each column" in str(caught[0].message)


def test_scaled_data_is_silent(sample):
    X = sample.X_train
    standardized = (X - X.mean(axis=0)) / (X.std(axis=0) + 1e-8)  # rare pixels reach z ~ 60
    rng = np.random.default_rng(0)
    for data in (X, standardized, rng.standard_normal((2000, 784)), 2 * X - 1, X[:1], standardized[:1],
                 (X > 0.5).astype(np.uint8)):
        assert scale_warnings(lambda: small_net().predict(data)) == []
    X_blobs, y_blobs = blobs(n=300, spread=4.0)  # features with sd 5: not standardized, still fine
    net = small_net(n_in=20)
    assert scale_warnings(lambda: net.fit(X_blobs, y_blobs % 10, epochs=2, lr=0.01)) == []


def test_nan_and_inf_are_refused_without_a_scale_warning(sample, backend_name):
    # the numba backend's compiled epoch checks X for NaN/inf itself, after the scale check
    X = sample.X_train[:100].copy()
    X[3, 7] = np.inf
    net = small_net(backend=backend_name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastnn.UnscaledInputWarning)
        with pytest.raises(ValueError, match="NaN or inf"):
            net.fit(X, sample.y_train[:100], epochs=1, lr=0.1)


def test_the_check_reads_a_sample_not_the_whole_array():
    # 10 million rows as a broadcast view (no memory behind it): a full pass would need 63 GB
    # of float64 and minutes; the check reads 1,000 rows.
    row = np.full((1, 784), 200.0, dtype=np.float32)
    huge = np.broadcast_to(row, (10_000_000, 784))
    caught = scale_warnings(lambda: validation.warn_if_unscaled(huge, "X"))
    assert len(caught) == 1 and "in 1,000 sampled rows" in str(caught[0].message)


def test_arrays_on_another_backend_are_checked_where_they_live(sample):
    xps = pytest.importorskip("array_api_strict", reason="array-api-strict is not installed")
    net = small_net(backend=fastnn.Backend(xp=xps))
    X = xps.asarray(sample.X_test[:20] * 255)
    caught = scale_warnings(lambda: net.predict(X))
    assert len(caught) == 1 and "divide by 255" in str(caught[0].message)
    assert scale_warnings(lambda: net.predict(xps.asarray(sample.X_test[:20]))) == []
