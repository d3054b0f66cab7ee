"""Writing files atomically: a temporary file in the same folder, then a rename.

Every file fastnn writes (models, checkpoints, downloads, IDX files, plots)
goes through :func:`atomic_writer`, so a crash mid-write leaves the previous
file intact and no temporary file behind.
"""
from __future__ import annotations

import contextlib
import os
import tempfile


def _umask():
    """The process umask, read without changing it where Linux allows (thread-safe)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0)  # elsewhere: the classic set-and-restore (briefly process-wide)
    os.umask(mask)
    return mask


def _new_file_mode(path):
    """The old file's permissions, else 0o666 less the umask (``mkstemp`` makes 0o600)."""
    with contextlib.suppress(OSError):
        return os.stat(path).st_mode & 0o777
    return 0o666 & ~_umask()


def _fsync_folder(folder):
    """Make the rename itself durable (POSIX); folders cannot be opened on Windows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.fsync(fd)
    os.close(fd)


@contextlib.contextmanager
def atomic_writer(path):
    """``with atomic_writer(path) as f: f.write(...)``: ``path`` appears whole or not at all.

    The bytes go to a temporary file beside ``path``, are fsynced, and the file
    is renamed over ``path`` (``os.replace``) only when the block ends without
    an exception; otherwise the temporary file is removed and ``path`` is
    untouched. A new file gets the usual permissions (0o666 less the umask), an
    overwritten one keeps its own.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {path}: the folder {folder} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path}: it is a folder; give a file name")
    mode = _new_file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=".fastnn-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)
