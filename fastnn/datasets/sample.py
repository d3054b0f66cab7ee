"""The 5,000-image MNIST sample that ships inside fastnn (no download, no network)."""
from __future__ import annotations

import zipfile
from importlib import resources

import numpy as np

from .split import MNISTSplit, from_uint8

SAMPLE_FILE = "mnist_sample.npz"
_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_mnist_sample() -> MNISTSplit:
    """The bundled MNIST sample as an :class:`MNISTSplit`: 4,000 training and 1,000 test images.

    >>> X_train, y_train, X_test, y_test = fastnn.datasets.load_mnist_sample()
    >>> X_train.shape, X_train.dtype, y_train[:5]
    ((4000, 784), dtype('float32'), array([3, 7, 8, 8, 3]))

    Real MNIST digits (500 of each), split once, stratified and seeded (400
    training and 100 test images per digit, shuffled), by
    ``tools/make_mnist_sample.py``; the split is stored, so it is the same on
    every machine and NumPy version. Pixels are float32 in [0, 1] (the
    0-255 grey levels / 255), labels int64. Every call returns new arrays.

    Credit: MNIST database, Yann LeCun, Corinna Cortes and Christopher J.C.
    Burges; CC BY-SA 3.0 (see ``MNIST-LICENSE.txt`` beside the data file).
    """
    source = resources.files(__package__) / SAMPLE_FILE
    try:
        with source.open("rb") as f, np.load(f, allow_pickle=False) as data:
            arrays = [data[key] for key in _KEYS]
    except FileNotFoundError:
        raise FileNotFoundError(f"the bundled MNIST sample {SAMPLE_FILE} is missing from this fastnn "
                                f"installation ({source}); reinstall fastnn") from None
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"the bundled MNIST sample {source} is damaged ({exc}); reinstall fastnn") from None
    return from_uint8(*arrays)
