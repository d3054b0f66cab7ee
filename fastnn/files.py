"""Files fastnn writes and reads: atomic writes, and reads that cannot hang.

Every file fastnn writes (models, checkpoints, downloads, IDX files, plots)
goes through :func:`atomic_writer`: a crash mid-write leaves the previous file
intact, and a temporary file that a killed writer left is removed by the next
write of the same target. Every file it reads from a user (models,
checkpoints, IDX files, images) is opened by :func:`open_regular`: a named
pipe, device or folder is refused before it could block or be read forever.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import stat
import tempfile

_TEMP_SUFFIX = ".tmp"


# ---- reading ---------------------------------------------------------------------
def _kind(mode):
    """What a non-regular file is, in words."""
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def open_regular(path, error):
    """``path`` opened for binary reading, or ``error(message)`` when it is not a regular file.

    Checked twice: by ``stat`` before opening (a device is never opened), and by
    ``fstat`` on what was opened, with ``O_NONBLOCK`` so that a file swapped for
    a named pipe in between cannot block ``open``. A missing file or a denied
    permission stays Python's own ``OSError``.
    """
    path = os.fspath(path)
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise error(f"{path}: is {_kind(mode)}, not a regular file; refused without reading it")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{path}: is {_kind(mode)}, not a regular file (it changed while opened); "
                        f"refused without reading it")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_into(stream, array, chunk=1 << 20):
    """Fill the C-contiguous NumPy ``array`` from ``stream``'s bytes, a chunk at a time: a large
    array is read without a second copy, and a decompressing stream never inflates more than
    fits. Returns how many bytes came, fewer than ``array.nbytes`` when the stream ended first."""
    view, done = memoryview(array.reshape(-1).view("u1")), 0
    while done < len(view):
        n = stream.readinto(view[done:done + chunk])
        if not n:
            break
        done += n
    return done


# ---- temporary files: named after their writer, so the dead ones can be found -----------
def _host():
    """This machine, and on Linux this pid namespace: where a pid in a temp file's name means a process."""
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64] or "host"
    with contextlib.suppress(OSError):  # two containers may share a host name, never a namespace
        host += "~" + re.sub(r"\D", "", os.readlink("/proc/self/ns/pid"))
    return host


def _temp_prefix(path):
    """``.NAME.fastnn-`` for the target ``path``; a long name as its digest, to stay under 255 bytes."""
    name = os.path.basename(path)
    if len(name.encode("utf-8", "surrogateescape")) > 100:
        name = "~" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f".{name}.fastnn-"


def _alive(pid):
    """Whether process ``pid`` exists here (a pid reused by another process counts as alive: kept)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, as another user's
        pass
    return True


def _dead_writers_files(folder, prefix, host):
    """Temp files of ``prefix`` in ``folder`` written on ``host`` by processes that no longer exist."""
    try:
        with os.scandir(folder) as entries:
            names = [entry.name for entry in entries
                     if entry.name.startswith(prefix) and entry.is_file(follow_symlinks=False)]
    except OSError:
        return []
    dead = []
    for name in names:
        writer = re.fullmatch(r"(.+)-([0-9]+)-[a-z0-9_]+" + re.escape(_TEMP_SUFFIX), name[len(prefix):])
        if writer and writer[1] == host and int(writer[2]) > 0 and not _alive(int(writer[2])):
            dead.append(os.path.join(folder, name))
    return dead


def remove_dead_writers_files(path):
    """Remove the temp files that writers of ``path`` left when killed: only this host's, only
    those whose process is gone. POSIX only: elsewhere ``os.kill`` would end a live process."""
    if os.name != "posix":
        return
    folder = os.path.dirname(os.path.abspath(path))
    for leftover in _dead_writers_files(folder, _temp_prefix(path), _host()):
        with contextlib.suppress(OSError):  # gone already, or not ours to remove
            os.unlink(leftover)


# ---- writing ---------------------------------------------------------------------
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

    The bytes go to a temporary file beside ``path``
    (``.NAME.fastnn-HOST-PID-RANDOM.tmp``), are fsynced, and the file is
    renamed over ``path`` (``os.replace``) only when the block ends without an
    exception; otherwise the temporary file is removed and ``path`` is
    untouched. A writer killed mid-way cannot remove its own: the next write of
    the same ``path`` removes those of writers gone from this host, never a
    live writer's or another host's. A new file gets the usual permissions
    (0o666 less the umask), an overwritten one keeps its own.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {path}: the folder {folder} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path}: it is a folder; give a file name")
    remove_dead_writers_files(path)
    mode = _new_file_mode(path)
    prefix = f"{_temp_prefix(path)}{_host()}-{os.getpid()}-"
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=_TEMP_SUFFIX, dir=folder)
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
