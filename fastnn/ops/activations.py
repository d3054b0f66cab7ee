"""The activations: each one entry, written once; every path is made from these entries.

To add one: append an entry (its forward, its derivative, and whether the derivative reads the
activation's output ``Y`` or its input ``Z``), a layer class in ``fastnn/layers.py`` that names
it, and a slow formula in ``tests/test_ops.py``. The reference backend evaluates the formulas on
arrays; the numba kernels, the compiled epoch and the CUDA kernels are generated from them
(``fastnn.ops.symbolic``). Its code, the position in this table, is the one kernels use.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_GELU_C = math.sqrt(2.0 / math.pi)  # the tanh form of GELU (Hendrycks & Gimpel; PyTorch's approximate="tanh")
_GELU_A = 0.044715


@dataclass(frozen=True)
class ActivationRule:
    """``forward(m, z, *params) -> y``; ``derivative(m, v, *params) -> dy/dz`` where ``v`` is the
    output ``Y`` or the input ``Z`` as ``needs`` says; ``params``: names of float settings."""

    name: str
    forward: Callable[..., Any]
    derivative: Callable[..., Any]
    needs: str = "Y"
    params: tuple = ()

    @property
    def code(self):
        return CODES[self.name]


def _sigmoid(m, z):
    return 1 / (1 + m.exp(-z))


def _gelu(m, z):
    return 0.5 * z * (1 + m.tanh(_GELU_C * (z + _GELU_A * z * z * z)))


def _gelu_derivative(m, z):
    t = m.tanh(_GELU_C * (z + _GELU_A * z * z * z))
    return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _GELU_C * (1 + 3 * _GELU_A * z * z)


def _silu_derivative(m, z):
    s = _sigmoid(m, z)
    return s * (1 + z * (1 - s))


RULES = (
    ActivationRule("identity", lambda m, z: z, lambda m, y: 1.0),
    ActivationRule("sigmoid", _sigmoid, lambda m, y: y * (1 - y)),
    ActivationRule("relu", lambda m, z: m.maximum(z, 0.0), lambda m, y: m.where(y > 0.0, 1.0, 0.0)),
    ActivationRule("tanh", lambda m, z: m.tanh(z), lambda m, y: 1 - y * y),
    ActivationRule("leaky_relu", lambda m, z, alpha: m.where(z > 0.0, z, alpha * z),
                   lambda m, z, alpha: m.where(z > 0.0, 1.0, alpha), needs="Z", params=("alpha",)),
    ActivationRule("gelu", _gelu, _gelu_derivative, needs="Z"),
    ActivationRule("silu", lambda m, z: z * _sigmoid(m, z), _silu_derivative, needs="Z"),
    ActivationRule("softplus", lambda m, z: m.maximum(z, 0.0) + m.log1p(m.exp(-m.abs(z))), _sigmoid, needs="Z"),
)
BY_NAME = {rule.name: rule for rule in RULES}
CODES = {rule.name: code for code, rule in enumerate(RULES)}
#: The most float settings an activation takes (kernels pass this many, unused ones 0).
MAX_PARAMS = max(len(rule.params) for rule in RULES)


def rule(name):
    """The entry of ``name``; ValueError naming the known ones."""
    if name not in BY_NAME:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(BY_NAME)}")
    return BY_NAME[name]
