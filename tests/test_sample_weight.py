"""``fit(sample_weight=, class_weight=)``: Sequential and the MLP estimators.

Each batch's loss is ``Σ wᵢ·lossᵢ / Σ wᵢ`` (its step the weighted mean gradient), so integer
weights are repeated rows where the batch holds the whole set; weights all alike are the
unweighted numbers, bit for bit; a batch of zero weights makes no step.
"""
import warnings

import numpy as np
import pytest

import fastnn
from fastnn import MLPClassifier, MLPRegressor
from fastnn.estimator_base import HAVE_SKLEARN
from fastnn.layers import Dense, Tanh
from fastnn.model import Sequential
from fastnn.optim import SGD, Adam

needs_sklearn = pytest.mark.skipif(not HAVE_SKLEARN, reason="scikit-learn is not installed")
N, N_IN, N_OUT = 30, 5, 3


@pytest.fixture(autouse=True)
def _quiet_convergence():
    with warnings.catch_warnings():  # one-epoch fits on purpose
        warnings.simplefilter("ignore", fastnn.estimator.ConvergenceWarning)
        warnings.filterwarnings("ignore", message="Stochastic Optimizer: Maximum iterations")  # scikit-learn's
        yield


def data(n=N, seed=0):
    g = np.random.default_rng(seed)
    return g.standard_normal((n, N_IN)), g.integers(0, N_OUT, n), g.integers(0, 4, n).astype(float)


def targets(loss, y):
    """y as the loss wants it: labels (cross_entropy, mse), or 0/1 rows (binary_cross_entropy)."""
    return (y[:, None] == np.arange(N_OUT)).astype(float) if loss == "binary_cross_entropy" else y


def net(backend="numpy", dtype="float64"):
    return Sequential(Dense(N_IN, 8), Tanh(), Dense(8, N_OUT), seed=3, dtype=dtype, backend=backend)


def params(model):
    return [model.backend.to_numpy(p) for d in model.dense_layers for p in (d.W, d.b)]


def assert_same(a, b, **tol):
    for p, q in zip(params(a), params(b), strict=True):
        if tol:
            np.testing.assert_allclose(p, q, **tol)
        else:
            np.testing.assert_array_equal(p, q)


# ---- the definition --------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "binary_cross_entropy"])
def test_integer_weights_are_repeated_rows_when_a_batch_holds_the_whole_set(loss):
    X, y, w = data()
    T = targets(loss, y)
    rows = np.repeat(np.arange(N), w.astype(int))
    weighted, repeated = net(), net()
    hw = weighted.fit(X, T, epochs=3, batch_size=N, loss=loss, optimizer=Adam(lr=0.05), sample_weight=w)
    hr = repeated.fit(X[rows], T[rows], epochs=3, batch_size=len(rows), loss=loss, optimizer=Adam(lr=0.05))
    assert_same(weighted, repeated, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(hw["loss"], hr["loss"], rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("value", [1.0, 2.5])
def test_weights_all_alike_give_the_unweighted_numbers_bit_for_bit(dtype, value):
    X, y, _ = data()
    plain, weighted = net(dtype=dtype), net(dtype=dtype)
    hp = plain.fit(X, y, epochs=2, batch_size=7, optimizer=SGD(lr=0.1, momentum=0.9))
    hw = weighted.fit(X, y, epochs=2, batch_size=7, optimizer=SGD(lr=0.1, momentum=0.9),
                      sample_weight=np.full(N, value))
    assert_same(plain, weighted)
    assert hp["accuracy"] == hw["accuracy"]
    if value == 1.0:
        assert hp["loss"] == hw["loss"]
    else:  # the epoch's mean, Σ loss_b·Σw_b / Σw, rounds otherwise
        np.testing.assert_allclose(hp["loss"], hw["loss"], rtol=1e-6 if dtype == "float32" else 1e-14)


def test_the_epoch_loss_is_the_weighted_mean_over_the_epoch():
    X, y, w = data()
    model = net()
    expected = model.evaluate(X, y, loss="cross_entropy", sample_weight=w)["loss"]
    # a step of 1e-300 leaves float64 weights as they are: every batch sees the same model
    history = model.fit(X, y, epochs=1, batch_size=7, lr=1e-300, sample_weight=w, shuffle=True)
    assert history["loss"][0] == pytest.approx(expected, rel=1e-12)


def test_a_batch_of_zero_weights_makes_no_step():
    X, y, _ = data()
    w = np.ones(N)
    w[10:20] = 0  # the second of three batches
    weighted, without = net(), net()
    weighted.fit(X, y, epochs=2, batch_size=10, optimizer=Adam(lr=0.05), shuffle=False, sample_weight=w)
    keep = w > 0
    without.fit(X[keep], y[keep], epochs=2, batch_size=10, optimizer=Adam(lr=0.05), shuffle=False)
    assert weighted.optimizer.t == without.optimizer.t == 4  # Adam's step count did not advance
    assert_same(weighted, without)


def test_weights_follow_their_rows_through_the_shuffle():
    X, y, w = data()
    order = np.random.default_rng(5).permutation(N)
    a, b = net(), net()
    a.fit(X, y, epochs=2, batch_size=N, lr=0.5, sample_weight=w)
    b.fit(X[order], y[order], epochs=2, batch_size=N, lr=0.5, sample_weight=w[order])
    assert_same(a, b, rtol=1e-12, atol=1e-14)


# ---- class_weight ------------------------------------------------------------------------------
def test_class_weight_balanced_is_sklearns_formula_times_sample_weight():
    X, y, w = data()
    counts = np.bincount(y, minlength=N_OUT)
    balanced = N / (N_OUT * counts[y])  # n_samples / (n_classes · bincount(y))
    if HAVE_SKLEARN:
        from sklearn.utils.class_weight import compute_sample_weight
        np.testing.assert_allclose(balanced, compute_sample_weight("balanced", y))
    a, b = net(), net()
    a.fit(X, y, epochs=2, batch_size=8, lr=0.3, class_weight="balanced", sample_weight=w)
    b.fit(X, y, epochs=2, batch_size=8, lr=0.3, sample_weight=w * balanced)
    assert_same(a, b)


def test_class_weight_dict_on_labels_and_on_one_hot_rows():
    X, y, _ = data()
    one_hot = np.eye(N_OUT)[y]
    a, b, c = net(), net(), net()
    a.fit(X, y, epochs=1, batch_size=8, lr=0.3, class_weight={0: 3.0, 2: 0.5})  # class 1: weight 1
    b.fit(X, one_hot, epochs=1, batch_size=8, lr=0.3, class_weight={0: 3.0, 2: 0.5})
    c.fit(X, y, epochs=1, batch_size=8, lr=0.3, sample_weight=np.array([3.0, 1.0, 0.5])[y])
    assert_same(a, c)
    assert_same(b, c)


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, message", [
    (dict(sample_weight=np.ones(N - 1)), ValueError, r"one weight per row.*\(30,\)"),
    (dict(sample_weight=np.ones((N, 1))), ValueError, "one weight per row"),
    (dict(sample_weight=np.r_[np.nan, np.ones(N - 1)]), ValueError, "NaN or inf"),
    (dict(sample_weight=np.r_[-1.0, np.ones(N - 1)]), ValueError, ">= 0"),
    (dict(sample_weight=np.zeros(N)), ValueError, "all weights are zero"),
    (dict(sample_weight=["a"] * N), TypeError, "expected numbers"),
    (dict(class_weight="heavy"), ValueError, "'balanced'"),
    (dict(class_weight=[1, 2, 3]), TypeError, "class_weight: expected a dict"),
    (dict(class_weight={7: 1.0}), ValueError, "7 is not a class"),
    (dict(class_weight={0: -1.0}), ValueError, "class 0 must be a finite number >= 0"),
    (dict(class_weight={0: 0, 1: 0, 2: 0}), ValueError, "every training row weighs zero"),
    (dict(sample_weight=np.r_[np.zeros(N // 2), np.ones(N // 2)], validation_split=0.5), ValueError,
     "every training row weighs zero"),  # the training half
])
def test_bad_weights_get_a_clear_error_and_change_nothing(kwargs, error, message):
    X, y, _ = data()
    model = net()
    before = params(model)
    with pytest.raises(error, match=message):
        model.fit(X, y, epochs=1, lr=0.1, **kwargs)
    for p, q in zip(before, params(model)):
        np.testing.assert_array_equal(p, q)
    assert model.optimizer is None


def test_class_weight_refuses_target_rows_that_are_not_classes():
    X, y, _ = data()
    with pytest.raises(ValueError, match="class_weight: needs class labels"):
        net().fit(X, np.random.default_rng(0).standard_normal((N, N_OUT)), loss="mse", class_weight={0: 2.0})


# ---- every backend -------------------------------------------------------------------------------
def test_every_backend_weighs_as_numpy(backend_name):
    X, y, w = data()
    reference, other = net("numpy"), net(backend_name)
    reference.fit(X, y, epochs=2, batch_size=7, optimizer=Adam(lr=0.05), sample_weight=w, class_weight="balanced")
    history = other.fit(X, y, epochs=2, batch_size=7, optimizer=Adam(lr=0.05), sample_weight=w,
                        class_weight="balanced")
    compiled = {"numba": "compiled whole epoch", "cupy": "layer by layer (sample weights"}
    assert history.path.startswith(compiled.get(backend_name, "layer by layer")), history.path
    assert_same(reference, other, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("loss, n_out", [("cross_entropy", 3), ("mse", 3), ("binary_cross_entropy", 1)])
def test_the_compiled_epoch_weighs_as_the_layer_path(backend_status, loss, n_out, threads, monkeypatch):
    if not backend_status.get("numba", (False,))[0]:
        pytest.skip(f"backend 'numba' unavailable: {backend_status.get('numba', (False, 'not registered'))[1]}")
    from fastnn.backends.numba import epoch as numba_epoch
    monkeypatch.setattr(numba_epoch, "EPOCH_WORK_FACTOR", 0)  # two threads even for this small job
    monkeypatch.setattr(numba_epoch, "WORK_PER_THREAD", 1)
    g = np.random.default_rng(5)
    X, labels = g.standard_normal((203, 12)), g.integers(0, 3, 203)
    y = labels if n_out > 1 else (labels > 0).astype(int)
    w = g.random(203) * 2
    w[:40] = 0  # the first two batches (in order) weigh nothing: no step, no step count
    w[100:116] = 0.5  # a batch of equal weights: the plain mean

    def trained(backend):
        model = Sequential(Dense(12, 16), Tanh(), fastnn.Dropout(0.2), Dense(16, n_out), seed=1, backend=backend,
                           dtype="float64")
        optimizer = Adam(lr=0.01)
        history = model.fit(X, y, epochs=3, batch_size=16, loss=loss, optimizer=optimizer, sample_weight=w,
                            shuffle=False)
        return model, history, optimizer

    ref, ref_history, ref_opt = trained("numpy")
    got, history, opt = trained(fastnn.get_backend("numba", num_threads=threads))
    assert history.path.startswith("compiled whole epoch") and f"{threads} thread" in history.path
    assert opt.t == ref_opt.t == 3 * (13 - 2)
    np.testing.assert_allclose(history["loss"], ref_history["loss"], rtol=1e-12)
    assert_same(ref, got, rtol=1e-10, atol=1e-13)


# ---- the estimators: scikit-learn's steps ------------------------------------------------------------
def _one_more_epoch(Ours, Theirs, X, y, w, **setup):
    """Ours and scikit-learn's, from the same weights, one more epoch each with ``w``: both estimators."""
    kwargs = dict(hidden_layer_sizes=(5, 4), activation="tanh", max_iter=1, shuffle=False, warm_start=True,
                  random_state=0, learning_rate_init=0.1, **setup)
    ours = Ours(backend="numpy", **kwargs).fit(X, y)
    theirs = Theirs(**kwargs).fit(X, y)
    theirs.coefs_, theirs.intercepts_ = ours.coefs_, ours.intercepts_
    ours.fit(X, y, sample_weight=w)
    theirs.fit(X, y, sample_weight=w)
    return ours, theirs


@needs_sklearn
@pytest.mark.parametrize("which", ["classifier", "binary", "regressor"])
@pytest.mark.parametrize("setup", [
    dict(solver="sgd", momentum=0.9, nesterovs_momentum=False, alpha=0.0, batch_size=10),
    dict(solver="sgd", momentum=0.0, alpha=0.0, batch_size=N),
    dict(solver="sgd", momentum=0.0, alpha=0.3, batch_size=N),  # the whole set: the L2 term is theirs too
], ids=["minibatch", "whole-set", "whole-set-with-alpha"])
def test_estimators_take_sklearns_weighted_steps(which, setup):
    from sklearn.neural_network import MLPClassifier as SkClassifier, MLPRegressor as SkRegressor

    X, y, w = data()
    if which == "regressor":
        Ours, Theirs, y = MLPRegressor, SkRegressor, X @ np.arange(N_IN) / 5.0
    else:
        Ours, Theirs, y = MLPClassifier, SkClassifier, (y % 2 if which == "binary" else y)
    ours, theirs = _one_more_epoch(Ours, Theirs, X, y, w, **setup)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    if setup["batch_size"] == N:  # one batch: the same reported loss; its L2 term from the weights at the
        # end of the epoch (scikit-learn's: before the batch's step), so close, not equal
        np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=1e-10 if setup["alpha"] == 0 else 1e-3)


@needs_sklearn
def test_partial_fit_takes_sklearns_weighted_step():
    from sklearn.neural_network import MLPClassifier as SkClassifier

    X, y, w = data()
    # no momentum: the second call then starts from the weights alone (no velocity of the first)
    kwargs = dict(hidden_layer_sizes=(6,), solver="sgd", momentum=0.0, learning_rate_init=0.2, shuffle=False,
                  random_state=0, alpha=0.0, batch_size=8)
    ours = MLPClassifier(backend="numpy", **kwargs).partial_fit(X, y, classes=np.arange(N_OUT))
    theirs = SkClassifier(**kwargs).partial_fit(X, y, classes=np.arange(N_OUT))
    theirs.coefs_, theirs.intercepts_ = ours.coefs_, ours.intercepts_
    ours.partial_fit(X, y, w)  # sample_weight third, as scikit-learn's signature
    theirs.partial_fit(X, y, w)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_estimator_weights_of_one_are_the_unweighted_fit_and_zeros_are_refused():
    X, y, _ = data()
    kwargs = dict(hidden_layer_sizes=(6,), max_iter=3, random_state=0, backend="numpy", alpha=0.01)
    plain = MLPRegressor(**kwargs).fit(X, y.astype(float))
    weighted = MLPRegressor(**kwargs).fit(X, y.astype(float), sample_weight=np.ones(N))
    for a, b in zip(plain.coefs_ + plain.intercepts_, weighted.coefs_ + weighted.intercepts_):
        np.testing.assert_array_equal(a, b)
    assert plain.loss_curve_ == weighted.loss_curve_
    with pytest.raises(ValueError, match="all weights are zero"):
        MLPClassifier(**kwargs).fit(X, y, sample_weight=np.zeros(N))


def test_early_stopping_scores_the_held_out_rows_weighted():
    from fastnn.estimator_checks import _seed
    from fastnn.estimator_epochs import _validation_split

    X, y, w = data(n=60)
    w[w == 0] = 0.5
    kwargs = dict(hidden_layer_sizes=(6,), max_iter=1, random_state=0, backend="numpy", early_stopping=True)
    _, held_out = _validation_split(y, 0.1, np.random.default_rng([_seed(0), 1]), stratify=True)  # fit's split
    clf = MLPClassifier(**kwargs).fit(X, y, sample_weight=w)
    assert clf.validation_scores_ == [clf.score(X[held_out], y[held_out], sample_weight=w[held_out])]
    w[held_out] = 0
    with pytest.raises(ValueError, match="held out for early stopping weighs zero"):
        MLPClassifier(**kwargs).fit(X, y, sample_weight=w)
