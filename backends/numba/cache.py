"""Whether this machine's disk cache holds the numba kernels, and filling it without a wait.

The kernels come in two parts per dtype: ``"epoch"`` (the compiled whole epoch) and
``"layers"`` (the kernels of the layer-by-layer path and of predict/evaluate). Compiling a
part takes 10-15 s on 2 cores; loading it from numba's cache, milliseconds. A part counts as
cached once an empty *marker* file says so, named by a key of everything numba's cache
depends on (the kernel sources, numba, Python, the CPU, the cache folder): a stat, where
asking numba would mean loading the kernels.

A job too small to pay for a compile runs on the NumPy reference ops while
:func:`start_background` fills the cache in a separate process for the next run:

- after the job that started it ends (a minute at most: ``PARENT_WAIT_S``), and at idle
  priority (``SCHED_IDLE``, else nice 19), so it takes only what the job leaves;
- one per cache folder: it holds an ``flock`` on ``background-compile.lock`` for its life
  and a second one exits at once (the lock file itself stays, empty);
- it may outlive the script that started it, until its parts are compiled;
- numba writes its cache files atomically, so processes racing for the cache are safe;
- it logs its CPU seconds to ``background-compile.json``;
- ``FASTNN_BACKGROUND_COMPILE=0`` switches it off.

With no writable cache (a read-only install, home and temp folder), numba's ``cache=True``
would raise at import: :func:`cacheable` says so beforehand, the kernels are compiled in
memory in every process that needs them, nothing is marked as cached, no background process
starts, and :func:`warn_if_uncached` says it once, with the way out.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import subprocess
import sys
import tempfile
import time
import warnings

from fastnn.files import atomic_writer

from . import numba_cache_folders

PARTS = ("epoch", "layers")
#: A part only a data-parallel fit of ranks on one machine needs (``epoch_shared.warmup_ranks``):
#: never compiled for others (``warmup``, a background compile of the parts a job missed).
RANKS = "ranks"
#: Seconds a cold compile of one part of one dtype takes, roughly (2 cores, Zen 3/4; AVX-512
#: machines are faster): what a job must outlast before waiting for a compile pays.
COMPILE_SECONDS = {"epoch": 13.0, "layers": 10.0}
RANKS_COMPILE_SECONDS = 11.0
LOCK, LOG = "background-compile.lock", "background-compile.json"
#: The background compile waits this long at most for the job that started it to end (a short
#: script: until it ends; a long session: a minute, then it compiles beside it, at idle priority).
PARENT_WAIT_S = 60.0
#: The backend's sources a kernel is made from or called with (its argument types: epoch.py), beside
#: the op tables: a change in any makes new kernels, so the markers of what is cached change with them.
#: (The template parts the epoch's module is joined from: ``epoch_codegen.PARTS``, added in ``key``.)
_SOURCES = ("kernels.py", "epoch.py", "epoch_shared.py", "epoch_template.py", "epoch_codegen.py", "epoch_ops.py",
            "layer_ops.py", "generated.py", "simd.py", "simd_math.py", "sync.py")
_key = None
_spawned: list[tuple[str, subprocess.Popen[bytes]]] = []  # the background processes this one started (kept: no "still running" warning)
_folders: dict[str, tuple[str | None, list[str]]] = {}  # cache_dir() -> (the folder used, or None; what was wrong with those refused)
_kernels_cacheable = None  # whether numba has a cache folder for this package's kernels
_not_cached: dict[str, str] = {}  # part -> why it could not be cached after all (found while importing it)
_warned = False


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
    """Where the generated epoch module, the markers and the background lock live: :func:`cache_dir`
    when it takes files, else a private folder of this user in the temp folder (a read-only home);
    None when neither does (nothing is cached then). Tried once per process and cache_dir()."""
    wanted = cache_dir()
    if wanted not in _folders:
        _folders[wanted] = _first_writable(wanted)
    return _folders[wanted][0]


def _first_writable(wanted):
    """``(folder, problems)``: ``wanted`` if it takes files, else the private temp folder, else None."""
    problems = []
    for path, private in ((wanted, False), (_private_temp_path(), True)):
        try:
            if private:
                _make_private(path)
            else:
                os.makedirs(path, exist_ok=True)
            tempfile.TemporaryFile(dir=path).close()  # permissions alone miss read-only mounts
            return path, problems
        except OSError as exc:
            problems.append(f"{path}: {exc.strerror or exc}")
    return None, problems


def _private_temp_path():
    name = f"fastnn-{os.getuid()}" if hasattr(os, "getuid") else "fastnn-user"
    return os.path.join(tempfile.gettempdir(), name)


def _make_private(path):
    """A folder in the temp dir that only this user can write, for a home that is read-only.

    Code is imported from it, so a folder someone else made (or can write) is refused.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    if not hasattr(os, "getuid"):
        return
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise PermissionError(f"not a private folder of this user (owner uid {st.st_uid}, mode "
                              f"{stat.S_IMODE(st.st_mode):o}): fastnn will not import code from it")


def kernels_cacheable():
    """True when numba can keep this package's kernels on disk: one of its cache locators
    (``$NUMBA_CACHE_DIR``, the package's ``__pycache__``, numba's folder in the user's cache;
    ``numba/core/caching.py``) takes files. With none, ``njit(cache=True)`` raises "no locator
    available" at import, so ``numba_kernels`` asks here first. Asked once per process: first
    without numba (``numba_cache_folders``), then, where that finds no folder, numba itself."""
    global _kernels_cacheable
    if _kernels_cacheable is None:
        _kernels_cacheable = numba_cache_folders.one_takes_files() or _numba_finds_a_folder()
    return _kernels_cacheable


def _numba_finds_a_folder():
    from numba import njit
    try:
        njit(cache=True)(_probe)  # numba looks for a cache folder for this file's folder
        return True
    except RuntimeError:
        return False


def _probe():
    """A function beside ``numba_kernels.py``: numba's cache locators answer for both alike."""
    return 0


def cacheable(part):
    """True when ``part`` (``"epoch"`` or ``"layers"``) can be compiled once and loaded by later
    processes: numba caches its code and fastnn has a folder for its markers (and the epoch module)."""
    if part in _not_cached or folder() is None:
        return False
    return kernels_cacheable() if part == "layers" else True


def not_cached(part, reason):
    """Record that ``part`` turned out impossible to cache (and warn, once per process)."""
    _not_cached[part] = reason
    warn_if_uncached(stacklevel=3)


def uncached_reason():
    """Why some part of the kernels cannot be cached here, with the way out; None when all can."""
    problems = []
    if folder() is None:
        problems.append("fastnn's folders refuse files (" + "; ".join(_folders[cache_dir()][1]) + ")")
    if not kernels_cacheable():
        where = [f"$NUMBA_CACHE_DIR ({os.environ['NUMBA_CACHE_DIR']})"] if os.environ.get("NUMBA_CACHE_DIR") else []
        where += [os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__"),
                  "numba's folder in the user's cache"]
        problems.append(f"numba's refuse files too ({', '.join(where)})" if folder() is None
                        else f"numba's folders refuse files ({', '.join(where)})")
    problems += [f"the {part} kernels: {reason}" for part, reason in _not_cached.items()]
    if not problems:
        return None
    return ("no writable cache: " + "; ".join(problems) + ". The kernels compile in memory in every process "
            "that needs them (10-15 s per part; a short fit trains on the NumPy reference ops instead). "
            "Set NUMBA_CACHE_DIR or FASTNN_CACHE_DIR to a writable folder to compile them once")


def warn_if_uncached(stacklevel=2):
    """One RuntimeWarning per process when some part cannot be cached, saying why and how to fix it."""
    global _warned
    reason = None if _warned else uncached_reason()
    if reason:
        _warned = True
        warnings.warn(f"numba backend: {reason}", RuntimeWarning, stacklevel=stacklevel + 1)


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
        from fastnn import losses
        from fastnn.ops import activations, optimizers, symbolic

        from .epoch_codegen import PARTS

        tables = [module.__file__ for module in (activations, optimizers, symbolic, losses)]
        for path in [os.path.join(here, name) for name in _SOURCES + PARTS] + tables:
            with open(path, "rb") as f:
                h.update(f.read())
        _key = h.hexdigest()[:16]
    return _key


def _marker(part, dtype):
    return os.path.join(folder(), f"ready-{key()}-{part}-{dtype}")


def is_cached(part, dtype):
    """True when ``part`` of ``dtype`` loads from the disk cache instead of compiling. Where no
    marker of it exists under any key, without :func:`key` (which imports numba and llvmlite)."""
    if not cacheable(part):
        return False
    if _key is None and not _any_marker(part, dtype):
        return False
    return os.path.exists(_marker(part, dtype))


def _any_marker(part, dtype):
    end = f"-{part}-{dtype}"
    with contextlib.suppress(OSError):
        return any(name.startswith("ready-") and name.endswith(end) for name in os.listdir(folder()))
    return False


def mark_cached(part, dtype):
    """Record that ``part`` of ``dtype`` is in the cache (after it compiled or loaded); nothing when
    it cannot be cached (compiled in memory: the next process compiles it again)."""
    if not cacheable(part):
        return
    path = _marker(part, dtype)
    if not os.path.exists(path):
        with contextlib.suppress(OSError):  # a cache folder we cannot write: no marker, no harm
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with atomic_writer(path):
                pass


def switched_on(variable: str) -> bool:
    """An environment switch: on unless set to 0, false, no or off (unset or empty: on)."""
    return os.environ.get(variable, "").strip().lower() not in ("0", "false", "no", "off")


def background_enabled():
    return switched_on("FASTNN_BACKGROUND_COMPILE")


def start_background(dtype, parts=PARTS):
    """Compile the ``parts`` of ``dtype`` that are not cached yet in a process of their own, at idle
    priority; returns True when one was started (not when switched off or nothing is missing)."""
    missing = [part for part in parts if cacheable(part) and not is_cached(part, dtype)]
    if not missing or not background_enabled() or _running_here(dtype):
        return False
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", FASTNN_BACKGROUND_COMPILE="0",
               FASTNN_COMPILE_AFTER_PID=str(os.getpid()))
    try:
        _spawned.append((dtype, subprocess.Popen(
            [sys.executable, "-m", "fastnn.backends.numba.cache", dtype, *missing], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)))
    except OSError:
        return False
    return True


def _running_here(dtype):
    return any(d == dtype and p.poll() is None for d, p in _spawned)


def running():
    """True while a background compile holds this cache folder's lock."""
    if folder() is None:
        return False
    path = os.path.join(folder(), LOCK)
    if not os.path.exists(path):
        return False
    with _lock(path) as held:
        return not held


@contextlib.contextmanager
def _lock(path):
    """Try to take the exclusive lock at ``path``: yields True when taken (released on exit).
    Without ``fcntl`` (Windows) it always yields True: processes may then compile side by side,
    which numba's atomic cache writes make safe, only wasteful."""
    try:
        import fcntl
    except ImportError:
        yield True
        return
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


def wait_for_exit(pid, limit):
    """Wait until process ``pid`` has ended, or ``limit`` seconds have passed."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)


def _alive(pid):
    """Process ``pid`` runs (not ended, nor a zombie its parent has yet to reap)."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether it exists
    except OSError:  # gone (or another user's: not ours to wait for)
        return False
    with contextlib.suppress(OSError, IndexError):
        with open(f"/proc/{pid}/stat") as f:  # Linux: "pid (name) state ..."
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _compile(dtype, parts=PARTS):
    """The background process: compile the ``parts`` ``dtype`` misses, then log the CPU seconds spent.
    It first waits (``PARENT_WAIT_S`` at most) for the job that started it to end: at idle
    priority it still slowed a 4 s script by ~25% on 2 cores (their vCPUs share a core's units)."""
    _idle_priority()
    if folder() is None:
        return 0  # nowhere to keep what it would compile
    with _lock(os.path.join(folder(), LOCK)) as held:
        if not held:
            return 0  # another process is filling this cache
        parent = os.environ.get("FASTNN_COMPILE_AFTER_PID", "")
        if parent.isdigit():
            wait_for_exit(int(parent), PARENT_WAIT_S)
        from fastnn.backend import get_backend

        started, done = time.perf_counter(), []
        backend = get_backend("numba", num_threads=1)
        for part in parts:
            if cacheable(part) and not is_cached(part, dtype):
                backend.warm(part, dtype)
                done.append(part)
        usage = os.times()
        record = {"dtype": dtype, "parts": done, "wall_seconds": round(time.perf_counter() - started, 2),
                  "cpu_seconds": round(usage.user + usage.system, 2)}
        with atomic_writer(os.path.join(folder(), LOG)) as f:
            f.write(json.dumps(record).encode())
    return 0


if __name__ == "__main__":
    sys.exit(_compile(sys.argv[1], tuple(sys.argv[2:]) or PARTS))
