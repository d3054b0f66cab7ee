"""Dense's weight initializers: drawn on the host with NumPy, so every backend starts from the same
numbers. Each takes ``(rng, n_in, n_out)`` and returns ``(W (n_in, n_out), b (n_out,))``."""
from __future__ import annotations

import math
from typing import Literal

import numpy as np

#: The names of Dense's weight initializers (``INITIALIZERS``).
Init = Literal["normal", "lecun_normal", "glorot_uniform", "he_normal"]


def _init_normal(rng, n_in, n_out):
    """N(0, 1) weights *and* biases, as in Nielsen's ``network.py``."""
    return rng.standard_normal((n_in, n_out)), rng.standard_normal(n_out)


def _init_lecun_normal(rng, n_in, n_out):
    """N(0, 1/n_in) weights (Nielsen's ``network2`` default), zero biases."""
    return rng.standard_normal((n_in, n_out)) / math.sqrt(n_in), np.zeros(n_out)


def _init_glorot_uniform(rng, n_in, n_out):
    """U(±√(6/(n_in+n_out))) weights, zero biases."""
    limit = math.sqrt(6.0 / (n_in + n_out))
    return rng.uniform(-limit, limit, (n_in, n_out)), np.zeros(n_out)


def _init_he_normal(rng, n_in, n_out):
    """N(0, 2/n_in) weights (for ReLU), zero biases."""
    return rng.standard_normal((n_in, n_out)) * math.sqrt(2.0 / n_in), np.zeros(n_out)


INITIALIZERS = {
    "normal": _init_normal,
    "lecun_normal": _init_lecun_normal,
    "glorot_uniform": _init_glorot_uniform,
    "he_normal": _init_he_normal,
}
