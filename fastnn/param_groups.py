"""A kind of parameter (every Dense layer's weights, or its biases) side by side in one flat NumPy
array, the layers' ``W`` (or ``b``) its views, and each optimizer slot alike: the optimizer then
steps a kind in one ``backend.update`` call instead of one per layer. An update is element by
element, so the numbers are the same; on small layers the fixed cost of each NumPy call is most
of a step.

A group holds while the layers and the optimizer state still hold its views; an array put in
their place (a loaded checkpoint, an epoch rolled back, ``layer.W = ...``) makes the optimizer
build a new group from the arrays as they are then.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .backend import Backend
    from .layers import Dense
    from .ops.optimizers import UpdateRule

#: ``(state key, layer, "W" or "b")`` of each parameter in a group
Member = tuple[str, "Dense", str]
#: The most values a group holds: every step copies the gradients into one array, which costs more
#: than the NumPy calls it saves above some ten thousand values (~10 µs of calls, ~100 KB of copy)
GROUP_MAX_VALUES = 16_384


def groupable(members: Sequence[Member]) -> bool:
    """Whether ``members`` can share a flat array: NumPy parameters and gradients, of one dtype, few
    enough values in all (``GROUP_MAX_VALUES``)."""
    arrays = [(getattr(layer, "_" + name), getattr(layer, "d" + name)) for _, layer, name in members]
    return bool(arrays) and sum(P.size for P, _ in arrays) <= GROUP_MAX_VALUES and all(type(P) is np.ndarray and type(G) is np.ndarray and P.dtype == arrays[0][0].dtype
                                and G.dtype == P.dtype and G.shape == P.shape for P, G in arrays)


class FlatGroup:
    """``members``' parameters copied into one flat array ``P`` (and ``state``'s slots into
    ``slots``); the layers and ``state`` get views of them in place of their own arrays."""

    def __init__(self, members: Sequence[Member], state: dict[str, dict[str, Any]], slots: Sequence[str]) -> None:
        self.members, self.state = list(members), state
        arrays = [getattr(layer, "_" + name) for _, layer, name in self.members]
        self.P = np.concatenate([np.reshape(A, -1) for A in arrays])
        self.slots = {slot: np.concatenate([_slot_values(state, key, slot, A) for (key, _, _), A
                                            in zip(self.members, arrays)]) for slot in slots}
        self._layers: list[tuple[Dense, str, Any]] = []  # (layer, "_W" or "_b", the view it must still hold)
        self._entries: list[tuple[dict[str, Any], str, Any]] = []  # (a dict, key, what it must still hold)
        start = 0
        for (key, layer, name), A in zip(self.members, arrays):
            rows = slice(start, start + A.size)
            start += A.size
            view = self.P[rows].reshape(A.shape)
            setattr(layer, "_" + name, view)  # the same numbers: skip the setter's checks
            self._layers.append((layer, "_" + name, view))
            if self.slots:  # a rule without slots keeps no state
                entry = state.setdefault(key, {})
                entry.update({slot: flat[rows].reshape(A.shape) for slot, flat in self.slots.items()})
                self._entries += [(state, key, entry), *((entry, slot, entry[slot]) for slot in self.slots)]

    def holds(self, members: Sequence[Member], state: dict[str, dict[str, Any]], slots: Sequence[str]) -> bool:
        """Whether these are still the group's members and the layers and ``state`` still hold its views."""
        if state is not self.state or len(members) != len(self.members) or tuple(slots) != tuple(self.slots):
            return False
        for (key, layer, _), (held_key, held_layer, _) in zip(members, self.members):
            if layer is not held_layer or key != held_key:
                return False
        for layer, attribute, view in self._layers:
            if getattr(layer, attribute) is not view:
                return False
        for owner, key, value in self._entries:
            if owner.get(key) is not value:
                return False
        return True

    def step(self, backend: Backend, rule: UpdateRule, hyper: Mapping[str, float]) -> None:
        """One update of every member from the layers' gradients."""
        G = np.concatenate([getattr(layer, "d" + name).reshape(-1) for _, layer, name in self.members])
        P, slots = backend.update(rule, self.P, G, self.slots, hyper)
        if P is not self.P:  # the contract updates in place; a backend that returns new arrays too
            self.P[...] = P
        for slot, value in slots.items():
            if value is not self.slots[slot]:
                self.slots[slot][...] = value


def _slot_values(state, key, slot, like):
    """The slot's values for one parameter, flat: zeros where the optimizer has none yet."""
    value = state.get(key, {}).get(slot)
    return np.zeros(like.size, like.dtype) if value is None else np.reshape(np.asarray(value, like.dtype), -1)
