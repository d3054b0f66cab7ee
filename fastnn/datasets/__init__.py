"""Data sets: the MNIST sample that ships with fastnn, and the full MNIST from IDX files.

>>> from fastnn.datasets import load_mnist_sample, load_mnist
>>> X_train, y_train, X_test, y_test = load_mnist_sample()   # 4,000 / 1,000, offline
>>> data = load_mnist(download=True)                         # 60,000 / 10,000, cached

Both return an :class:`MNISTSplit` (float32 pixels in [0, 1], int64 labels).
"""
from .idx import IDXError, read_idx, write_idx
from .images import ImageFileError
from .mnist import DownloadError, MNISTNotFound, download_mnist, load_mnist
from .sample import load_mnist_sample
from .split import MNISTSplit

__all__ = ["DownloadError", "IDXError", "ImageFileError", "MNISTNotFound", "MNISTSplit", "download_mnist", "load_mnist",
           "load_mnist_sample", "read_idx", "write_idx"]
