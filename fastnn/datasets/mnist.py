"""The full MNIST set (60,000 / 10,000) from the standard IDX files, and its download.

Where ``load_mnist`` looks, in order (the first folder holding all four files wins):

1. ``path``, when given (then nowhere else);
2. ``$FASTNN_DATA``, when set;
3. the cache folder: ``$XDG_CACHE_HOME/fastnn``, else ``~/.cache/fastnn``.

A file may be gzipped or not: ``train-images-idx3-ubyte`` or ``...-ubyte.gz``
(also the ``train-images.idx3-ubyte`` spelling of some copies).
``download=True`` fetches the missing ``.gz`` files into the first of those
folders, from the mirrors in ``MIRRORS`` in turn, checks each file's SHA-256
and renames it into place only when it matches. A stalled mirror (no data for
``READ_TIMEOUT_S``) is given up for the next one, and the whole download for good
after ``DEADLINE_S``.
"""
from __future__ import annotations

import hashlib
import os
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import numpy as np

from ..files import atomic_writer
from .idx import IDXError, read_idx
from .split import MNISTSplit, from_uint8

#: role -> (file name without .gz, SHA-256 of the .gz, size of the .gz in bytes)
FILES = {
    "train_images": ("train-images-idx3-ubyte", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9_912_422),
    "train_labels": ("train-labels-idx1-ubyte", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28_881),
    "test_images": ("t10k-images-idx3-ubyte", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1_648_877),
    "test_labels": ("t10k-labels-idx1-ubyte", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4_542),
}
#: Tried in order; each serves the four .gz files under these names.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://yann.lecun.com/exdb/mnist/",
)
#: Seconds one connect or read may wait for data before its mirror counts as stalled (the next
#: mirror is tried, and a stalled mirror is not asked again in the same download).
READ_TIMEOUT_S = 15.0
#: Seconds the whole download (every file, every mirror) may take before it is given up.
DEADLINE_S = 60.0
urlopen = urllib.request.urlopen  # module-level, so tests can put a fake in its place


class MNISTNotFound(FileNotFoundError):
    """The four MNIST IDX files are not where ``load_mnist`` looks."""


class DownloadError(OSError):
    """No mirror delivered a file with the right checksum in the time allowed."""


class _Stalled(OSError):
    """A mirror sent nothing for too long, or the download's deadline passed."""


# ---- where the files are -------------------------------------------------------
def cache_dir():
    """``$XDG_CACHE_HOME/fastnn`` when that variable is set, else ``~/.cache/fastnn``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastnn")


def search_folders(path=None):
    """``[(folder, why)]`` in the order ``load_mnist`` looks."""
    if path is not None:
        return [(os.fspath(path), "the path given")]
    folders = []
    if os.environ.get("FASTNN_DATA"):
        folders.append((os.environ["FASTNN_DATA"], "$FASTNN_DATA"))
    folders.append((cache_dir(), "the cache folder"))
    return folders


def _candidates(name):
    dotted = name.replace("-idx", ".idx", 1)  # train-images.idx3-ubyte
    return (name, name + ".gz", dotted, dotted + ".gz")


def find_files(folder):
    """``(found, missing)``: role -> path of each MNIST file in ``folder``, and the roles not there."""
    found, missing = {}, []
    for role, (name, _, _) in FILES.items():
        for candidate in _candidates(name):
            full = os.path.join(folder, candidate)
            if os.path.isfile(full):
                found[role] = full
                break
        else:
            missing.append(role)
    return found, missing


def _not_found_message(folders, partial):
    looked = "; ".join(f"{folder} ({why})" for folder, why in folders)
    names = ", ".join(name + ".gz" for name, _, _ in FILES.values())
    text = f"MNIST IDX files not found. Looked in: {looked}."
    for folder, missing in partial:
        text += f" {folder} lacks {', '.join(FILES[role][0] for role in missing)}[.gz]."
    return (text + f" Put the four files {names} (gzipped or not) in one of those folders, pass "
            f"path=..., or download them with load_mnist(download=True) / `fastnn train --data mnist "
            f"--download`; the bundled 5,000-image sample needs nothing: load_mnist_sample() / "
            f"`--data sample`.")


def locate(path=None):
    """role -> file path of the folder ``load_mnist`` would read, or :class:`MNISTNotFound`."""
    folders = search_folders(path)
    partial = []
    for folder, _ in folders:
        found, missing = find_files(folder)
        if not missing:
            return found
        if found:
            partial.append((folder, missing))
    raise MNISTNotFound(_not_found_message(folders, partial))


# ---- reading -------------------------------------------------------------------
def _read_images(path):
    X = read_idx(path)
    if X.dtype != np.uint8 or X.ndim != 3 or X.shape[1:] != (28, 28):
        raise IDXError(f"{path}: expected MNIST images, uint8 of shape (n, 28, 28) (magic 0x00000803), "
                       f"got {X.dtype} of shape {X.shape}")
    return X


def _read_labels(path):
    y = read_idx(path)
    if y.dtype != np.uint8 or y.ndim != 1:
        raise IDXError(f"{path}: expected MNIST labels, uint8 of shape (n,) (magic 0x00000801), "
                       f"got {y.dtype} of shape {y.shape}")
    if y.size and y.max() > 9:
        raise IDXError(f"{path}: labels must be digits 0-9, found {int(y.max())}")
    return y


def _read_pair(images_path, labels_path):
    X, y = _read_images(images_path), _read_labels(labels_path)
    if X.shape[0] != y.shape[0]:
        raise IDXError(f"{images_path} holds {X.shape[0]:,} images but {labels_path} "
                       f"holds {y.shape[0]:,} labels")
    return X, y


def load_mnist(path: str | os.PathLike[str] | None = None, download: bool = False,
               log: Callable[[str], Any] | None = None, deadline: float | None = None) -> MNISTSplit:
    """The full MNIST set from its IDX files, as an :class:`MNISTSplit` (60,000 / 10,000).

    >>> X_train, y_train, X_test, y_test = fastnn.datasets.load_mnist()   # or path="~/data/mnist"
    >>> fastnn.datasets.load_mnist(download=True)                         # fetch once into the cache

    Pixels float32 in [0, 1], labels int64, in the files' order. See the
    module docstring for where it looks. Missing files raise
    :class:`MNISTNotFound` (a ``FileNotFoundError``) saying where to put
    them; a damaged file :class:`~fastnn.datasets.idx.IDXError` (a ``ValueError``)
    naming it. ``log``: a function given one line per download step; ``deadline``:
    seconds the download may take in all (default :data:`DEADLINE_S`; see :func:`download_mnist`).
    """
    if path is not None:
        path = os.path.expanduser(os.fspath(path))
    if download:
        download_mnist(search_folders(path)[0][0], log=log, deadline=deadline)
    files = locate(path)
    x_train, y_train = _read_pair(files["train_images"], files["train_labels"])
    x_test, y_test = _read_pair(files["test_images"], files["test_labels"])
    return from_uint8(x_train, y_train, x_test, y_test)


# ---- downloading ---------------------------------------------------------------
def download_mnist(folder: str | os.PathLike[str] | None = None, log: Callable[[str], Any] | None = None,
                   deadline: float | None = None, read_timeout: float | None = None) -> str:
    """Fetch the MNIST files that ``folder`` (default: the first folder searched) lacks; returns it.

    Each file comes from the first mirror in :data:`MIRRORS` that delivers it
    with the expected SHA-256; it is written to a temporary file beside its
    final name and renamed only then, so a failed or interrupted download never
    leaves a partial or wrong file. A mirror that sends nothing for
    ``read_timeout`` seconds (default :data:`READ_TIMEOUT_S`) counts as stalled:
    the next one is tried, and it is not asked again. The whole download (all
    files, all mirrors) gives up after ``deadline`` seconds (default
    :data:`DEADLINE_S`): raise it on a slow connection (11.6 MB in all). All
    mirrors failing, or the deadline passing, raises :class:`DownloadError` with
    each mirror's reason.
    """
    folder = os.path.expanduser(os.fspath(folder if folder is not None else search_folders()[0][0]))
    os.makedirs(folder, exist_ok=True)
    deadline = DEADLINE_S if deadline is None else deadline
    read_timeout = READ_TIMEOUT_S if read_timeout is None else read_timeout
    end = time.monotonic() + deadline
    stalled = set()  # mirrors that stalled once: the rest of the files skip them
    _, missing = find_files(folder)
    for role in missing:
        name, sha256, size = FILES[role]
        target = os.path.join(folder, name + ".gz")
        errors = []
        for mirror in MIRRORS:
            url = mirror + name + ".gz"
            if mirror in stalled:
                errors.append(f"{url}: skipped (this mirror stalled before)")
                continue
            if time.monotonic() >= end:
                break
            if log:
                log(f"downloading {url} ({size / 1e6:.1f} MB)")
            try:
                _fetch(url, target, sha256, size, read_timeout, end)
                break
            except (OSError, ValueError) as exc:  # URLError, HTTPError, stalls, bad checksum
                if isinstance(exc, _Stalled):
                    stalled.add(mirror)
                errors.append(f"{url}: {exc}")
        else:
            raise DownloadError(f"could not download {name}.gz: " + "; ".join(errors) + _by_hand(folder))
        if time.monotonic() >= end and not os.path.isfile(target):
            reasons = f" ({'; '.join(errors)})" if errors else ""
            raise DownloadError(f"could not download {name}.gz: gave up after {deadline:g} s, the time allowed "
                                f"for the whole download{reasons} (a stalled or very slow connection; "
                                f"download_mnist(deadline=...) allows more)" + _by_hand(folder))
    return folder


def _by_hand(folder):
    return (f". Put the four MNIST files (.gz or not) in {folder} by hand, point --data (or $FASTNN_DATA) "
            f"at a folder holding them, or train on the bundled sample (--data sample)")


def _socket(response):
    """The socket under an ``http.client`` response (to bound each read by the deadline), or None."""
    sock = getattr(getattr(getattr(response, "fp", None), "raw", None), "_sock", None)
    return sock if hasattr(sock, "settimeout") else None


class _Waits:
    """How long the next connect or read may wait: ``read_timeout``, less once ``end`` (a
    ``time.monotonic()``) is near; ``last`` is what the latest one was allowed."""

    def __init__(self, read_timeout, end):
        self.read_timeout, self.end, self.last = read_timeout, end, read_timeout

    def next(self):
        left = self.end - time.monotonic()
        if left <= 0:
            raise _Stalled("cut off at the deadline")
        self.last = min(self.read_timeout, left)
        return self.last


def _timed_out(exc):
    """True for a connect or read that waited too long (raised as is, or inside urllib's URLError)."""
    return isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError)


def _fetch(url, target, sha256, size, read_timeout, end):
    """Stream ``url`` into ``target`` (atomically); keep it only if the SHA-256 matches.

    Every connect and read waits at most ``read_timeout`` and never past ``end``
    (``time.monotonic()``); a wait that runs out raises :class:`_Stalled`. ``read1``
    returns what one read brought, so a server trickling bytes cannot hold a call open.
    """
    waits = _Waits(read_timeout, end)
    try:
        _stream(url, target, sha256, size, waits)
    except OSError as exc:
        if not _timed_out(exc):
            raise
        if waits.last < waits.read_timeout:
            raise _Stalled("cut off at the deadline") from exc
        raise _Stalled(f"stalled: no data for {waits.last:g} s") from exc


def _stream(url, target, sha256, size, waits):
    digest, received = hashlib.sha256(), 0
    with atomic_writer(target) as out, urlopen(url, timeout=waits.next()) as response:
        sock, read = _socket(response), getattr(response, "read1", response.read)
        while True:
            wait = waits.next()
            if sock is not None:
                sock.settimeout(wait)
            chunk = read(1 << 20)
            if not chunk:
                break
            received += len(chunk)
            if received > size:  # a wrong or hostile response: stop reading
                raise ValueError(f"more than the expected {size:,} bytes")
            digest.update(chunk)
            out.write(chunk)
        if digest.hexdigest() != sha256:  # raised inside the block: the temporary file goes
            raise ValueError(f"checksum mismatch ({received:,} bytes, sha256 {digest.hexdigest()}, "
                             f"expected {sha256})")
