"""No writable cache anywhere (a read-only install, home and temp folder): the numba backend still
imports and trains, its kernels compiled in memory, and says so in one warning.

Unwritable in ways that hold as root, which ignores permissions: every cache folder lies under a
regular file, and the package runs from a copy whose ``__pycache__`` entries are regular files
(numba's in-tree cache). Python falls back to /tmp when $TMPDIR is unusable, so the subprocesses
point ``tempfile.tempdir`` under the file too.
"""
import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest

import fastnn

numba_backend = pytest.importorskip("fastnn.backends.numba.backend", reason="numba is not installed")
from fastnn.backends.numba import cache as numba_cache, epoch_codegen as numba_epoch_codegen, generated  # noqa: E402


@pytest.fixture(scope="module")
def read_only(tmp_path_factory):
    """``(site, blocker, env)``: a copy of the package that nothing can be written beside, a regular
    file every cache path lies under, and the environment that points there."""
    root = tmp_path_factory.mktemp("read-only")
    site = root / "site"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(os.path.dirname(fastnn.__file__), site / "fastnn", ignore=skip)
    shutil.copytree(os.path.dirname(os.path.dirname(numba_cache.__file__)), site / "fastnn" / "backends", ignore=skip)
    for folder, _, _ in os.walk(site):
        (site / folder / "__pycache__").write_text("")  # no folder can be made there
    blocker = root / "file"
    blocker.write_text("")
    env = dict(os.environ, PYTHONPATH=str(site), HOME=str(blocker / "home"), TMPDIR=str(blocker / "tmp"),
               TEMP=str(blocker / "tmp"), TMP=str(blocker / "tmp"), XDG_CACHE_HOME=str(blocker / "cache"),
               NUMBA_CACHE_DIR=str(blocker / "numba"), FASTNN_DEFER_COMPILE="1", FASTNN_BACKGROUND_COMPILE="1")
    for name in ("FASTNN_CACHE_DIR", "FASTNN_BACKEND"):
        env.pop(name, None)
    return site, blocker, env


def _python(read_only, code, timeout=120):
    site, blocker, env = read_only
    prelude = f"import tempfile; tempfile.tempdir = {str(blocker / 'tmp')!r}\n"
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=site.parent, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _fastnn(read_only, *args, timeout=120):
    code = f"import runpy, sys; sys.argv = ['fastnn', *{list(args)!r}]; runpy.run_module('fastnn', run_name='__main__')"
    return _python(read_only, code, timeout)


def test_nothing_is_writable_and_fastnn_imports(read_only):
    site, blocker, _ = read_only
    result = _python(read_only, "import fastnn\nfrom fastnn.backends.numba import cache as c\n"
                                "print(fastnn.__file__, c.folder(), c.kernels_cacheable(), c.cacheable('epoch'), "
                                "c.cacheable('layers'))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(site / "fastnn" / "__init__.py"), "None", "False", "False", "False"]
    assert result.stderr == ""  # importing says nothing: the warning comes with the backend


def test_fastnn_train_trains_and_warns_once(read_only):
    result = _fastnn(read_only, "train", "--epochs", "1", "--limit", "200")
    assert result.returncode == 0, result.stderr
    err = result.stderr.strip().splitlines()
    assert len(err) == 1, result.stderr
    assert err[0].startswith("fastnn train: warning: numba backend: no writable cache: ")
    assert "Set NUMBA_CACHE_DIR or FASTNN_CACHE_DIR to a writable folder" in err[0]
    assert str(read_only[1] / "numba") in err[0]  # where it looked
    assert "on the numba backend" in result.stdout and "epoch   1: loss" in result.stdout
    # a short job on the reference ops, and no background compile that could keep nothing
    assert "no writable cache to keep them for later runs" in result.stdout
    assert "in the background" not in result.stdout


def test_fastnn_warmup_says_nothing_would_be_kept(read_only):
    result = _fastnn(read_only, "warmup")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastnn warmup: error: nothing would be kept: no writable cache")


FIT = """
import json, warnings
import numpy as np
import fastnn
from fastnn.backends.numba import cache as numba_cache, kernels as numba_kernels, layer_ops

g = np.random.default_rng(0)
X, y = g.random((300, 20), dtype=np.float32), g.integers(0, 3, 300)

def fit(backend):
    net = fastnn.Sequential(fastnn.Dense(20, 8), fastnn.ReLU(), fastnn.Dense(8, 3), backend=backend, seed=0)
    history = net.fit(X, y, epochs=2, batch_size=16, lr=0.1)
    return history.path, net.predict_proba(X)

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    paths, P = {}, {}
    for part, compiled in (("epoch", True), ("layers", False)):
        paths[part], P[part] = fit(fastnn.get_backend("numba", compiled=compiled, defer_compile=False))
    _, P["numpy"] = fit("numpy")
ops = layer_ops.load()  # the layer path's element-wise kernels: a module generated from the op tables
print(json.dumps({
    "warnings": [str(w.message) for w in caught],
    "paths": paths,
    "differences": [float(np.abs(P[part] - P["numpy"]).max()) for part in ("epoch", "layers")],
    "layer module": [ops.__name__, ops.__file__],
    "compiled kernels": [len(ops.bias_act.signatures), len(ops.act_backward.signatures),
                         len(ops.update_sgd.signatures)],
    "cache flag": [numba_kernels.CACHE, ops._K["cache"]],
    "cached": [numba_cache.is_cached(part, "float32") for part in numba_cache.PARTS],
    "background": numba_cache.start_background("float32"),
}))
"""


@pytest.mark.slow
def test_a_numba_fit_compiles_in_memory_and_warns_once(read_only):
    """Both paths on numba's own kernels (the compiled epoch and the layer kernels), compiled for
    this process only: a cold compile of the epoch, ~12 s on 2 cores."""
    result = _python(read_only, FIT, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report["warnings"]) == 1 and "no writable cache" in report["warnings"][0], report["warnings"]
    assert report["paths"]["epoch"].startswith("compiled whole epoch"), report["paths"]
    assert report["paths"]["layers"].startswith("layer by layer"), report["paths"]
    assert max(report["differences"]) < 1e-4  # the same training as the reference
    # the layer kernels: a module generated from the op tables, made in memory (no file to import
    # from, no numba cache), and compiled for this process: the fit called them
    name, file = report["layer module"]
    assert name.startswith("fastnn_layer_ops_") and file == f"<{name}>", report["layer module"]
    assert min(report["compiled kernels"]) >= 1 and report["cache flag"] == [False, False]
    assert report["cached"] == [False, False] and report["background"] is False
    assert read_only[1].is_file()


# ---- the pieces, in this process ----------------------------------------------------------
@pytest.fixture
def fresh(monkeypatch):
    """numba_cache as in a new process (its answers are kept per process)."""
    monkeypatch.setattr(numba_cache, "_folders", {})
    monkeypatch.setattr(numba_cache, "_not_cached", {})
    monkeypatch.setattr(numba_cache, "_warned", False)
    return numba_cache


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners")
def test_a_read_only_home_falls_back_to_a_private_temp_folder(fresh, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("FASTNN_CACHE_DIR", str(tmp_path / "file" / "cache"))
    monkeypatch.setattr(numba_cache.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    assert numba_cache.folder() == numba_cache._private_temp_path() == str(tmp_path / "tmp" / f"fastnn-{os.getuid()}")
    assert numba_cache.cacheable("epoch") and numba_cache.uncached_reason() is None


def test_no_folder_means_nothing_cached_nor_compiled_in_the_background(fresh, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("FASTNN_CACHE_DIR", str(tmp_path / "file" / "cache"))
    monkeypatch.setattr(numba_cache.tempfile, "gettempdir", lambda: str(tmp_path / "file" / "tmp"))
    monkeypatch.setenv("FASTNN_BACKGROUND_COMPILE", "1")
    monkeypatch.setattr(numba_cache.subprocess, "Popen", lambda *a, **k: pytest.fail("a background compile"))
    assert numba_cache.folder() is None
    assert not numba_cache.cacheable("epoch") and not numba_cache.cacheable("layers")
    numba_cache.mark_cached("epoch", "float32")  # nowhere to keep it: nothing, no error
    assert not numba_cache.is_cached("epoch", "float32") and not numba_cache.running()
    assert numba_cache.start_background("float32") is False
    reason = numba_cache.uncached_reason()
    assert f"{tmp_path / 'file' / 'cache'}: Not a directory" in reason
    assert f"{tmp_path / 'file' / 'tmp'}" in reason and "FASTNN_CACHE_DIR" in reason
    with pytest.warns(RuntimeWarning, match="numba backend: no writable cache"):
        numba_cache.warn_if_uncached()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        numba_cache.warn_if_uncached()  # once per process


def test_layers_uncached_while_the_epoch_caches(fresh, tmp_path, monkeypatch):
    """numba has no folder for the package's kernels, fastnn has one for the epoch's module."""
    monkeypatch.setenv("FASTNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(numba_cache, "_kernels_cacheable", False)
    monkeypatch.setenv("FASTNN_BACKGROUND_COMPILE", "1")
    started = []
    monkeypatch.setattr(numba_cache.subprocess, "Popen", lambda *a, **k: started.append(a))
    assert numba_cache.cacheable("epoch") and not numba_cache.cacheable("layers")
    numba_cache.mark_cached("layers", "float64")
    assert not numba_cache.is_cached("layers", "float64")
    assert "numba's folders refuse files" in numba_cache.uncached_reason()
    assert numba_cache.start_background("float64") is True  # for the epoch, which it can keep
    numba_cache.mark_cached("epoch", "float64")
    started.clear()
    assert numba_cache.start_background("float64") is False and not started  # nothing left it could keep


def test_numba_finds_a_cache_here_and_the_kernels_use_it(fresh):
    from fastnn.backends.numba import kernels as numba_kernels

    assert numba_cache.kernels_cacheable() and numba_kernels.CACHE is True
    assert numba_kernels.KERNEL["cache"] is True


def test_the_in_memory_epoch_module_differs_only_in_its_cache_flag():
    cached, uncached = numba_epoch_codegen.source(), numba_epoch_codegen.source(cache=False)
    changed = [(a, b) for a, b in zip(cached.splitlines(), uncached.splitlines()) if a != b]
    assert len(changed) == 1 and "cache=True" in changed[0][0] and "cache=False" in changed[0][1]



def test_an_epoch_module_numba_cannot_cache_is_made_in_memory(fresh, tmp_path, monkeypatch):
    """The folder took the module, but numba found no cache folder for it after all."""
    monkeypatch.setenv("FASTNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(generated, "_modules", {})

    def no_locator(name, path, text):
        raise RuntimeError(f"cannot cache function 'epoch': no locator available for file {path!r}")
    monkeypatch.setattr(generated, "_import_file", no_locator)
    monkeypatch.setattr(generated, "_import_source", lambda name, text: ("in memory", name))
    with pytest.warns(RuntimeWarning, match="the epoch kernels: RuntimeError: cannot cache function"):
        assert numba_epoch_codegen.load()[0] == "in memory"
    assert not numba_cache.cacheable("epoch") and numba_cache.cacheable("layers")
    numba_cache.mark_cached("epoch", "float32")
    assert not numba_cache.is_cached("epoch", "float32")

    def broken(name, path, text):
        raise RuntimeError("some other failure")  # not about the cache: raised as it is
    monkeypatch.setattr(generated, "_modules", {})
    monkeypatch.setattr(numba_cache, "_not_cached", {})
    monkeypatch.setattr(generated, "_import_file", broken)
    with pytest.raises(RuntimeError, match="some other failure"):
        numba_epoch_codegen.load()
