"""Whether this machine's disk cache holds the numba kernels, and filling it without a wait.

The kernels come in two parts per dtype: ``"epoch"`` (the compiled whole epoch) and
``"layers"`` (the kernels of the layer-by-layer path and of predict/evaluate). Compiling a
part takes 10-15 s on 2 cores; loading it from numba's cache, milliseconds. A part counts as
cached once an empty *marker* file says so, named by a key of everything numba's cache
depends on (the kernel sources, numba, Python, the CPU, the cache folder): a stat, where
asking numba would mean loading the kernels.

A job too small to pay for a compile runs on the NumPy reference ops while
:func:`start_background` fills the cache in a separate process for the next run:

- at idle priority (``SCHED_IDLE``, else nice 19), so it takes only what the job leaves;
- one per cache folder: it holds an ``flock`` on ``background-compile.lock`` for its life
  and a second one exits at once (the lock file itself stays, empty);
- it may outlive the script that started it, until its parts are compiled;
- numba writes its cache files atomically, so processes racing for the cache are safe;
- it logs its CPU seconds to ``background-compile.json``;
- ``FASTNN_BACKGROUND_COMPILE=0`` switches it off.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time

from fastnn.files import atomic_writer

PARTS = ("epoch", "layers")
#: Seconds a cold compile of one part of one dtype takes, roughly (2 cores, Zen 3/4; AVX-512
#: machines are faster): what a job must outlast before waiting for a compile pays.
COMPILE_SECONDS = {"epoch": 13.0, "layers": 10.0}
LOCK, LOG = "background-compile.lock", "background-compile.json"
#: The backend's sources whose edits make numba recompile (it checks a kernel's own file).
_SOURCES = ("numba_kernels.py", "numba_epoch_template.py", "numba_epoch_codegen.py", "numba_epoch_simd.py")
_key = None
_spawned = []  # the background processes this one started (kept: no "still running" warning)


def cache_dir():
    """Where generated kernels and these markers live: $FASTNN_CACHE_DIR, else under
    $NUMBA_CACHE_DIR, else ~/.cache/fastnn/numba."""
    folder = os.environ.get("FASTNN_CACHE_DIR")
    if not folder and os.environ.get("NUMBA_CACHE_DIR"):
        folder = os.path.join(os.environ["NUMBA_CACHE_DIR"], "fastnn")
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "fastnn", "numba")
    return folder


def folder():
    return cache_dir()


def key():
    """Everything numba's cache depends on, hashed: a marker made under another key means nothing."""
    global _key
    if _key is None:
        import llvmlite.binding as llvm
        import numba

        here = os.path.dirname(os.path.abspath(__file__))
        numba_dir = os.environ.get("NUMBA_CACHE_DIR")  # unset: caches beside the package
        h = hashlib.sha256(repr((numba.__version__, sys.version_info[:2], llvm.get_host_cpu_name(),
                                 llvm.get_host_cpu_features().flatten(),
                                 numba_dir and os.path.abspath(numba_dir))).encode())
        for name in _SOURCES:
            with open(os.path.join(here, name), "rb") as f:
                h.update(f.read())
        _key = h.hexdigest()[:16]
    return _key


def _marker(part, dtype):
    return os.path.join(folder(), f"ready-{key()}-{part}-{dtype}")


def is_cached(part, dtype):
    """True when ``part`` of ``dtype`` loads from the disk cache instead of compiling."""
    return os.path.exists(_marker(part, dtype))


def mark_cached(part, dtype):
    """Record that ``part`` of ``dtype`` is in the cache (after it compiled or loaded)."""
    path = _marker(part, dtype)
    if not os.path.exists(path):
        with contextlib.suppress(OSError):  # a cache folder we cannot write: no marker, no harm
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with atomic_writer(path):
                pass


def background_enabled():
    return os.environ.get("FASTNN_BACKGROUND_COMPILE", "1").strip().lower() not in ("0", "false", "no", "off")


def start_background(dtype):
    """Compile the parts of ``dtype`` that are not cached yet in a process of their own, at idle
    priority; returns True when one was started (not when switched off or nothing is missing)."""
    missing = [part for part in PARTS if not is_cached(part, dtype)]
    if not missing or not background_enabled() or _running_here(dtype):
        return False
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", FASTNN_BACKGROUND_COMPILE="0")
    try:
        _spawned.append((dtype, subprocess.Popen(
            [sys.executable, "-m", "fastnn.backends.numba_cache", dtype], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)))
    except OSError:
        return False
    return True


def _running_here(dtype):
    return any(d == dtype and p.poll() is None for d, p in _spawned)


def running():
    """True while a background compile holds this cache folder's lock."""
    path = os.path.join(folder(), LOCK)
    if not os.path.exists(path):
        return False
    with _lock(path) as held:
        return not held


@contextlib.contextmanager
def _lock(path):
    """Try to take the exclusive lock at ``path``: yields True when taken (released on exit)."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def _idle_priority():
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return
    with contextlib.suppress(AttributeError, OSError):
        os.nice(19)


def _compile(dtype):
    """The background process: compile what ``dtype`` misses, then log the CPU seconds spent."""
    _idle_priority()
    os.makedirs(folder(), exist_ok=True)
    with _lock(os.path.join(folder(), LOCK)) as held:
        if not held:
            return 0  # another process is filling this cache
        from fastnn.backend import get_backend

        started, done = time.perf_counter(), []
        backend = get_backend("numba", num_threads=1)
        for part in PARTS:
            if not is_cached(part, dtype):
                backend.warm(part, dtype)
                done.append(part)
        usage = os.times()
        record = {"dtype": dtype, "parts": done, "wall_seconds": round(time.perf_counter() - started, 2),
                  "cpu_seconds": round(usage.user + usage.system, 2)}
        with atomic_writer(os.path.join(folder(), LOG)) as f:
            f.write(json.dumps(record).encode())
    return 0


if __name__ == "__main__":
    sys.exit(_compile(sys.argv[1]))
