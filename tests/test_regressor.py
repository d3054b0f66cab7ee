"""fastnn.MLPRegressor: scikit-learn's API, scikit-learn's steps from the same weights (its squared
error, for one output or several), R² as its score, and no scikit-learn needed at all.
"""
import inspect
import pickle
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from fastnn.estimator_base import HAVE_SKLEARN, DataConversionWarning, NotFittedError, r2_score
from fastnn.estimator_regressor import MLPRegressor

needs_sklearn = pytest.mark.skipif(not HAVE_SKLEARN, reason="scikit-learn is not installed")
SMALL = dict(hidden_layer_sizes=(16,), learning_rate_init=0.01, max_iter=60, random_state=0, backend="numpy")


@pytest.fixture(autouse=True)
def _quiet_convergence():
    # Short max_iter on purpose: the ConvergenceWarning (fastnn's or scikit-learn's) is expected, not news.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Stochastic Optimizer: Maximum iterations")
        yield


def smooth_targets(n=400, n_features=5, n_outputs=1, seed=0, noise=0.05):
    """A smooth nonlinear function of X plus a little noise: learnable, not linear."""
    g = np.random.default_rng(seed)
    X = g.standard_normal((n, n_features))
    Y = np.stack([np.sin(X[:, k % n_features]) + 0.5 * X[:, (k + 1) % n_features] * X[:, (k + 2) % n_features]
                  for k in range(n_outputs)], axis=1)
    Y += noise * g.standard_normal(Y.shape)
    return X, (Y[:, 0] if n_outputs == 1 else Y)


@pytest.fixture(scope="module")
def data():
    X, y = smooth_targets(n=500)
    return X[:400], y[:400], X[400:], y[400:]


# ---- the API ------------------------------------------------------------------
@needs_sklearn
def test_parameters_defaults_and_positional_order_are_sklearns_plus_backend():
    from sklearn.neural_network import MLPRegressor as SkMLP

    ours, theirs = MLPRegressor().get_params(), SkMLP().get_params()
    if "loss" not in theirs:  # scikit-learn < 1.7 has no loss parameter (squared error only)
        theirs["loss"] = "squared_error"
    assert set(ours) == set(theirs) | {"backend"}
    assert {name: ours[name] for name in theirs} == theirs and ours["backend"] is None
    positional = [p.name for p in inspect.signature(MLPRegressor).parameters.values()
                  if p.kind is p.POSITIONAL_OR_KEYWORD]
    theirs_positional = [p.name for p in inspect.signature(SkMLP).parameters.values()
                         if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == ["loss", "hidden_layer_sizes", "activation"]
    assert theirs_positional in (positional, positional[1:])  # the same, or before loss was added


def test_params_round_trip_and_repr():
    reg = MLPRegressor(hidden_layer_sizes=(7, 5), solver="sgd", alpha=0.5)
    params = reg.get_params()
    assert MLPRegressor().set_params(**params).get_params() == params
    assert repr(reg) == "MLPRegressor(alpha=0.5, hidden_layer_sizes=(7, 5), solver='sgd')"
    with pytest.raises(ValueError, match="Invalid parameter"):
        reg.set_params(classes=[0, 1])


def test_fit_predict_score_and_fitted_attributes(data):
    X, y, X_test, y_test = data
    reg = MLPRegressor(**{**SMALL, "hidden_layer_sizes": (32,), "max_iter": 150})
    assert reg.fit(X, y) is reg
    assert reg.score(X_test, y_test) > 0.8  # scikit-learn's, same settings: 0.89
    predicted = reg.predict(X_test)
    assert predicted.shape == (100,) and predicted.dtype == np.float64
    assert reg.n_outputs_ == 1 and reg.out_activation_ == "identity" and reg.n_layers_ == 3
    assert reg.n_features_in_ == 5 and reg.t_ == 400 * reg.n_iter_
    assert [c.shape for c in reg.coefs_] == [(5, 32), (32, 1)] and [b.shape for b in reg.intercepts_] == [(32,), (1,)]
    curve = np.array(reg.loss_curve_)
    assert len(curve) == reg.n_iter_ and reg.loss_ == curve[-1] and reg.best_loss_ == curve.min()
    assert curve[-1] < 0.2 * curve[0]
    assert reg.validation_scores_ is None and reg.best_validation_score_ is None


def test_several_outputs_and_a_column_vector(data):
    X, Y = smooth_targets(n=300, n_outputs=3)
    reg = MLPRegressor(**{**SMALL, "hidden_layer_sizes": (32,), "max_iter": 100}).fit(X, Y)
    assert reg.n_outputs_ == 3 and reg.coefs_[-1].shape == (32, 3)
    assert reg.predict(X).shape == (300, 3) and reg.score(X, Y) > 0.7
    with pytest.warns(DataConversionWarning, match="column-vector y") as caught:
        column = MLPRegressor(**SMALL).fit(X, Y[:, :1])
    assert caught[0].filename == __file__  # the warning points at the caller's fit
    assert column.n_outputs_ == 1 and column.predict(X).shape == (300,)  # as scikit-learn: raveled


def test_score_is_r2(data):
    X, y, X_test, y_test = data
    reg = MLPRegressor(**SMALL).fit(X, y)
    predicted = reg.predict(X_test)
    by_hand = 1 - np.sum((y_test - predicted) ** 2) / np.sum((y_test - y_test.mean()) ** 2)
    assert reg.score(X_test, y_test) == pytest.approx(by_hand, rel=1e-12)
    weights = np.linspace(0.5, 2.0, len(y_test))
    assert reg.score(X_test, y_test, sample_weight=weights) != pytest.approx(by_hand)
    # several outputs: the mean of each output's R²; a constant column scores 1 if hit, else 0
    Y = np.stack([y_test, 2 * y_test + 1, np.full_like(y_test, 3.0)], axis=1)
    P = np.stack([predicted, 2 * predicted + 1, np.full_like(y_test, 3.0)], axis=1)
    assert r2_score(Y, P) == pytest.approx((2 * by_hand + 1) / 3, rel=1e-12)
    assert r2_score(Y[:, 2], P[:, 2] + 1) == 0.0


@needs_sklearn
def test_r2_score_is_sklearns():
    from sklearn.metrics import r2_score as sk_r2

    g = np.random.default_rng(3)
    Y = g.standard_normal((30, 3))
    P = Y + 0.7 * g.standard_normal((30, 3))
    w = g.random(30)
    for truth, guess in ((Y[:, 0], P[:, 0]), (Y, P)):
        assert r2_score(truth, guess) == pytest.approx(sk_r2(truth, guess), rel=1e-12)
        assert r2_score(truth, guess, w) == pytest.approx(sk_r2(truth, guess, sample_weight=w), rel=1e-12)


# ---- the same numbers as scikit-learn where the maths is the same -------------------
@needs_sklearn
@pytest.mark.parametrize("setup", [
    dict(n_outputs=1, solver="sgd", momentum=0.9, nesterovs_momentum=False, alpha=0.1, batch_size=25),
    dict(n_outputs=3, solver="sgd", momentum=0.9, nesterovs_momentum=True, alpha=0.0, batch_size=50),
    # epsilon so small that where Adam adds it (fastnn: to sqrt(v_hat), scikit-learn: to sqrt(v))
    # makes no difference: then the steps are the same to rounding
    dict(n_outputs=1, solver="adam", alpha=0.1, batch_size=25, epsilon=1e-15),
    dict(n_outputs=3, solver="adam", alpha=0.0, batch_size=50, epsilon=1e-15),
], ids=["sgd-1", "nesterov-3", "adam-1", "adam-3"])
def test_same_steps_and_loss_as_sklearn_from_the_same_weights(setup):
    """One epoch from identical weights, batches in order: scikit-learn's weights and its loss_
    (½ the mean over rows *and* outputs, while the step is that of the sum over outputs)."""
    from sklearn.neural_network import MLPRegressor as SkMLP

    setup = dict(setup)
    X, y = smooth_targets(n=100, n_features=6, n_outputs=setup.pop("n_outputs"), seed=2)
    params = dict(hidden_layer_sizes=(5, 4), activation="tanh", max_iter=1, shuffle=False,
                  learning_rate_init=0.01, warm_start=True, random_state=0, **setup)
    ours = MLPRegressor(backend="numpy", **params).fit(X, y)  # any start; then both go on from here
    theirs = SkMLP(**params).fit(X, y)
    theirs.coefs_, theirs.intercepts_ = ours.coefs_, ours.intercepts_
    ours.fit(X, y)
    theirs.fit(X, y)
    # Adam's two ways of bias correction round apart (its step divides by sqrt(v)): 1e-7, not 1e-10
    tol = dict(rtol=1e-7, atol=1e-10) if setup["solver"] == "adam" else dict(rtol=1e-10, atol=1e-12)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_, strict=True):
        np.testing.assert_allclose(a, b, **tol)
    # without alpha the loss is the data term alone: equal; with it, the L2 term from end-of-epoch
    # weights (scikit-learn: per batch) differs a little
    np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=1e-3 if setup["alpha"] else tol["rtol"])
    np.testing.assert_allclose(ours.predict(X), theirs.predict(X), **tol)


@needs_sklearn
def test_stops_on_a_loss_plateau_after_as_many_iterations_as_sklearn(data):
    from sklearn.neural_network import MLPRegressor as SkMLP

    # tol so large that no epoch counts as an improvement: the stopping rule alone decides
    params = dict(hidden_layer_sizes=(8,), solver="sgd", learning_rate="adaptive", learning_rate_init=0.01,
                  tol=100.0, n_iter_no_change=2, max_iter=200, random_state=0)
    ours = MLPRegressor(backend="numpy", **params).fit(*data[:2])
    theirs = SkMLP(**params).fit(*data[:2])
    assert ours.n_iter_ == theirs.n_iter_ < 200


def test_early_stopping_scores_r2_on_held_out_rows(data):
    X, y = data[:2]
    reg = MLPRegressor(**{**SMALL, "max_iter": 300, "early_stopping": True, "n_iter_no_change": 3}).fit(X, y)
    assert reg.n_iter_ < 300 and len(reg.validation_scores_) == reg.n_iter_ == len(reg.loss_curve_)
    assert reg.best_validation_score_ == max(reg.validation_scores_) > 0.5 and reg.best_loss_ is None
    assert max(reg.validation_scores_) <= 1.0
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        reg.partial_fit(X, y)


# ---- dtypes, partial_fit, warm_start, pickling --------------------------------------
@pytest.mark.filterwarnings("ignore::fastnn.UnscaledInputWarning")  # X * 10: integers that differ
@pytest.mark.parametrize("dtype, trains_in", [(np.float32, np.float32), (np.float64, np.float64),
                                              (np.int64, np.float64)])
def test_float32_X_trains_in_float32_anything_else_in_float64(data, dtype, trains_in):
    X, y, X_test, _ = data
    reg = MLPRegressor(**{**SMALL, "max_iter": 5}).fit((X * 10).astype(dtype), y)
    assert reg.coefs_[0].dtype == trains_in and reg.predict((X_test * 10).astype(dtype)).dtype == trains_in
    assert all(np.isfinite(reg.loss_curve_))


def test_partial_fit_and_warm_start_continue(data):
    X, y, X_test, y_test = data
    reg = MLPRegressor(**SMALL).partial_fit(X, y)
    first = reg.score(X_test, y_test)
    for _ in range(20):
        reg.partial_fit(X, y)
    assert reg.score(X_test, y_test) > first and len(reg.loss_curve_) == 21 and reg.n_iter_ == 1
    with pytest.raises(ValueError, match="y has 2 outputs, but MLPRegressor was fitted with 1"):
        reg.partial_fit(X, np.stack([y, y], axis=1))
    warm = MLPRegressor(**{**SMALL, "max_iter": 5, "warm_start": True}).fit(X, y)
    warm.fit(X, y)
    assert len(warm.loss_curve_) == 10 and warm.loss_curve_[5] < warm.loss_curve_[0]


def test_pickle_round_trip_continues_exactly(data):
    X, y, X_test, _ = data
    a = MLPRegressor(**{**SMALL, "max_iter": 5}).fit(X, y)
    b = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(a.predict(X_test), b.predict(X_test))
    a.partial_fit(X, y)
    b.partial_fit(X, y)  # Adam's moments and the batch order travelled too
    for wa, wb in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_array_equal(wa, wb)
    assert a.loss_curve_ == b.loss_curve_


def test_every_backend_gives_the_numpy_models_predictions(data, backend_name):
    X, Y = smooth_targets(n=200, n_outputs=2)
    params = {**SMALL, "max_iter": 10, "solver": "sgd"}
    reference = MLPRegressor(**params).fit(X, Y)
    other = MLPRegressor(**{**params, "backend": backend_name}).fit(X, Y)
    assert other._net.backend.name == backend_name and other.coefs_[0].dtype == np.float64
    np.testing.assert_allclose(other.loss_curve_, reference.loss_curve_, rtol=1e-7)
    np.testing.assert_allclose(other.predict(X), reference.predict(X), rtol=1e-7, atol=1e-8)


# ---- bad input ------------------------------------------------------------------------
@pytest.mark.parametrize("y, message", [
    (np.full(4, np.nan), "Input y contains NaN"),
    (np.array([1.0, np.inf, 0.0, 1.0]), "Input y contains infinity"),
    (np.array(["a", "b", "c", "d"]), "expects numeric targets y"),
    (None, "requires y to be passed"),
    ([0.0, 1.0, 2.0], "inconsistent numbers of samples"),
    (np.ones((4, 0)), "0 outputs"),
])
def test_bad_targets_get_a_clear_error(y, message):
    with pytest.raises(ValueError, match=message):
        MLPRegressor(**SMALL).fit(np.ones((4, 2)), y)


@pytest.mark.parametrize("params, message", [
    (dict(loss="poisson"), "loss='poisson' is not supported"),
    (dict(loss="absolute_error"), "'loss' parameter of MLPRegressor"),
    (dict(solver="lbfgs"), "lbfgs.*not supported by fastnn's MLPRegressor"),
    (dict(alpha=-1), "'alpha' parameter of MLPRegressor"),
])
def test_bad_parameters_fail_at_fit(data, params, message):
    reg = MLPRegressor(**{**SMALL, **params})  # scikit-learn's rule: __init__ never raises
    with pytest.raises(ValueError, match=message):
        reg.fit(*data[:2])


def test_not_fitted_and_wrong_width(data):
    X, y, X_test, _ = data
    reg = MLPRegressor(**SMALL)
    with pytest.raises(NotFittedError, match="This MLPRegressor instance is not fitted yet"):
        reg.predict(X_test)
    reg.fit(X, y)
    with pytest.raises(ValueError, match="X has 4 features, but MLPRegressor is expecting 5"):
        reg.predict(X_test[:, :4])
    with pytest.raises(ValueError, match="Input X contains NaN.*MLPRegressor"):
        reg.predict(np.full((2, 5), np.nan))


# ---- scikit-learn's tools and its own checks ---------------------------------------------
@needs_sklearn
def test_works_inside_a_pipeline_and_cross_validation(data):
    from sklearn.base import clone, is_regressor
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = data[:2]
    pipe = make_pipeline(StandardScaler(), MLPRegressor(**SMALL))
    assert is_regressor(pipe) and clone(pipe).get_params()["mlpregressor__max_iter"] == 60
    scores = cross_val_score(pipe, X, y, cv=2)  # scoring: R², the regressor's score
    assert scores.shape == (2,) and np.all(scores > 0.5)


# ---- scikit-learn is optional -----------------------------------------------------------
def test_fit_and_predict_import_neither_sklearn_nor_scipy():
    script = textwrap.dedent("""
        import sys, pickle, warnings
        import numpy as np
        from fastnn.estimator_regressor import MLPRegressor
        g = np.random.default_rng(0)
        X = g.standard_normal((120, 3))
        y = np.sin(X[:, 0]) + X[:, 1]
        reg = MLPRegressor(hidden_layer_sizes=(8,), learning_rate_init=0.01, max_iter=40, random_state=0,
                           backend="numpy")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reg.fit(X, y)
        assert reg.predict(X).shape == (120,) and reg.score(X, y) > 0.5, reg.score(X, y)
        reg.partial_fit(X, y)
        copy = pickle.loads(pickle.dumps(reg))
        assert (copy.predict(X) == reg.predict(X)).all()
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("sklearn", "scipy")))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
