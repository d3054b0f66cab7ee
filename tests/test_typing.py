"""The public API is typed, and mypy (the dev extra) passes on the installed package, ``fastnn.backends``
included.

``fastnn.backends`` is installed from the folder ``backends/`` (setuptools' package-dir), which mypy
cannot follow from an editable install: the check lays the installed files out as one package
(links, or copies where links are refused) and runs ``mypy -p fastnn`` on it with the repository's
``[tool.mypy]`` settings. A second, small run checks that the layout really types ``fastnn.backends``:
a snippet that calls backend methods with wrong types must fail, on exactly those lines.
"""
from __future__ import annotations

import importlib.util
import inspect
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fastnn
import fastnn.backends
from fastnn.backend import Backend

CONFIG = Path(__file__).resolve().parents[1] / "pyproject.toml"

needs_mypy = pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                                reason="mypy is not installed (pip install 'fastnn[dev]')")


def _place(source: Path, target: Path) -> None:
    try:
        target.symlink_to(source, target_is_directory=source.is_dir())
    except OSError:  # no symlinks here (Windows without the privilege): copy
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)


@pytest.fixture(scope="module")
def installed_tree(tmp_path_factory):
    """A folder holding the installed ``fastnn`` with ``fastnn/backends`` in it, as mypy needs it."""
    root = tmp_path_factory.mktemp("typed")
    package = root / "src" / "fastnn"
    package.mkdir(parents=True)
    installed = Path(fastnn.__file__).parent
    backends = Path(fastnn.backends.__file__).parent
    for entry in installed.iterdir():
        if entry.name not in ("backends", "__pycache__"):
            _place(entry, package / entry.name)
    _place(backends, package / "backends")
    return root


def _mypy(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MYPYPATH=str(root / "src"))
    command = [sys.executable, "-m", "mypy", "--config-file", str(CONFIG), "--cache-dir", str(root / "cache"),
               "--no-error-summary", "--hide-error-context", *args]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)


@needs_mypy
@pytest.mark.skipif(not CONFIG.is_file(), reason="needs the repository's pyproject.toml ([tool.mypy])")
def test_mypy_passes_on_the_installed_package(installed_tree):
    result = _mypy(installed_tree, "-p", "fastnn")
    assert result.returncode == 0, f"mypy -p fastnn found problems:\n{result.stdout}{result.stderr}"


@needs_mypy
@pytest.mark.skipif(not CONFIG.is_file(), reason="needs the repository's pyproject.toml ([tool.mypy])")
def test_mypy_reads_the_backends_types(installed_tree):
    snippet = installed_tree / "snippet.py"
    snippet.write_text(textwrap.dedent("""\
        import numpy as np
        import fastnn
        from fastnn.backends.numba.backend import NumbaBackend
        from fastnn.backends.numpy_backend import NumpyBackend
        from fastnn.backends.cupy.backend import CupyBackend

        A = np.ones((2, 2))
        NumpyBackend().gemm(A, A, trans_a=True, alpha=2.0)
        NumbaBackend(num_threads="two")
        NumpyBackend().bias_act(A, None, act=3)
        CupyBackend(device="0")
        net = fastnn.Sequential(fastnn.Dense(2, 2), backend="numpy")
        net.fit(A, [0, 1], epochs="3")
        name: int = fastnn.get_backend("numpy").name
        """))
    result = _mypy(installed_tree, str(snippet))
    lines = [line for line in result.stdout.splitlines() if ": error:" in line]
    flagged = sorted({int(line.split(":")[1]) for line in lines})
    assert flagged == [9, 10, 11, 13, 14], result.stdout + result.stderr  # the wrong calls, nothing else
    assert '"num_threads"' in result.stdout and '"act"' in result.stdout and '"epochs"' in result.stdout


def _public_callables():
    from fastnn import on_dask, trainer
    from fastnn.backends.numba.backend import NumbaBackend
    from fastnn.backends.cupy.backend import CupyBackend

    seq = fastnn.Sequential
    yield from [seq.__init__, seq.fit, seq.predict, seq.predict_proba, seq.evaluate, seq.backprop, seq.forward,
                seq.save, seq.to, seq.summary, seq.export_onnx]
    yield from [fastnn.load, fastnn.get_backend, fastnn.set_backend, fastnn.use_backend, fastnn.available_backends,
                fastnn.default_backend, fastnn.register_backend, fastnn.gradcheck, fastnn.get_loss]
    yield from [fastnn.Dense.__init__, fastnn.Dense.forward, fastnn.Dense.backward, fastnn.LeakyReLU.__init__,
                fastnn.Dropout.__init__, fastnn.Sigmoid.forward, fastnn.MSE.__call__, fastnn.CrossEntropy.rows]
    yield from [fastnn.SGD.__init__, fastnn.Adam.__init__, fastnn.AdamW.__init__, fastnn.RMSprop.__init__,
                fastnn.SGD.step]
    yield from [fastnn.Callback.on_epoch_end, fastnn.LambdaCallback.__init__, fastnn.EarlyStopping.__init__,
                fastnn.ModelCheckpoint.__init__, fastnn.LearningRateScheduler.__init__,
                fastnn.ReduceLROnPlateau.__init__, fastnn.History.__init__, fastnn.History.best_epoch]
    yield from [trainer.Trainer.__call__, trainer.Trainer.describe, on_dask.predict, on_dask.worker_threads]
    yield from [fastnn.MLPClassifier.fit, fastnn.MLPClassifier.partial_fit, fastnn.MLPClassifier.predict,
                fastnn.MLPClassifier.predict_proba, fastnn.MLPRegressor.fit, fastnn.MLPRegressor.predict]
    yield from [fastnn.datasets.load_mnist, fastnn.datasets.load_mnist_sample, fastnn.datasets.download_mnist,
                fastnn.datasets.read_idx, fastnn.datasets.write_idx]
    ops = [name for name, member in vars(Backend).items() if inspect.isfunction(member) and not name.startswith("_")]
    for cls in (Backend, NumbaBackend, CupyBackend):
        yield from [getattr(cls, name) for name in ops if name in vars(cls)]
    yield from [NumbaBackend.__init__, CupyBackend.__init__, NumbaBackend.warmup]


@pytest.mark.parametrize("function", list(_public_callables()), ids=lambda f: f.__qualname__)
def test_public_api_is_annotated(function):
    signature = inspect.signature(function)
    missing = [name for name, parameter in signature.parameters.items()
               if name not in ("self", "cls") and parameter.annotation is inspect.Parameter.empty]
    assert not missing, f"{function.__qualname__}: parameters without a type: {missing}"
    assert signature.return_annotation is not inspect.Signature.empty, f"{function.__qualname__}: no return type"
