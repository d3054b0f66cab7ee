"""Options of the benchmark suite and what every saved run records about the machine.

``--impl torch,jax`` keeps only those implementations (``bench.run`` starts one
pytest process per implementation with it); ``--epoch-rounds N`` sets the timed
epochs per entry. Every JSON saved with ``--benchmark-json`` carries, under
``machine_info["fastnn"]``, the CPU, library versions, BLAS, the OpenBLAS
variables in effect and the command line.
"""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

import pytest

from .machine import CpuWatch
from .workloads import EPOCH_ROUNDS, IMPLS, OPENBLAS_VARS

LIBRARIES = ("fastnn", "numpy", "scipy", "numba", "llvmlite", "torch", "jax", "jaxlib",
             "pytest-benchmark", "threadpoolctl")


def pytest_addoption(parser):
    group = parser.getgroup("fastnn bench")
    group.addoption("--impl", default="", help=f"comma-separated implementations to run "
                    f"(default: all): {', '.join(IMPLS)}")
    group.addoption("--epoch-rounds", type=int, default=EPOCH_ROUNDS,
                    help=f"timed epochs per epoch benchmark (default {EPOCH_ROUNDS})")


def pytest_configure(config):
    chosen = [name.strip() for name in config.getoption("--impl").split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(IMPLS))
    if unknown:
        raise pytest.UsageError(f"--impl: unknown {', '.join(unknown)}; known: {', '.join(IMPLS)}")
    config._bench_impls = set(chosen)
    config._bench_cpu_watch = CpuWatch()


def pytest_collection_modifyitems(config, items):
    chosen = config._bench_impls
    if not chosen:
        return
    keep, drop = [], []
    for item in items:
        entry = getattr(item, "callspec", None) and item.callspec.params.get("entry")
        (keep if entry is None or entry.impl in chosen else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def epoch_rounds(request):
    return request.config.getoption("--epoch-rounds")


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _blas():
    """What threadpoolctl sees once NumPy and SciPy's BLAS are loaded (the OpenBLAS kernel in use)."""
    try:
        import numpy  # noqa: F401
        import scipy.linalg.cython_blas  # noqa: F401
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{key: info.get(key) for key in ("internal_api", "version", "architecture", "num_threads",
                                            "prefix")}
            for info in threadpool_info() if info.get("user_api") == "blas"]


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Keep the statistics, drop every round's time from ``--benchmark-json`` files.

    pytest-benchmark writes all rounds there, and µs-long matrix products and steps run
    hundreds of thousands of rounds each: hundreds of MB per run that nothing reads (the
    report takes medians, minima and round counts). ``--benchmark-save-data`` keeps them.
    """
    if config.getoption("benchmark_save_data"):
        return
    for bench in output_json.get("benchmarks", []):
        bench.get("stats", {}).pop("data", None)


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["fastnn"] = {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "openblas_env": {name: os.environ.get(name) for name in OPENBLAS_VARS},
        "versions": {name: _version(name) for name in LIBRARIES},
        "python": platform.python_version(),
        "blas": _blas(),
        "impls": sorted(config._bench_impls) or "all",
        "command": " ".join([os.path.basename(sys.executable), "-m", "pytest", *sys.argv[1:]]),
        # what other processes took of the CPUs during this session: above a few % timings are off
        "others_cpu_share": config._bench_cpu_watch.others_share(),
    }
