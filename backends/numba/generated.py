"""Generated kernel modules: written to the cache folder under a name that hashes their source, then
imported from there.

numba's ``cache=True`` needs a real file (it refuses functions made by ``exec``) and notices edits
only to the file that defines a kernel: a new source (an edited generator, template, op table or
helper it calls) gives a new file name, so a fresh compile. With no folder that takes files, the
module is made from its source in memory, without numba's cache.
"""
from __future__ import annotations

import hashlib
import importlib.util
import linecache
import os
import sys
import threading
import types

from fastnn.files import atomic_writer

from . import cache as numba_cache
from .quick_load import quick

_lock = threading.Lock()
_modules: dict[str, types.ModuleType] = {}  # prefix -> module


def load(prefix, part, make_source, depends_on=()):
    """The module ``prefix_<hash>`` made from ``make_source(cache)`` (``cache=False``: kernels without
    numba's disk cache), imported once per process. ``part`` is its part of the cache
    (``numba_cache.cacheable``); ``depends_on``: files whose kernels it calls (their edits must give
    a new module too)."""
    with _lock:
        module = _modules.get(prefix)
        if module is None:
            text = make_source(True)
            name = f"{prefix}_{_digest(text, depends_on)}"
            folder = numba_cache.folder()
            if folder is not None and numba_cache.cacheable(part):
                try:
                    module = _import_file(name, os.path.join(folder, name + ".py"), text)
                except (OSError, RuntimeError) as exc:  # the folder went read-only; numba found none
                    if isinstance(exc, RuntimeError) and "no locator available" not in str(exc):
                        raise
                    numba_cache.not_cached(part, f"{type(exc).__name__}: {' '.join(str(exc).split())}")
            if module is None:
                module = _import_source(name, make_source(False))
            _modules[prefix] = module
        return module


def forget(prefix):
    """Load ``prefix`` afresh on next use (tests)."""
    with _lock:
        _modules.pop(prefix, None)


def _digest(text, depends_on):
    import numba

    h = hashlib.sha256(f"{numba.__version__} {sys.version}".encode())
    h.update(text.encode("utf-8"))
    for path in depends_on:
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def _write(path, text):
    """The module's source at ``path``, written atomically (a second process may write it too)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_writer(path) as f:
        f.write(text.encode("utf-8"))


def _import_file(name, path, text):
    if not os.path.exists(path):
        _write(path, text)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # numba's cache locates a kernel through its module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    quick(vars(module))  # its kernels load from numba's cache without numba's compile set-up
    return module


def _import_source(name, text):
    """The module from its source, in memory: numba compiles its kernels for this process only."""
    filename = f"<{name}>"
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)  # for tracebacks
    module = types.ModuleType(name)
    module.__file__ = filename
    sys.modules[name] = module
    exec(compile(text, filename, "exec"), module.__dict__)  # noqa: S102 - our own generated source
    return module
