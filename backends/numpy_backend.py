"""The NumPy backend: the reference :class:`~fastnn.backend.Backend` as it is."""
from __future__ import annotations

from typing import Any

from fastnn.backend import Backend


class NumpyBackend(Backend):
    """Plain NumPy (its array-API namespace: ``fastnn.backend.numpy_namespace``): readable, always there."""

    name = "numpy"

    @staticmethod
    def unavailable_reason() -> str | None:
        return None

    def info(self) -> dict[str, Any]:
        import numpy as np
        return {"numpy": np.__version__}
