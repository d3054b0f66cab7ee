"""Choosing a backend: get/set/use_backend, FASTNN_BACKEND, "auto", unknown and unavailable
names, third-party backends through entry points, and the ``backends`` import guard.

Every test runs on a private registry and instance cache (the ``registry``
fixture), and the current-backend ContextVar is put back afterwards, so nothing
here leaks into other tests.
"""
import contextvars
import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path

import pytest

import fastnn
import fastnn.selection as fb
from fastnn import Backend, BackendUnavailable

REPO = Path(__file__).resolve().parents[1]


class FakeBackend(Backend):
    """A usable backend with constructor options, to see what get_backend passes."""

    name = "fake"

    def __init__(self, device=None, flavour="plain"):
        super().__init__()
        self.device, self.flavour = device, flavour

    @staticmethod
    def unavailable_reason():
        return None


class NoGpuBackend(Backend):
    name = "nogpu"

    @staticmethod
    def unavailable_reason():
        return "no CUDA device found"


@pytest.fixture(autouse=True)
def registry(monkeypatch):
    """A private copy of the registry and an empty instance cache; the current backend restored."""
    monkeypatch.setattr(fb, "_BUILTIN", dict(fb._BUILTIN))
    monkeypatch.setattr(fb, "_instances", {})
    monkeypatch.delenv("FASTNN_BACKEND", raising=False)
    fastnn.register_backend("fake", FakeBackend)
    token = fb._current.set(None)
    yield
    fb._current.reset(token)


# ---- get / set / use -----------------------------------------------------------
def test_default_is_auto_and_instances_are_cached(backend_status):
    be = fastnn.get_backend()
    expected = "numba" if backend_status["numba"][0] else "numpy"
    assert be.name == expected and be is fastnn.get_backend("auto") is fastnn.get_backend(expected)
    assert fastnn.get_backend(be) is be  # an instance is returned as it is
    numpy = fastnn.get_backend("numpy")
    assert numpy is fastnn.get_backend("numpy") is fastnn.get_backend(" NumPy ")


def test_default_backend_says_what_and_why(monkeypatch, backend_status):
    name, why = fb.default_backend()
    assert name == ("numba" if backend_status["numba"][0] else "numpy") and why.startswith("auto: ")
    monkeypatch.setenv("FASTNN_BACKEND", "numpy")
    assert fb.default_backend() == ("numpy", "set by FASTNN_BACKEND")
    with fastnn.use_backend("fake"):
        assert fb.default_backend() == ("fake", "set by set_backend/use_backend")


def test_every_entry_point_follows_the_default(tmp_path, backend_status):
    expected = "numba" if backend_status["numba"][0] else "numpy"
    net = fastnn.Sequential(fastnn.Dense(3, 2), seed=0)
    assert net.backend.name == expected
    net.save(tmp_path / "m.npz")
    assert fastnn.load(tmp_path / "m.npz").backend.name == expected
    with fastnn.use_backend("numpy"):
        assert fastnn.Sequential(fastnn.Dense(3, 2)).backend.name == "numpy"
        assert fastnn.load(tmp_path / "m.npz").backend.name == "numpy"


def test_options_reach_the_constructor():
    plain = fastnn.get_backend("fake")
    spicy = fastnn.get_backend("fake", flavour="spicy")
    assert plain.flavour == "plain" and spicy.flavour == "spicy" and plain is not spicy
    assert fastnn.get_backend("fake", flavour="spicy") is spicy
    assert fastnn.get_backend("fake:1").device == 1
    with pytest.raises(ValueError, match="device number"):
        fastnn.get_backend("fake:gpu")


def test_set_backend():
    returned = fastnn.set_backend("fake")
    assert isinstance(returned, FakeBackend) and fastnn.get_backend() is returned
    fastnn.set_backend("numpy")
    assert fastnn.get_backend().name == "numpy"


def test_use_backend_nests_and_restores():
    with fastnn.use_backend("fake") as outer:
        assert fastnn.get_backend() is outer
        with fastnn.use_backend("numpy") as inner:
            assert inner.name == "numpy" and fastnn.get_backend() is inner
            with fastnn.use_backend(outer):  # an instance works too
                assert fastnn.get_backend() is outer
            assert fastnn.get_backend() is inner
        assert fastnn.get_backend() is outer
    assert fastnn.get_backend() is fastnn.get_backend("auto")


def test_use_backend_restores_after_an_exception():
    with pytest.raises(KeyError):
        with fastnn.use_backend("fake"):
            fastnn.set_backend("fake:2")  # even a set inside the block is undone
            raise KeyError("boom")
    assert fastnn.get_backend() is fastnn.get_backend("auto")


def test_a_bad_use_backend_changes_nothing():
    with fastnn.use_backend("fake"):
        with pytest.raises(ValueError, match="unknown backend"):
            with fastnn.use_backend("nope"):
                pass  # pragma: no cover
        assert isinstance(fastnn.get_backend(), FakeBackend)


def test_a_model_binds_its_backend_when_built():
    with fastnn.use_backend("fake"):
        net = fastnn.Sequential(fastnn.Dense(3, 2), seed=0)
    assert isinstance(net.backend, FakeBackend) and fastnn.get_backend() is fastnn.get_backend("auto")
    assert net.predict([[1.0, 2.0, 3.0]]).shape == (1,)


def test_contexts_are_isolated_across_threads():
    seen, errors = {}, []
    barrier = threading.Barrier(2, timeout=10)

    def worker(name):
        try:
            with fastnn.use_backend(name):
                barrier.wait()  # both threads are inside their blocks now
                seen[name] = fastnn.get_backend().name
                barrier.wait()
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("fake", "numpy")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and seen == {"fake": "fake", "numpy": "numpy"}

    # set_backend in another thread, or in a copied context, leaves this one alone
    t = threading.Thread(target=fastnn.set_backend, args=("fake",))
    t.start()
    t.join()
    contextvars.copy_context().run(fastnn.set_backend, "fake")
    assert fastnn.get_backend() is fastnn.get_backend("auto")


# ---- FASTNN_BACKEND --------------------------------------------------------------
def test_env_var_sets_the_default(monkeypatch):
    monkeypatch.setenv("FASTNN_BACKEND", "fake")
    assert isinstance(fastnn.get_backend(), FakeBackend)
    with fastnn.use_backend("numpy"):  # an explicit choice wins over the environment
        assert fastnn.get_backend().name == "numpy"
    monkeypatch.setenv("FASTNN_BACKEND", "")
    assert fastnn.get_backend() is fastnn.get_backend("auto")


def test_env_var_errors_name_the_variable(monkeypatch):
    monkeypatch.setenv("FASTNN_BACKEND", "nope")
    with pytest.raises(ValueError, match=r"FASTNN_BACKEND='nope': unknown backend 'nope'; known backends: .*numpy"):
        fastnn.get_backend()
    fastnn.register_backend("nogpu", NoGpuBackend)
    monkeypatch.setenv("FASTNN_BACKEND", "nogpu")
    with pytest.raises(BackendUnavailable, match="FASTNN_BACKEND='nogpu'.*no CUDA device found"):
        fastnn.get_backend()
    assert fastnn.get_backend("numpy").name == "numpy"  # an explicit name does not read it


# ---- unknown and unavailable -------------------------------------------------------
def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        fastnn.get_backend("tensorflow")
    message = str(info.value)
    assert "unknown backend 'tensorflow'" in message
    for known in ("numpy", "numba", "cupy", "fake", "auto"):
        assert known in message
    with pytest.raises(ValueError, match="unknown backend 'tensorflow'"):
        fastnn.Sequential(fastnn.Dense(2, 2), backend="tensorflow")
    with pytest.raises(TypeError, match="backend must be a name or a Backend"):
        fastnn.get_backend(3)


def test_unavailable_by_reason_gives_reason_and_hint():
    fastnn.register_backend("cupy", NoGpuBackend)
    with pytest.raises(BackendUnavailable,
                       match=r"backend 'cupy' is unavailable: no CUDA device found; pip install 'fastnn\[cuda12\]'"):
        fastnn.get_backend("cupy")
    assert fastnn.available_backends()["cupy"] == (
        False, "no CUDA device found; pip install 'fastnn[cuda12]' (or 'fastnn[cuda13]', matching your CUDA)")
    fastnn.register_backend("nogpu", NoGpuBackend)  # a third party's: the reason, no hint of ours
    with pytest.raises(BackendUnavailable, match=r"backend 'nogpu' is unavailable: no CUDA device found$"):
        fastnn.get_backend("nogpu")


def test_unavailable_by_import_failure_gives_reason_and_hint():
    fastnn.register_backend("numba", "fastnn_no_such_module_for_tests:NumbaBackend")
    with pytest.raises(BackendUnavailable) as info:
        fastnn.get_backend("numba")
    message = str(info.value)
    assert "backend 'numba' is unavailable" in message
    assert "No module named 'fastnn_no_such_module_for_tests'" in message
    assert "pip install 'fastnn[numba]'" in message
    assert isinstance(info.value, RuntimeError)
    available, reason = fastnn.available_backends()["numba"]
    assert not available and "pip install 'fastnn[numba]'" in reason


def test_available_backends_shape():
    status = fastnn.available_backends()
    assert {"numpy", "numba", "cupy", "fake"} <= set(status)
    assert status["numpy"] == (True, "")
    for name, (available, reason) in status.items():
        assert isinstance(available, bool) and isinstance(reason, str)
        assert available == (reason == ""), name


def test_real_backends_are_available_or_say_why():
    status = fastnn.available_backends()
    for name in ("numba", "cupy"):
        available, reason = status[name]
        if available:
            assert fastnn.get_backend(name).name == name
        else:
            assert "pip install" in reason, reason
            with pytest.raises(BackendUnavailable) as info:
                fastnn.get_backend(name)
            assert str(info.value) == f"backend {name!r} is unavailable: {reason}"


# ---- auto ---------------------------------------------------------------------
@pytest.mark.parametrize("usable, expected", [
    ({"cupy", "numba", "numpy"}, "numba"),  # the GPU only when named: a small job cannot win there
    ({"cupy", "numpy"}, "numpy"),
    ({"numba", "numpy"}, "numba"),
    ({"numpy"}, "numpy"),
])
def test_auto_picks_the_best_available(usable, expected):
    for name in ("cupy", "numba"):
        why = None if name in usable else "no"
        fastnn.register_backend(name, type(f"{name}Fake", (FakeBackend,), {
            "name": name, "unavailable_reason": staticmethod(lambda why=why: why)}))
    be = fastnn.get_backend("auto")
    assert be.name == expected and be is fastnn.get_backend(expected)


def test_auto_on_this_machine():
    status = fastnn.available_backends()
    expected = "numba" if status["numba"][0] else "numpy"
    assert fastnn.get_backend("auto").name == expected
    with fastnn.use_backend("auto"):
        assert fastnn.get_backend().name == expected


# ---- third-party backends ------------------------------------------------------
def test_entry_point_backend(monkeypatch, tmp_path):
    (tmp_path / "fastnn_plugin_for_tests.py").write_text(
        "from fastnn import Backend\n\n\n"
        "class PluginBackend(Backend):\n"
        "    name = 'plugin'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fastnn_plugin_for_tests", raising=False)
    points = [metadata.EntryPoint(name="plugin", value="fastnn_plugin_for_tests:PluginBackend",
                                  group="fastnn.backends"),
              metadata.EntryPoint(name="numpy", value="fastnn_plugin_for_tests:PluginBackend",
                                  group="fastnn.backends")]
    asked = []

    def entry_points(group=None):
        asked.append(group)
        return [ep for ep in points if ep.group == group]

    monkeypatch.setattr(fb.metadata, "entry_points", entry_points)
    be = fastnn.get_backend("plugin")
    assert type(be).__name__ == "PluginBackend" and be.name == "plugin"
    assert "fastnn.backends" in asked
    assert fastnn.available_backends()["plugin"] == (True, "")
    assert type(fastnn.get_backend("numpy")).__name__ == "NumpyBackend"  # a plugin cannot take a built-in name
    net = fastnn.Sequential(fastnn.Dense(2, 2), backend="plugin", seed=0)
    assert net.backend is be


def test_broken_entry_points_do_not_break_fastnn(monkeypatch):
    def broken(group=None):
        raise RuntimeError("a broken distribution")
    monkeypatch.setattr(fb.metadata, "entry_points", broken)
    assert fastnn.get_backend("numpy").name == "numpy"
    assert fastnn.available_backends()["numpy"] == (True, "")


def test_register_backend_by_path():
    fastnn.register_backend("fake2", "tests_missing_pkg.sub:Thing")
    with pytest.raises(BackendUnavailable, match="install the package that provides it"):
        fastnn.get_backend("fake2")


# ---- the import guard ----------------------------------------------------------
def test_backends_refuses_a_second_import_name():
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); import backends"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "must be imported as 'fastnn.backends', not 'backends'" in result.stderr


def test_backends_imports_as_fastnn_backends():
    import fastnn.backends.numpy_backend as module
    assert issubclass(module.NumpyBackend, Backend)
