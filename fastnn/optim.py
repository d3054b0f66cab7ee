"""Optimizers: they update every Dense layer's ``W`` and ``b`` from ``dW``, ``db``.

Weight decay applies to weights, not biases, as in Nielsen's L2 regularisation:
``w ← w − lr·(∇w + weight_decay·w)``.
"""
from __future__ import annotations

import math
import numbers

import numpy as np


def _shown(value, width=60):
    """``repr(value)``, cut to ``width`` characters: a message may quote what a file holds."""
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _number(value):
    """A real number, NumPy scalars included (np.float32(0.1) is a fine lr); not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _positive(name, value, owner):
    if not _number(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}: {name} must be a positive number, got {value!r}")
    return float(value)


def _in_unit(name, value, owner, closed=False):
    ok = _number(value) and (0 <= value <= 1 if closed else 0 <= value < 1)
    if not ok:
        raise ValueError(f"{owner}: {name} must be in [0, 1{']' if closed else ')'}, got {value!r}")
    return float(value)


def _non_negative(name, value, owner):
    if not _number(value) or not value >= 0 or not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be a non-negative number, got {value!r}")
    return float(value)


class Optimizer:
    """Holds per-parameter state (``self.state["0.W"] = {"V": array}``) between steps."""

    kind = ""
    slots = ()  # every state array it may keep per parameter (a checkpoint holds no others)

    def __init__(self):
        self.state = {}

    @staticmethod
    def _params(dense_layers):
        """``(key, layer, "W"|"b", decays)`` for every parameter, in a fixed order."""
        for i, layer in enumerate(dense_layers):
            yield f"{i}.W", layer, "W", True
            yield f"{i}.b", layer, "b", False

    def _slot(self, backend, key, slot, like):
        entry = self.state.setdefault(key, {})
        if slot not in entry:
            entry[slot] = backend.xp.zeros_like(like)
        return entry[slot]

    def step(self, backend, dense_layers):
        raise NotImplementedError

    def config(self):
        raise NotImplementedError

    # ---- checkpoints: host arrays, so a checkpoint loads on any backend ----
    def state_arrays(self, backend):
        arrays = {f"{key}.{slot}": backend.to_numpy(value)
                  for key, entry in self.state.items() for slot, value in entry.items()}
        return arrays, self._counters()

    def load_state_arrays(self, backend, arrays, counters, dtype):
        """Take ``arrays`` (``"0.W.V"`` -> host array) and ``counters`` as this optimizer's state.
        The counters are checked first (see :meth:`checked_counters`); nothing changes on a refusal."""
        counters = self.checked_counters(counters)
        state = {}
        for name, value in arrays.items():
            key, slot = name.rsplit(".", 1)
            state.setdefault(key, {})[slot] = backend.asarray(np.ascontiguousarray(value), dtype=dtype)
        self.state = state
        for name, value in counters.items():
            setattr(self, name, value)

    def _counters(self):
        return {}

    def checked_counters(self, counters):
        """``counters`` if they name exactly this optimizer's counters, each a step count (an
        integer >= 0); else ValueError. A checkpoint restores these and no other attribute."""
        names = sorted(self._counters())
        if not isinstance(counters, dict) or sorted(counters) != names:
            found = sorted(counters)[:4] if isinstance(counters, dict) else type(counters).__name__
            raise ValueError(f"{type(self).__name__} keeps the counters {names or 'none'}, got {_shown(found)}")
        for name, value in counters.items():
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
                    or not 0 <= value < 2**62:
                raise ValueError(f"{type(self).__name__}: counter {name} must be a step count (an integer "
                                 f">= 0), got {_shown(value)}")
        return {name: int(value) for name, value in counters.items()}

    def state_slots(self):
        """The state arrays this optimizer keeps per parameter once it has stepped."""
        return self.slots


class SGD(Optimizer):
    """Mini-batch SGD: ``SGD(lr, momentum=0.0, nesterov=False, weight_decay=0.0)``.

    With momentum: ``v ← μv + g``, ``w ← w − lr·v`` (PyTorch's convention).
    """

    kind = "sgd"
    slots = ("V",)

    def __init__(self, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__()
        self.lr = _positive("lr", lr, "SGD")
        self.momentum = _in_unit("momentum", momentum, "SGD")
        self.nesterov = bool(nesterov)
        if self.nesterov and not self.momentum:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.weight_decay = _non_negative("weight_decay", weight_decay, "SGD")

    def __repr__(self):
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov}, "
                f"weight_decay={self.weight_decay})")

    def config(self):
        return {"kind": "sgd", "lr": self.lr, "momentum": self.momentum,
                "nesterov": self.nesterov, "weight_decay": self.weight_decay}

    def state_slots(self):
        return self.slots if self.momentum else ()

    def step(self, backend, dense_layers):
        for key, layer, name, decays in self._params(dense_layers):
            P, G = getattr(layer, name), getattr(layer, "d" + name)
            V = self._slot(backend, key, "V", P) if self.momentum else None
            P, V = backend.sgd_update(P, G, self.lr, V, self.momentum, self.nesterov,
                                      self.weight_decay if decays else 0.0)
            setattr(layer, "_" + name, P)  # already checked: skip the setter's validation
            if V is not None:
                self.state[key]["V"] = V


class Adam(Optimizer):
    """Adam: ``Adam(lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)``."""

    kind = "adam"
    slots = ("M", "V")

    def __init__(self, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__()
        self.lr = _positive("lr", lr, "Adam")
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"Adam: betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (_in_unit("beta1", betas[0], "Adam"), _in_unit("beta2", betas[1], "Adam"))
        self.eps = _positive("eps", eps, "Adam")
        self.weight_decay = _non_negative("weight_decay", weight_decay, "Adam")
        self.t = 0

    def __repr__(self):
        return f"Adam(lr={self.lr}, betas={self.betas}, eps={self.eps}, weight_decay={self.weight_decay})"

    def config(self):
        return {"kind": "adam", "lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay}

    def _counters(self):
        return {"t": self.t}

    def step(self, backend, dense_layers):
        self.t += 1
        beta1, beta2 = self.betas
        for key, layer, name, decays in self._params(dense_layers):
            P, G = getattr(layer, name), getattr(layer, "d" + name)
            M = self._slot(backend, key, "M", P)
            V = self._slot(backend, key, "V", P)
            P, M, V = backend.adam_update(P, G, self.lr, M, V, self.t, beta1, beta2, self.eps,
                                          self.weight_decay if decays else 0.0)
            setattr(layer, "_" + name, P)
            self.state[key]["M"], self.state[key]["V"] = M, V


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def is_plain(optimizer):
    """``optimizer`` is the library's SGD or Adam, stepping as they do (no subclass, no ``step``
    replaced on the instance): what a compiled trainer may compute in its kernels instead."""
    return type(optimizer) in (SGD, Adam) and "step" not in vars(optimizer)


def optimizer_from_config(config):
    """Rebuild an optimizer from :meth:`Optimizer.config` (checkpoints).

    Only a config that comes back the same is taken: the keys ``config()`` writes,
    each of its type (``nesterov`` a bool, not 1) and range; anything else is a
    ValueError, so a checkpoint cannot set what a constructor would refuse.
    """
    kind = config.get("kind") if isinstance(config, dict) else None
    if not isinstance(kind, str) or kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {_shown(kind)}; expected one of {', '.join(OPTIMIZERS)}")
    args = {name: value for name, value in config.items() if name != "kind"}
    if kind == "adam" and isinstance(args.get("betas"), list):
        args["betas"] = tuple(args["betas"])
    try:
        optimizer = OPTIMIZERS[kind](**args)
    except TypeError:  # a key the constructor does not take
        raise ValueError(f"{kind}: expected the settings {sorted(OPTIMIZERS[kind](1.0).config())}, "
                         f"got {_shown(sorted(config))}") from None
    rebuilt = optimizer.config()
    if rebuilt != config or any(isinstance(value, bool) != isinstance(rebuilt[name], bool)
                                for name, value in config.items()):
        raise ValueError(f"{kind}: the settings {_shown(config, 200)} are not as fastnn writes them "
                         f"({optimizer!r})")
    return optimizer
