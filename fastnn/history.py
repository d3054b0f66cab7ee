"""``History``: what ``fit`` measured, epoch by epoch."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class History:
    """Per-epoch lists: ``epoch``, ``loss``, ``accuracy``, ``seconds`` and, with
    validation data, ``val_loss`` and ``val_accuracy``. ``history["loss"]`` works
    like ``history.history["loss"]`` in Keras. ``interrupted`` is True when
    Ctrl-C stopped the run; ``path`` says in words what trained (the compiled
    whole epoch, layer by layer, or the reference ops while kernels compile).
    """

    def __init__(self, history: Mapping[str, list[Any]] | None = None) -> None:
        self.history: dict[str, list[Any]] = {key: list(values) for key, values in (history or {}).items()}
        self.interrupted = False
        self.path: str | None = None

    def append(self, epoch: int, logs: Mapping[str, Any]) -> None:
        self.history.setdefault("epoch", []).append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __getitem__(self, key: str) -> list[Any]:
        return self.history[key]

    def __contains__(self, key: object) -> bool:
        return key in self.history

    def __len__(self) -> int:
        return len(self.history.get("epoch", []))

    def __repr__(self) -> str:
        return f"History({len(self)} epochs, keys={sorted(self.history)})"

    def best_epoch(self) -> int | None:
        """The epoch with the best validation accuracy (else training accuracy), or None (a regression)."""
        key = "val_accuracy" if "val_accuracy" in self.history else "accuracy"
        values = self.history.get(key)
        if not values:
            return None
        best = max(range(len(values)), key=values.__getitem__)
        return self.history["epoch"][best]

    def line(self, i: int, n_samples: int, val_name: str = "val") -> str:
        """One line describing epoch ``i`` (as printed by ``fit(verbose=1)`` and the CLI)."""
        h = self.history
        text = f"epoch {h['epoch'][i]:>3}: loss {h['loss'][i]:.4f}"
        if "accuracy" in h:  # a regression has none
            text += f"  train acc {h['accuracy'][i]:.4f}"
        if "val_accuracy" in h:
            text += f"  {val_name} acc {h['val_accuracy'][i]:.4f}"
        seconds = h["seconds"][i]
        text += f"  {seconds:.2f} s  {n_samples / max(seconds, 1e-9):,.0f} samples/s"
        return text
