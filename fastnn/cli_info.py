"""``fastnn info`` (versions, backends, threads, BLAS, GPU, optional packages, MNIST) and
``fastnn warmup`` (compile the numba kernels once, into the disk cache)."""
from __future__ import annotations

import os
import platform
import warnings

import numpy as np

from .cli_common import CLIError, _say

def _value_text(value):
    if isinstance(value, dict):
        return ", ".join(f"{k} {_value_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "; ".join(_value_text(v) for v in value) if value else "none"
    return str(value)


def _package_version(name):
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def cmd_warmup(args, parser_error):
    from .backend import get_backend

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="numba backend: no writable cache")  # the error below says it
        backend = get_backend("numba")
    from .backends.numba import cache as numba_cache

    reason = numba_cache.uncached_reason()
    if reason:
        raise CLIError(f"nothing would be kept: {reason}")
    seconds = backend.warmup()  # seconds per part (whole-epoch trainer, layer kernels)
    if args.mpi:
        seconds[numba_cache.RANKS] = sum(backend.warm(numba_cache.RANKS, dtype) for dtype in ("float32", "float64"))
    _say(f"numba backend ready in {sum(seconds.values()):.1f} s: its compiled code is cached on disk, "
         f"so later runs start without compiling")
    return 0


def cmd_info(args, parser_error):
    from . import __file__ as package_file, __version__
    from .backend import available_backends, default_backend, get_backend
    from .datasets import mnist

    _say(f"fastnn {__version__} ({os.path.dirname(package_file)})")
    _say(f"Python {platform.python_version()} ({platform.python_implementation()}) on "
         f"{platform.platform()}, {os.cpu_count()} CPUs")
    _say(f"numpy {np.__version__}")
    _say("backends:")
    for name, (available, reason) in available_backends().items():
        if not available:
            _say(f"  {name}: unavailable: {reason}")
            continue
        _say(f"  {name}: available")
        try:
            with warnings.catch_warnings():  # shown below, as the backend's disk_cache
                warnings.filterwarnings("ignore", message="numba backend: no writable cache")
                details = get_backend(name).info()
        except Exception as exc:  # info is diagnostics: show the problem, list the rest
            details = {"info failed": f"{type(exc).__name__}: {exc}"}
        for key, value in details.items():
            if isinstance(value, (list, tuple)) and value and all(isinstance(v, dict) for v in value):
                _say(f"    {key}:")  # e.g. one BLAS library per line
                for item in value:
                    _say(f"      - {_value_text(item)}")
            else:
                _say(f"    {key}: {_value_text(value)}")
    name, why = default_backend()
    _say(f"default backend: {name} ({why}); every entry point (Sequential, fastnn.load, MLPClassifier, "
         f"this command) uses it when no backend is named")
    extras = {"tqdm": "tqdm", "matplotlib": "matplotlib", "Pillow": "pillow", "scikit-learn": "scikit-learn"}
    _say("optional: " + ", ".join(f"{label} {_package_version(dist)}" for label, dist in extras.items()))
    try:
        found = mnist.locate()
        _say(f"full MNIST: found in {os.path.dirname(found['train_images'])}")
    except mnist.MNISTNotFound:
        where = ", ".join(folder for folder, _ in mnist.search_folders())
        _say(f"full MNIST: not found (looked in {where}); the bundled sample is always there")
    return 0
