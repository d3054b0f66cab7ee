"""Shared fixtures: every backend-parametrized test runs on numpy, numba and cupy.

An unavailable backend is *skipped with its reason* (visible in ``-ra``), never
silently dropped; cupy cases carry the ``gpu`` mark.
"""
import os

# Tests compare the numba backend's own kernels with the reference: they compile them when
# the cache is cold (as plain numba does) instead of training small jobs on the reference ops,
# and start no background compile. Tests of that deferral turn it on where they need it.
os.environ["FASTNN_DEFER_COMPILE"] = "0"
os.environ["FASTNN_BACKGROUND_COMPILE"] = "0"

import json  # noqa: E402
import threading  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fastnn  # noqa: E402

BACKENDS = ("numpy", "numba", "cupy")


def _backend_params():
    return [pytest.param(name, marks=[pytest.mark.gpu] if name == "cupy" else [], id=name)
            for name in BACKENDS]


@pytest.fixture(scope="session")
def backend_status():
    """``fastnn.available_backends()``, asked once per session (it scans entry points and imports)."""
    return fastnn.available_backends()


@pytest.fixture(params=_backend_params())
def backend_name(request, backend_status):
    """The name of a usable backend; skips with the reason when it is not usable here."""
    name = request.param
    available, reason = backend_status.get(name, (False, "not registered"))
    if not available:
        pytest.skip(f"backend {name!r} unavailable: {reason}")
    return name


@pytest.fixture
def backend(backend_name):
    return fastnn.get_backend(backend_name)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def blobs(n=600, n_features=20, n_classes=4, seed=0, spread=1.0):
    """Synthetic Gaussian blobs: a small, learnable classification problem without scikit-learn."""
    g = np.random.default_rng(seed)
    centers = g.standard_normal((n_classes, n_features)) * 3.0
    y = g.integers(0, n_classes, n)
    X = centers[y] + spread * g.standard_normal((n, n_features))
    return X.astype(np.float32), y


def within(seconds, function, *args):
    """``function(*args)`` in a thread that must end within ``seconds``: a hang fails, not blocks, the test."""
    outcome = {}

    def run():
        try:
            outcome["value"] = function(*args)
        except BaseException as exc:  # handed to the test below
            outcome["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{getattr(function, '__name__', function)} still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def model_meta(**changes):
    """A model file's JSON description (a one-layer 2-3 float32 model), as the uint8 member ``save`` writes."""
    meta = {"format": "fastnn-model", "version": 1, "dtype": "float32", "loss": None,
            "layers": [{"type": "Dense", "n_in": 2, "n_out": 3, "init": "glorot_uniform"}]}
    meta.update(changes)
    return np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
