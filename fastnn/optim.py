"""Optimizers: they update every Dense layer's ``W`` and ``b`` from ``dW``, ``db``.

Weight decay applies to weights, not biases, as in Nielsen's L2 regularisation:
``w ← w − lr·(∇w + weight_decay·w)``.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .io_npz import _shown
from .ops import optimizers as _rules
from .param_groups import FlatGroup, groupable

if TYPE_CHECKING:
    from .backend import Array, Backend
    from .layers import Dense


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
    """Holds per-parameter state (``self.state["0.W"] = {"V": array}``) between steps.

    A subclass picks its update rule (an entry of ``fastnn.ops.optimizers``) and lists its
    settings; the step itself is the rule's, on every backend."""

    kind: str = ""  # the name in config() and checkpoints
    slots: tuple[str, ...] = ()  # every state array it may keep per parameter (a checkpoint holds no others)
    counts_steps: bool = False  # keeps the step number ``t`` (rules with per-step scalars)
    settings: tuple[str, ...]  # the constructor's arguments, in config() and repr
    lr: float
    weight_decay: float

    def __init__(self) -> None:
        self.state: dict[str, dict[str, Array]] = {}
        self.t = 0
        self._groups: dict[bool, FlatGroup | None] = {}  # by decays: see _group

    def __getstate__(self) -> dict[str, Any]:
        """A copy (copy.deepcopy, pickle) without the flat groups: they hold the layers, and are
        rebuilt at the next step anyway (the copy's arrays are not the groups' views)."""
        return {**self.__dict__, "_groups": {}}

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

    @property
    def rule(self) -> _rules.UpdateRule:
        """The update rule (``fastnn.ops.optimizers``) this optimizer steps with: its kind's, unless
        its settings pick a variant."""
        return _rules.BY_NAME[self.kind]

    def hyper(self) -> dict[str, float]:
        """``{name: float}``: the settings the rule reads, without the per-step scalars."""
        rule = self.rule
        return {name: float(getattr(self, name)) for name in ("lr", "weight_decay") + rule.hyper}

    def step_inputs(self, t: int) -> dict[str, float]:
        """Every input of the rule at step ``t`` (from 1): the settings and the per-step scalars."""
        h = self.hyper()
        h.update((name, float(f(h, t))) for name, f in self.rule.step_scalars)
        return h

    def step(self, backend: Backend, dense_layers: Iterable[Dense]) -> None:
        rule = self.rule
        if self.counts_steps:
            self.t += 1
        h = self.step_inputs(self.t)
        params = list(self._params(dense_layers))
        for decays, hyper in ((True, h), (False, dict(h, weight_decay=0.0))):
            members = [(key, layer, name) for key, layer, name, weighs in params if weighs is decays]
            group = self._group(decays, members, rule)
            if group is not None:
                group.step(backend, rule, hyper)
                continue
            for key, layer, name in members:
                P, G = getattr(layer, name), getattr(layer, "d" + name)
                slots = {slot: self._slot(backend, key, slot, P) for slot in rule.slots}
                P, slots = backend.update(rule, P, G, slots, hyper)
                setattr(layer, "_" + name, P)  # already checked: skip the setter's validation
                if slots:
                    self.state[key].update(slots)

    def _group(self, decays, members, rule):
        """The flat group of ``members`` (``fastnn.param_groups``), built anew when the arrays were
        replaced since; None where they are not NumPy arrays of one dtype (one update each then)."""
        group = self._groups.get(decays)
        if group is not None and group.holds(members, self.state, rule.slots):
            return group
        self._groups[decays] = group = FlatGroup(members, self.state, rule.slots) if groupable(members) else None
        return group

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, **{name: _json(getattr(self, name)) for name in self.settings}}

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.settings)
        return f"{type(self).__name__}({args})"

    # ---- checkpoints: host arrays, so a checkpoint loads on any backend ----
    def state_arrays(self, backend: Backend) -> tuple[dict[str, NDArray[Any]], dict[str, int]]:
        arrays = {f"{key}.{slot}": backend.to_numpy(value)
                  for key, entry in self.state.items() for slot, value in entry.items()}
        return arrays, self._counters()

    def load_state_arrays(self, backend: Backend, arrays: Mapping[str, Any], counters: Mapping[str, int],
                          dtype: Any) -> None:
        """Take ``arrays`` (``"0.W.V"`` -> host array) and ``counters`` as this optimizer's state.
        The counters are checked first (see :meth:`checked_counters`); nothing changes on a refusal."""
        counters = self.checked_counters(counters)
        state: dict[str, dict[str, Array]] = {}
        for name, value in arrays.items():
            key, slot = name.rsplit(".", 1)
            state.setdefault(key, {})[slot] = backend.asarray(np.ascontiguousarray(value), dtype=dtype)
        self.state = state
        for name, value in counters.items():
            setattr(self, name, value)

    def _counters(self):
        return {"t": self.t} if self.counts_steps else {}

    def checked_counters(self, counters: Any) -> dict[str, int]:
        """``counters`` if they name exactly this optimizer's counters, each a step count (an
        integer >= 0); else ValueError. A checkpoint restores these and no other attribute."""
        names = sorted(self._counters())
        if not isinstance(counters, dict) or sorted(counters) != names:
            found = sorted(counters)[:4] if isinstance(counters, dict) else type(counters).__name__
            raise ValueError(f"{type(self).__name__} keeps the counters {names or 'none'}, got {_shown(found)}")
        for name, value in counters.items():
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
                    or not 0 <= value < 2**62:  # type: ignore[operator]  # typeshed: Integral has no <
                raise ValueError(f"{type(self).__name__}: counter {name} must be a step count (an integer "
                                 f">= 0), got {_shown(value)}")
        return {name: int(value) for name, value in counters.items()}

    def state_slots(self) -> tuple[str, ...]:
        """The state arrays this optimizer keeps per parameter once it has stepped."""
        return self.rule.slots


def _json(value):
    return list(value) if isinstance(value, tuple) else value


class SGD(Optimizer):
    """Mini-batch SGD: ``SGD(lr, momentum=0.0, nesterov=False, weight_decay=0.0)``.

    With momentum: ``v ← μv + g``, ``w ← w − lr·v`` (PyTorch's convention).
    """

    kind = "sgd"
    slots = ("V",)
    settings = ("lr", "momentum", "nesterov", "weight_decay")

    def __init__(self, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0) -> None:
        super().__init__()
        self.lr = _positive("lr", lr, "SGD")
        self.momentum = _in_unit("momentum", momentum, "SGD")
        self.nesterov = bool(nesterov)
        if self.nesterov and not self.momentum:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.weight_decay = _non_negative("weight_decay", weight_decay, "SGD")

    @property
    def rule(self) -> _rules.UpdateRule:
        return _rules.BY_NAME["nesterov" if self.nesterov else "momentum" if self.momentum else "sgd"]


class Adam(Optimizer):
    """Adam: ``Adam(lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)``; weight decay as
    L2 in the gradient (PyTorch's Adam)."""

    kind = "adam"
    slots = ("M", "V")
    settings = ("lr", "betas", "eps", "weight_decay")
    counts_steps = True

    def __init__(self, lr: float = 0.001, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__()
        name = type(self).__name__
        self.lr = _positive("lr", lr, name)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"{name}: betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (_in_unit("beta1", betas[0], name), _in_unit("beta2", betas[1], name))
        self.eps = _positive("eps", eps, name)
        self.weight_decay = _non_negative("weight_decay", weight_decay, name)

    @property
    def beta1(self) -> float:
        return self.betas[0]

    @property
    def beta2(self) -> float:
        return self.betas[1]


class AdamW(Adam):
    """AdamW: ``AdamW(lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)``; decoupled weight
    decay ``w ← w·(1 − lr·weight_decay)`` before the Adam step (PyTorch's AdamW), on weights only."""

    kind = "adamw"

    def __init__(self, lr: float = 0.001, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01) -> None:
        super().__init__(lr, betas, eps, weight_decay)


class RMSprop(Optimizer):
    """RMSprop: ``RMSprop(lr=0.01, alpha=0.99, eps=1e-8, momentum=0.0, weight_decay=0.0)``, PyTorch's
    rule (not centered): ``v ← αv + (1−α)g²``, ``w ← w − lr·g/(√v + ε)``; with momentum
    ``b ← μb + g/(√v + ε)``, ``w ← w − lr·b``."""

    kind = "rmsprop"
    slots = ("V", "B")
    settings = ("lr", "alpha", "eps", "momentum", "weight_decay")

    def __init__(self, lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        super().__init__()
        self.lr = _positive("lr", lr, "RMSprop")
        self.alpha = _in_unit("alpha", alpha, "RMSprop")
        self.eps = _positive("eps", eps, "RMSprop")
        self.momentum = _in_unit("momentum", momentum, "RMSprop")
        self.weight_decay = _non_negative("weight_decay", weight_decay, "RMSprop")

    @property
    def rule(self) -> _rules.UpdateRule:
        return _rules.BY_NAME["rmsprop_momentum" if self.momentum else "rmsprop"]


OPTIMIZERS = {cls.kind: cls for cls in (SGD, Adam, AdamW, RMSprop)}


def is_plain(optimizer: Optimizer) -> bool:
    """``optimizer`` is one of the library's optimizers, stepping as it does (no subclass, no ``step``
    replaced on the instance): what a compiled trainer may compute in its kernels instead."""
    return type(optimizer) in OPTIMIZERS.values() and "step" not in vars(optimizer)


def optimizer_from_config(config: dict[str, Any]) -> Optimizer:
    """Rebuild an optimizer from :meth:`Optimizer.config` (checkpoints).

    Only a config that comes back the same is taken: the keys ``config()`` writes,
    each of its type (``nesterov`` a bool, not 1) and range; anything else is a
    ValueError, so a checkpoint cannot set what a constructor would refuse.
    """
    kind = config.get("kind") if isinstance(config, dict) else None
    if not isinstance(kind, str) or kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {_shown(kind)}; expected one of {', '.join(OPTIMIZERS)}")
    args = {name: value for name, value in config.items() if name != "kind"}
    if isinstance(args.get("betas"), list):
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
