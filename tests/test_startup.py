"""What a process pays before its first answer: ``from fastnn import MLPClassifier`` does not
import scikit-learn (a second of a small script), yet scikit-learn's tools take the estimator;
on a machine whose numba kernels are not compiled yet, a small job never imports numba; kernels
in numba's disk cache load without the set-up numba needs only to compile."""
import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import fastnn
from fastnn import MLPClassifier

from conftest import blobs


def _python(code, timeout=120, env=None):
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_estimator_does_not_import_sklearn():
    out = _python("""
        import sys, warnings
        import numpy as np
        from fastnn import MLPClassifier
        from fastnn.estimator import NotFittedError, ConvergenceWarning
        g = np.random.default_rng(0)
        X = np.vstack([g.normal(-2, 1, (60, 3)), g.normal(2, 1, (60, 3))])
        y = np.array(["a"] * 60 + ["b"] * 60)
        clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0, backend="numpy")
        try:
            clf.predict(X)
        except NotFittedError:
            pass
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            clf.fit(X, y)
        assert [w.category for w in caught] == [ConvergenceWarning], caught
        clf.predict(X), clf.predict_proba(X), clf.score(X, y), repr(clf), clf.get_params()
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("sklearn", "scipy")))
        """)
    assert out.strip() == "[]", out


def test_sklearn_takes_the_estimator_and_catches_its_errors_and_warnings():
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    from sklearn.base import clone, is_classifier
    from sklearn.exceptions import ConvergenceWarning, NotFittedError
    from sklearn.model_selection import GridSearchCV, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = blobs(n=120, n_features=5, n_classes=3)
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0, backend="numpy")
    assert is_classifier(clf) and is_classifier(make_pipeline(StandardScaler(), clf))
    assert clone(clf).get_params() == clf.get_params() and clone(clf) is not clf
    with pytest.raises(NotFittedError):  # scikit-learn's class, as check_is_fitted expects
        clf.predict(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=ConvergenceWarning)  # a filter on scikit-learn's class
        search = GridSearchCV(clf, {"alpha": [1e-4, 1e-2]}, cv=3).fit(X, y)
        scores = cross_val_score(clf, X, y, cv=3)  # stratified folds: it is known as a classifier
    assert search.best_params_["alpha"] in (1e-4, 1e-2) and scores.shape == (3,)


def test_cached_kernels_load_without_numba_compile_setup():
    pytest.importorskip("numba", reason="numba is not installed")
    from fastnn.backends.numba import cache as numba_cache
    if not numba_cache.kernels_cacheable():
        pytest.skip("numba has no writable cache folder here: every process compiles")
    X, y = blobs(n=300, n_features=6, n_classes=3)
    net = fastnn.Sequential(fastnn.Dense(6, 16), fastnn.Tanh(), fastnn.Dense(16, 3), backend="numba", seed=1)
    first = net.fit(X, y, epochs=2, batch_size=32, lr=0.1)  # compiles or loads: the disk cache holds them
    assert first.path.startswith("compiled whole epoch"), first.path
    out = _python(f"""
        import json, sys
        import numpy as np
        import fastnn
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from conftest import blobs
        X, y = blobs(n=300, n_features=6, n_classes=3)
        net = fastnn.Sequential(fastnn.Dense(6, 16), fastnn.Tanh(), fastnn.Dense(16, 3), backend="numba", seed=1)
        history = net.fit(X, y, epochs=2, batch_size=32, lr=0.1)
        P = net.predict_proba(X[:5])
        print(history.path.split(" (")[0])
        print("numba.np.linalg" in sys.modules)  # imported by numba's refresh(), which loading skips
        print(json.dumps(P.tolist()))
        """)
    path, refreshed, P = out.strip().splitlines()
    assert path == "compiled whole epoch" and refreshed == "False", out
    np.testing.assert_allclose(np.array(json.loads(P)), net.predict_proba(X[:5]), rtol=1e-6)


def test_a_cold_cache_trains_without_importing_numba(tmp_path):
    """A fresh machine (empty caches), the default backend (auto: numba): a small job trains at once
    on the reference ops, starts the background compile once, and its process never imports numba
    (~0.3 s of a small script) while it knows numba's thread limit and says what it picked."""
    numba = pytest.importorskip("numba", reason="numba is not installed")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), FASTNN_CACHE_DIR=str(tmp_path / "fastnn"),
               FASTNN_BACKGROUND_COMPILE="1")
    for name in ("FASTNN_DEFER_COMPILE", "FASTNN_BACKEND", "NUMBA_NUM_THREADS"):
        env.pop(name, None)
    out = _python("""
        import json, sys, warnings
        import numpy as np
        import fastnn
        from fastnn import MLPClassifier
        from fastnn.backends.numba import cache

        class Popen:  # the background compile, started but not run: its command is what counts
            started = []
            def __init__(self, command, **options):
                self.started.append(command[1:])
            def poll(self):
                return None  # still running
        cache.subprocess.Popen = Popen
        g = np.random.default_rng(0)
        X = g.normal(size=(120, 5)).astype(np.float32)
        y = (X[:, 0] > 0).astype(int)
        net = fastnn.Sequential(fastnn.Dense(5, 8), fastnn.ReLU(), fastnn.Dense(8, 2), seed=0)
        history = net.fit(X, y, epochs=2, batch_size=16, lr=0.1)
        net.predict(X), net.evaluate(X, y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning
            MLPClassifier(hidden_layer_sizes=(8,), max_iter=3).fit(X, y).predict(X)
        try:
            fastnn.get_backend("numba", num_threads=0)
        except ValueError as exc:
            refused = str(exc)
        print(json.dumps({"backend": net.backend.name, "default": fastnn.default_backend(), "path": history.path,
                          "started": Popen.started, "refused": refused,
                          "imported": sorted({m.split(".")[0] for m in sys.modules} & {"numba", "llvmlite"})}))
        """, env=env)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["imported"] == [], report
    assert report["backend"] == "numba" and report["default"][0] == "numba", report
    assert "reference ops" in report["path"] and "compile in the background" in report["path"], report
    assert report["started"] == [["-m", "fastnn.backends.numba.cache", "float32", "epoch", "layers"]], report  # once
    limit = numba.config.NUMBA_NUM_THREADS  # numba's own rule, in this process (the same environment)
    assert f"num_threads must be an integer from 1 to {limit} (NUMBA_NUM_THREADS), got 0" in report["refused"]
