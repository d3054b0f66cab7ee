"""``MNISTSplit``: what the loaders return."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class MNISTSplit(NamedTuple):
    """Train and test sets: ``X_*`` float32 ``(n, 784)`` in [0, 1], ``y_*`` int64 digits 0-9.

    A named tuple, so it unpacks: ``X_train, y_train, X_test, y_test = load_mnist_sample()``.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray

    def __repr__(self):
        return (f"MNISTSplit(X_train {self.X_train.shape} {self.X_train.dtype}, y_train {self.y_train.shape}, "
                f"X_test {self.X_test.shape} {self.X_test.dtype}, y_test {self.y_test.shape})")


def from_uint8(x_train, y_train, x_test, y_test):
    """An :class:`MNISTSplit` from uint8 pixels ``(n, 28, 28)`` or ``(n, 784)`` and labels."""
    def pixels(x):
        return np.divide(x.reshape(x.shape[0], -1), 255, dtype=np.float32)

    return MNISTSplit(pixels(x_train), y_train.astype(np.int64), pixels(x_test), y_test.astype(np.int64))
