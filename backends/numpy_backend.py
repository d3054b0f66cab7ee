"""The NumPy backend: the reference :class:`~fastnn.backend.Backend` as it is."""
from fastnn.backend import Backend


class NumpyBackend(Backend):
    """Plain NumPy (its array-API namespace: ``fastnn.backend.numpy_namespace``): readable, always there."""

    name = "numpy"

    @staticmethod
    def unavailable_reason():
        return None

    def info(self):
        import numpy as np
        return {"numpy": np.__version__}
