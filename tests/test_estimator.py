"""fastnn.MLPClassifier: scikit-learn's API, scikit-learn's numbers where the maths is the same,
scikit-learn's own estimator checks where it is installed, and no scikit-learn needed at all.
"""
import inspect
import pickle
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import fastnn
from fastnn import MLPClassifier, MLPRegressor
from fastnn.estimator import HAVE_SKLEARN, NotFittedError, _validation_split
from conftest import blobs

needs_sklearn = pytest.mark.skipif(not HAVE_SKLEARN, reason="scikit-learn is not installed")
SMALL = dict(hidden_layer_sizes=(16,), learning_rate_init=0.01, max_iter=40, random_state=0, backend="numpy")


@pytest.fixture(autouse=True)
def _quiet_convergence():
    # Short max_iter on purpose: the ConvergenceWarning is expected, not news.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastnn.estimator.ConvergenceWarning)
        yield


@pytest.fixture(scope="module")
def data():
    """Four overlapping blobs (spread 4): learnable, but not at 100%."""
    X, y = blobs(n=800, spread=4.0)
    return X[:600], y[:600], X[600:], y[600:]


# ---- the API ------------------------------------------------------------------
@needs_sklearn
def test_parameters_and_defaults_are_sklearns_plus_backend():
    from sklearn.neural_network import MLPClassifier as SkMLP

    ours, theirs = MLPClassifier().get_params(), SkMLP().get_params()
    assert set(ours) == set(theirs) | {"backend"}
    assert {name: ours[name] for name in theirs} == theirs
    assert ours["backend"] is None  # fastnn's default, as for Sequential
    with fastnn.use_backend("numpy"):  # a scoped default reaches the estimator too
        assert MLPClassifier(max_iter=1).fit([[0.0], [1.0]], [0, 1])._net.backend.name == "numpy"
    positional = [p.name for p in inspect.signature(MLPClassifier).parameters.values()
                  if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == ["hidden_layer_sizes", "activation"]  # the rest keyword-only, as sklearn


def test_params_round_trip_and_bad_names():
    clf = MLPClassifier(hidden_layer_sizes=(7, 5), solver="sgd", alpha=0.5)
    params = clf.get_params()
    assert params["hidden_layer_sizes"] == (7, 5) and params["solver"] == "sgd" and params["alpha"] == 0.5
    other = MLPClassifier().set_params(**params)
    assert other.get_params() == params
    with pytest.raises(ValueError, match="Invalid parameter"):
        clf.set_params(no_such_thing=1)
    assert "hidden_layer_sizes=(7, 5)" in repr(clf) and "alpha=0.5" in repr(clf)


@needs_sklearn
def test_clone_gives_an_unfitted_copy_with_the_same_params(data):
    from sklearn.base import clone

    clf = MLPClassifier(**SMALL).fit(*data[:2])
    copy = clone(clf)
    assert copy.get_params() == clf.get_params()
    with pytest.raises(NotFittedError):
        copy.predict(data[2])


def test_fit_predict_score_clears_the_bar(data):
    X, y, X_test, y_test = data
    for solver, lr in (("adam", 0.001), ("sgd", 0.05)):
        clf = MLPClassifier(hidden_layer_sizes=(32,), solver=solver, learning_rate_init=lr, max_iter=60,
                            random_state=0, backend="numpy")
        assert clf.fit(X, y) is clf
        assert clf.score(X_test, y_test) >= 0.90, solver  # scikit-learn gets 0.92 (adam), 0.96 (sgd)
        assert clf.predict(X_test).shape == (200,)
        np.testing.assert_array_equal(clf.classes_, [0, 1, 2, 3])
        assert clf.n_features_in_ == 20 and clf.n_layers_ == 3 and clf.n_outputs_ == 4
        assert clf.out_activation_ == "softmax" and 1 <= clf.n_iter_ <= 60 and clf.t_ == 600 * clf.n_iter_
        assert [c.shape for c in clf.coefs_] == [(20, 32), (32, 4)]
        assert [b.shape for b in clf.intercepts_] == [(32,), (4,)]
        assert all(type(c) is np.ndarray for c in clf.coefs_ + clf.intercepts_)


def test_string_labels_and_predict_proba(data):
    X, y, X_test, y_test = data
    names = np.array(["ant", "bee", "cat", "dog"])
    clf = MLPClassifier(**SMALL).fit(X, names[y])
    np.testing.assert_array_equal(clf.classes_, names)
    predicted = clf.predict(X_test)
    assert predicted.dtype == names.dtype and set(predicted) <= set(names)
    P = clf.predict_proba(X_test)
    assert P.shape == (200, 4) and np.all(P >= 0)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(names[np.argmax(P, axis=1)], predicted)
    np.testing.assert_allclose(clf.predict_log_proba(X_test), np.log(P))
    assert clf.score(X_test, names[y_test]) >= 0.85


def test_binary_uses_one_logistic_output(data):
    X, y, X_test, y_test = data
    labels = np.where(y < 2, "no", "yes")
    clf = MLPClassifier(**SMALL).fit(X, labels)
    assert clf.n_outputs_ == 1 and clf.out_activation_ == "logistic" and clf.coefs_[-1].shape == (16, 1)
    P = clf.predict_proba(X_test)
    assert P.shape == (200, 2)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(clf.predict(X_test), np.where(P[:, 1] > 0.5, "yes", "no"))
    assert clf.score(X_test, np.where(y_test < 2, "no", "yes")) >= 0.9


def test_multilabel_indicator_targets(data):
    X, y, X_test, _ = data
    Y = np.stack([y % 2, y // 2, (y == 3)], axis=1).astype(int)
    clf = MLPClassifier(**SMALL).fit(X, Y)
    np.testing.assert_array_equal(clf.classes_, [0, 1, 2])
    assert clf.out_activation_ == "logistic" and clf.n_outputs_ == 3
    assert clf.predict(X_test).shape == (200, 3) and set(np.unique(clf.predict(X_test))) <= {0, 1}
    assert clf.predict_proba(X_test).shape == (200, 3)
    assert clf.score(X, Y) > 0.8  # subset accuracy


def test_same_random_state_same_model_and_another_differs(data):
    X, y, X_test, _ = data
    a, b = MLPClassifier(**SMALL).fit(X, y), MLPClassifier(**SMALL).fit(X, y)
    assert a.loss_curve_ == b.loss_curve_
    np.testing.assert_array_equal(a.predict_proba(X_test), b.predict_proba(X_test))
    c = MLPClassifier(**{**SMALL, "random_state": 1}).fit(X, y)
    assert not np.array_equal(a.coefs_[0], c.coefs_[0])
    state = np.random.RandomState(5)  # a RandomState is consumed, as in scikit-learn
    d = MLPClassifier(**{**SMALL, "random_state": state}).fit(X, y)
    e = MLPClassifier(**{**SMALL, "random_state": state}).fit(X, y)
    assert not np.array_equal(d.coefs_[0], e.coefs_[0])


def test_loss_curve_goes_down(data):
    clf = MLPClassifier(**SMALL).fit(*data[:2])
    curve = np.array(clf.loss_curve_)
    assert len(curve) == clf.n_iter_ and clf.loss_ == curve[-1]
    assert curve[-1] < 0.5 * curve[0]
    assert np.mean(np.diff(curve) < 0) > 0.8  # mostly downhill
    assert clf.best_loss_ == curve.min()


def test_verbose_prints_sklearns_lines(data, capsys):
    MLPClassifier(**{**SMALL, "max_iter": 3, "verbose": True}).fit(*data[:2])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Iteration 1, loss = ") and len(out) == 3


# ---- the same numbers as scikit-learn where the maths is the same -------------------
@needs_sklearn
@pytest.mark.parametrize("setup", [
    dict(n_classes=4, solver="sgd", momentum=0.0, alpha=0.1, batch_size=50),
    dict(n_classes=2, solver="sgd", momentum=0.9, nesterovs_momentum=False, alpha=0.01, batch_size=25),
    dict(n_classes=3, solver="sgd", momentum=0.9, nesterovs_momentum=True, alpha=1.0, batch_size=100),
    dict(n_classes=3, solver="adam", alpha=0.1, batch_size=50, learning_rate_init=0.01),
], ids=["sgd-4class", "momentum-binary", "nesterov-3class", "adam-3class"])
def test_same_steps_as_sklearn_from_the_same_weights(setup):
    """One epoch from identical weights, batches in order: scikit-learn's weights, alpha included."""
    from sklearn.neural_network import MLPClassifier as SkMLP

    setup = dict(setup)
    X, y = blobs(n=100, n_features=6, n_classes=setup.pop("n_classes"), spread=2.0)
    X = X.astype(np.float64)
    params = dict(hidden_layer_sizes=(5, 4), activation="tanh", max_iter=1, shuffle=False,
                  learning_rate_init=setup.pop("learning_rate_init", 0.1), warm_start=True, random_state=0,
                  **setup)
    ours = MLPClassifier(backend="numpy", **params).fit(X, y)  # any start; then both go on from here
    theirs = SkMLP(**params).fit(X, y)
    theirs.coefs_, theirs.intercepts_ = ours.coefs_, ours.intercepts_
    ours.fit(X, y)
    theirs.fit(X, y)
    tol = dict(rtol=1e-4, atol=1e-6) if setup["solver"] == "adam" else dict(rtol=1e-10, atol=1e-12)  # eps placement
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_, strict=True):
        np.testing.assert_allclose(a, b, **tol)
    # The loss: the same data term; the L2 term from end-of-epoch weights (scikit-learn: per batch).
    np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=0.02)


@needs_sklearn
@pytest.mark.parametrize("learning_rate", ["constant", "adaptive"])
def test_stops_on_a_loss_plateau_after_as_many_iterations_as_sklearn(data, learning_rate):
    from sklearn.neural_network import MLPClassifier as SkMLP

    # tol so large that no epoch counts as an improvement: the stopping rule alone decides.
    params = dict(hidden_layer_sizes=(8,), solver="sgd", learning_rate=learning_rate, learning_rate_init=0.1,
                  tol=100.0, n_iter_no_change=2, max_iter=200, random_state=0)
    ours = MLPClassifier(backend="numpy", **params).fit(*data[:2])
    theirs = SkMLP(**params).fit(*data[:2])
    assert ours.n_iter_ == theirs.n_iter_ < 200


# ---- a script written for scikit-learn runs unchanged ---------------------------------------
def _sklearn_style_script(MLPClassifier, X, y, X_test, y_test):
    """Written against scikit-learn's MLPClassifier; only the class is swapped in."""
    clf = MLPClassifier(hidden_layer_sizes=(32,), activation="relu", solver="adam", alpha=1e-4,
                        batch_size=64, learning_rate_init=0.003, max_iter=60, random_state=1,
                        early_stopping=True, validation_fraction=0.2, n_iter_no_change=5)
    clf.fit(X, y)
    report = {"accuracy": clf.score(X_test, y_test), "proba": clf.predict_proba(X_test[:3]),
              "classes": list(clf.classes_), "n_iter": clf.n_iter_, "curve": len(clf.loss_curve_),
              "val": len(clf.validation_scores_), "best_val": clf.best_validation_score_,
              "shapes": [c.shape for c in clf.coefs_], "layers": clf.n_layers_}
    online = MLPClassifier(hidden_layer_sizes=(32,), learning_rate_init=0.01, random_state=1)
    for start in range(0, len(X), 100):
        online.partial_fit(X[start:start + 100], y[start:start + 100], classes=np.unique(y))
    for _ in range(5):
        online.partial_fit(X, y)
    report["after_partial_fit"] = online.score(X_test, y_test)
    return report


@pytest.mark.parametrize("which", ["fastnn", pytest.param("sklearn", marks=needs_sklearn)])
def test_a_sklearn_script_switches_by_one_import(data, which):
    if which == "sklearn":
        from sklearn.neural_network import MLPClassifier as Chosen
    else:
        from fastnn import MLPClassifier as Chosen
    report = _sklearn_style_script(Chosen, *data)
    assert report["accuracy"] >= 0.88 and report["after_partial_fit"] >= 0.85
    assert report["proba"].shape == (3, 4) and report["classes"] == [0, 1, 2, 3]
    assert report["curve"] == report["val"] == report["n_iter"] and 0 < report["best_val"] <= 1
    assert report["shapes"] == [(20, 32), (32, 4)] and report["layers"] == 3


@needs_sklearn
def test_works_inside_a_pipeline_and_grid_search(data):
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y, X_test, y_test = data
    pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.01,
                                                         max_iter=30, random_state=0, backend="numpy"))
    search = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-1]}, cv=2).fit(X, y)
    assert search.best_estimator_.score(X_test, y_test) >= 0.85


# ---- bad input: scikit-learn-style errors -------------------------------------------------
@pytest.mark.parametrize("X, y, error, message", [
    (np.full((4, 2), np.nan), [0, 1, 0, 1], ValueError, "contains NaN"),
    (np.array([[1.0, np.inf]] * 4), [0, 1, 0, 1], ValueError, "infinity"),
    (np.ones(4), [0, 1, 0, 1], ValueError, "Expected 2D array, got 1D"),
    (np.ones((4, 2)), [0, 1, 0], ValueError, "inconsistent numbers of samples"),
    (np.ones((4, 2)), [0.5, 1.5, 0.1, 1.0], ValueError, "Unknown label type: continuous"),
    (np.ones((4, 2)), [1, 1, 1, 1], ValueError, "only one class"),
    (np.ones((4, 2)), [0, 1, np.nan, 1], ValueError, "y contains NaN"),
    (np.ones((4, 2)), np.array(["a", 1, "b", 2], dtype=object), ValueError, "Unknown label type"),
    (np.ones((4, 2)), None, ValueError, "requires y to be passed"),
    (np.ones((4, 2)) + 1j, [0, 1, 0, 1], ValueError, "Complex data not supported"),
    (np.array([["a", "b"]] * 4), [0, 1, 0, 1], ValueError, "expected numbers"),
    (np.ones((0, 2)), [], ValueError, r"0 sample\(s\)"),
    (np.ones((4, 0)), [0, 1, 0, 1], ValueError, r"0 feature\(s\)"),
])
def test_bad_input_gets_a_clear_error(X, y, error, message):
    with pytest.raises(error, match=message):
        MLPClassifier(**SMALL).fit(X, y)


def test_sparse_input_is_refused_clearly():
    from scipy import sparse

    with pytest.raises(TypeError, match="sparse input is not supported.*toarray"):
        MLPClassifier(**SMALL).fit(sparse.csr_matrix(np.eye(4)), [0, 1, 0, 1])


def test_wrong_width_at_predict_and_not_fitted(data):
    X, y, X_test, _ = data
    clf = MLPClassifier(**SMALL)
    for method in (clf.predict, clf.predict_proba):
        with pytest.raises(NotFittedError, match="not fitted yet"):
            method(X_test)
    assert isinstance(NotFittedError("x"), (ValueError, AttributeError))
    if HAVE_SKLEARN:  # this test module imports scikit-learn: what is raised is its class too
        from sklearn.exceptions import NotFittedError as SkNotFitted
        with pytest.raises(SkNotFitted):
            clf.predict(X_test)
    assert not hasattr(clf, "coefs_")
    clf.fit(X, y)
    with pytest.raises(ValueError, match="X has 19 features, but MLPClassifier is expecting 20"):
        clf.predict(X_test[:, :19])


def test_a_failed_refit_leaves_the_estimator_unfitted(data):
    X, y, X_test, _ = data
    clf = MLPClassifier(**SMALL).fit(X, y)
    with pytest.raises(ValueError, match="only one class"):
        clf.fit(X, np.zeros(len(y)))
    with pytest.raises(NotFittedError):
        clf.predict(X_test)


@pytest.mark.parametrize("params, message", [
    (dict(activation="softplus"), "'activation' parameter"),
    (dict(solver="lbfgs"), "lbfgs.*not supported"),
    (dict(hidden_layer_sizes=(10, 0)), "hidden_layer_sizes"),
    (dict(batch_size=0), "'batch_size' parameter"),
    (dict(momentum=1.0, solver="sgd"), "'momentum' parameter"),
    (dict(learning_rate_init=0), "'learning_rate_init' parameter"),
    (dict(alpha=-1), "'alpha' parameter"),
    (dict(backend="nope"), "nope"),
])
def test_bad_parameters_fail_at_fit_not_at_construction(data, params, message):
    clf = MLPClassifier(**{**SMALL, **params})  # scikit-learn's rule: __init__ never raises
    with pytest.raises(ValueError, match=message):
        clf.fit(*data[:2])


# ---- partial_fit, warm_start, early stopping, pickling -----------------------------------------
def test_partial_fit(data):
    X, y, X_test, y_test = data
    clf = MLPClassifier(**SMALL)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X, y)
    clf.partial_fit(X[y < 3], y[y < 3], classes=[0, 1, 2, 3])  # a class absent from the first chunk
    first = clf.score(X_test, y_test)
    for _ in range(10):
        clf.partial_fit(X, y)
    assert clf.score(X_test, y_test) > first and len(clf.loss_curve_) == 11 and clf.n_iter_ == 1
    with pytest.raises(ValueError, match="classes not in"):
        clf.partial_fit(X[:4], [0, 1, 2, 9])


def test_warm_start_continues_and_checks_classes(data):
    X, y = data[:2]
    clf = MLPClassifier(**{**SMALL, "max_iter": 5, "warm_start": True}).fit(X, y)
    before = clf.coefs_[0]
    clf.fit(X, y)
    assert len(clf.loss_curve_) == 10 and clf.loss_curve_[5] < clf.loss_curve_[0]
    assert not np.array_equal(before, clf.coefs_[0])
    with pytest.raises(ValueError, match="classes not in"):
        clf.fit(X, y + 1)
    cold = MLPClassifier(**{**SMALL, "max_iter": 5}).fit(X, y)
    cold.fit(X, y)
    assert len(cold.loss_curve_) == 5


def test_early_stopping_keeps_the_best_validation_weights(data):
    X, y, _, _ = data
    clf = MLPClassifier(**{**SMALL, "max_iter": 200, "early_stopping": True, "n_iter_no_change": 3}).fit(X, y)
    assert clf.n_iter_ < 200 and len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_) and clf.best_loss_ is None
    with pytest.raises(ValueError, match="validation set is too small"):
        MLPClassifier(**{**SMALL, "early_stopping": True, "validation_fraction": 0.01}).fit(X[:50], y[:50])
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        clf.partial_fit(X, y)


def test_validation_split_is_stratified_and_disjoint():
    codes = np.repeat([0, 1, 2], [50, 30, 20])
    train, val = _validation_split(codes, 0.1, np.random.default_rng(0), stratify=True)
    assert len(val) == 10 and len(train) == 90 and not set(train) & set(val)
    assert np.bincount(codes[val]).tolist() == [5, 3, 2]


def test_pickle_round_trip_continues_exactly(data):
    X, y, X_test, _ = data
    a = MLPClassifier(**{**SMALL, "max_iter": 5}).fit(X, y)
    b = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(a.predict_proba(X_test), b.predict_proba(X_test))
    a.partial_fit(X, y)
    b.partial_fit(X, y)  # Adam's moments and the batch order travelled too
    for wa, wb in zip(a.coefs_, b.coefs_):
        np.testing.assert_array_equal(wa, wb)


def test_feature_names_are_recorded_and_checked(data):
    X, y, X_test, _ = data

    class Frame:  # what a pandas DataFrame looks like to the estimator
        def __init__(self, values, columns):
            self.values, self.columns = values, columns

        def __array__(self, dtype=None, copy=None):
            return np.asarray(self.values, dtype=dtype)

    names = [f"f{i}" for i in range(20)]
    clf = MLPClassifier(**SMALL).fit(Frame(X, names), y)
    np.testing.assert_array_equal(clf.feature_names_in_, names)
    plain = MLPClassifier(**SMALL).fit(X, y)
    np.testing.assert_array_equal(clf.predict(Frame(X_test, names)), plain.predict(X_test))
    with pytest.raises(ValueError, match="feature names should match"):
        clf.predict(Frame(X_test, names[::-1]))
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        clf.predict(X_test)
    assert not hasattr(plain, "feature_names_in_")
    with pytest.warns(UserWarning, match="fitted without feature names"):
        plain.predict(Frame(X_test, names))


def test_ctrl_c_keeps_a_usable_model_with_sklearns_warning(data, monkeypatch):
    X, y, X_test, _ = data
    real, calls = fastnn.Adam.step, {"n": 0}

    def step(self, backend, dense_layers):
        calls["n"] += 1
        if calls["n"] == 20:  # 3 batches per epoch: in the 7th epoch
            raise KeyboardInterrupt
        return real(self, backend, dense_layers)
    monkeypatch.setattr(fastnn.Adam, "step", step)
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        clf = MLPClassifier(**SMALL).fit(X, y)
    assert clf.n_iter_ == 6 and clf.predict(X_test).shape == (200,)


def test_every_backend_gives_the_numpy_models_predictions(data, backend_name):
    X, y, X_test, _ = (a.astype(np.float64) if a.dtype == np.float32 else a for a in data)  # float64: tight
    params = {**SMALL, "max_iter": 10}
    reference = MLPClassifier(**params).fit(X, y)
    other = MLPClassifier(**{**params, "backend": backend_name}).fit(X, y)
    assert other._net.backend.name == backend_name and other.coefs_[0].dtype == np.float64
    np.testing.assert_allclose(other.predict_proba(X_test), reference.predict_proba(X_test), atol=1e-8)


# ---- scikit-learn's own checks ------------------------------------------------------------
#: Checks deliberately excluded, with the reason. None are needed today; keep this the only list.
EXPECTED_FAILED_CHECKS = {}

if HAVE_SKLEARN:
    from sklearn.utils.estimator_checks import parametrize_with_checks

    # The estimator implements scikit-learn's protocol without inheriting its BaseEstimator (so
    # that importing it does not import scikit-learn: fastnn.estimator_base); every check below
    # runs all the same, so the collection-time note about that is expected, not news.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not inherit from `sklearn.base.BaseEstimator`")
        # max_iter=100 is scikit-learn's own setting for its MLPs in its check suite.
        _checks = parametrize_with_checks([MLPClassifier(max_iter=100, backend="numpy"),
                                           MLPRegressor(max_iter=100, backend="numpy")],
                                          expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)

    # scikit-learn's checks feed data around 100 on purpose
    @pytest.mark.filterwarnings("ignore::fastnn.UnscaledInputWarning")
    @_checks
    def test_sklearn_estimator_checks(estimator, check):
        check(estimator)
else:
    @pytest.mark.skip(reason="scikit-learn is not installed: its estimator checks cannot run")
    def test_sklearn_estimator_checks():
        pass


# ---- scikit-learn is optional -----------------------------------------------------------
def test_works_without_sklearn_installed():
    script = textwrap.dedent("""
        import sys, pickle, warnings
        sys.modules["sklearn"] = None  # as if not installed: any sklearn import fails
        import numpy as np
        import fastnn
        from fastnn import MLPClassifier
        from fastnn.estimator import HAVE_SKLEARN, NotFittedError
        assert not HAVE_SKLEARN
        g = np.random.default_rng(0)
        X = np.vstack([g.normal(-2, 1, (60, 3)), g.normal(2, 1, (60, 3))])
        y = np.array(["left"] * 60 + ["right"] * 60)
        clf = MLPClassifier(hidden_layer_sizes=(8,), learning_rate_init=0.05, max_iter=30, random_state=0,
                            backend="numpy")
        try:
            clf.predict(X)
        except NotFittedError as exc:
            assert isinstance(exc, ValueError) and isinstance(exc, AttributeError)
        else:
            raise AssertionError("no NotFittedError")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(X, y)
        assert clf.score(X, y) > 0.95, clf.score(X, y)
        assert clf.get_params()["max_iter"] == 30
        assert clf.set_params(max_iter=3).max_iter == 3
        assert repr(clf) == ("MLPClassifier(backend='numpy', hidden_layer_sizes=(8,), learning_rate_init=0.05, "
                             "max_iter=3, random_state=0)"), repr(clf)
        try:
            clf.set_params(bogus=1)
        except ValueError as exc:
            assert "Invalid parameter" in str(exc)
        clone = pickle.loads(pickle.dumps(clf))
        assert (clone.predict(X) == clf.predict(X)).all()
        assert "sklearn" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
