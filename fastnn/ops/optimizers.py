"""The optimizer update rules: each one entry, written once; every path is made from these entries.

An entry names its state slots (arrays shaped like the parameter, zero at the start), the
hyper-parameters its update reads, optional per-step scalars (functions of the hyper-parameters
and the step number ``t``, from 1, computed once per step), and the per-element update
``update(m, w, g, s, h) -> (w, {slot: value})`` where ``s`` holds the slots and ``h`` the
hyper-parameters and per-step scalars. Every rule reads ``lr`` and ``weight_decay``; the callers
pass ``weight_decay`` 0 for biases, so decay applies to weights only, by each rule's own form.

To add one: append an entry, an :class:`fastnn.optim.Optimizer` subclass that picks it, and a
slow formula in ``tests/test_ops.py``. Its code, the position in this table, is the one kernels use.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Every path keeps at most this many state arrays per parameter (the compiled epoch's buffers).
MAX_SLOTS = 2


@dataclass(frozen=True)
class UpdateRule:
    name: str
    slots: tuple
    hyper: tuple  # after "lr", "weight_decay", which every rule reads
    update: Callable[..., Any]
    step_scalars: tuple = ()  # ((name, f(h, t)), ...)

    @property
    def code(self):
        return CODES[self.name]

    @property
    def inputs(self):
        """The hyper-parameters and per-step scalars the update reads, in kernel order."""
        return ("lr", "weight_decay") + self.hyper + tuple(name for name, _ in self.step_scalars)


def _sgd(m, w, g, s, h):
    return w - h["lr"] * (g + h["weight_decay"] * w), {}


def _momentum(m, w, g, s, h):  # PyTorch's: v ← μv + g, w ← w − lr·v
    v = h["momentum"] * s["V"] + (g + h["weight_decay"] * w)
    return w - h["lr"] * v, {"V": v}


def _nesterov(m, w, g, s, h):  # PyTorch's: v ← μv + g, w ← w − lr·(g + μv)
    g = g + h["weight_decay"] * w
    v = h["momentum"] * s["V"] + g
    return w - h["lr"] * (g + h["momentum"] * v), {"V": v}


def _adam_moments(g, s, h):
    M = h["beta1"] * s["M"] + (1 - h["beta1"]) * g
    V = h["beta2"] * s["V"] + (1 - h["beta2"]) * (g * g)
    return M, V


def _adam(m, w, g, s, h):  # L2 in the gradient (PyTorch's Adam)
    M, V = _adam_moments(g + h["weight_decay"] * w, s, h)
    return w - h["lr"] * (M * h["c1"]) / (m.sqrt(V * h["c2"]) + h["eps"]), {"M": M, "V": V}


def _adamw(m, w, g, s, h):  # decoupled decay first, then Adam on g alone (PyTorch's AdamW)
    w = w * (1 - h["lr"] * h["weight_decay"])
    M, V = _adam_moments(g, s, h)
    return w - h["lr"] * (M * h["c1"]) / (m.sqrt(V * h["c2"]) + h["eps"]), {"M": M, "V": V}


def _rmsprop(m, w, g, s, h):  # PyTorch's, not centered: v ← αv + (1−α)g², w ← w − lr·g/(√v + ε)
    g = g + h["weight_decay"] * w
    V = h["alpha"] * s["V"] + (1 - h["alpha"]) * (g * g)
    return w - h["lr"] * g / (m.sqrt(V) + h["eps"]), {"V": V}


def _rmsprop_momentum(m, w, g, s, h):  # ... with momentum: b ← μb + g/(√v + ε), w ← w − lr·b
    g = g + h["weight_decay"] * w
    V = h["alpha"] * s["V"] + (1 - h["alpha"]) * (g * g)
    B = h["momentum"] * s["B"] + g / (m.sqrt(V) + h["eps"])
    return w - h["lr"] * B, {"V": V, "B": B}


_ADAM_SCALARS = (("c1", lambda h, t: 1 / (1 - h["beta1"] ** t)), ("c2", lambda h, t: 1 / (1 - h["beta2"] ** t)))

RULES = (
    UpdateRule("sgd", (), (), _sgd),
    UpdateRule("momentum", ("V",), ("momentum",), _momentum),
    UpdateRule("nesterov", ("V",), ("momentum",), _nesterov),
    UpdateRule("adam", ("M", "V"), ("beta1", "beta2", "eps"), _adam, _ADAM_SCALARS),
    UpdateRule("adamw", ("M", "V"), ("beta1", "beta2", "eps"), _adamw, _ADAM_SCALARS),
    UpdateRule("rmsprop", ("V",), ("alpha", "eps"), _rmsprop),
    UpdateRule("rmsprop_momentum", ("V", "B"), ("alpha", "eps", "momentum"), _rmsprop_momentum),
)
BY_NAME = {rule.name: rule for rule in RULES}
CODES = {rule.name: code for code, rule in enumerate(RULES)}
assert all(len(rule.slots) <= MAX_SLOTS for rule in RULES)
#: The most hyper-parameters and per-step scalars a rule reads (the kernels' row of them).
MAX_INPUTS = max(len(rule.inputs) for rule in RULES)
