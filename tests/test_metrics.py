"""``Sequential.evaluate(metrics=[...], sample_weight=...)`` and ``fastnn.metrics``: every metric
against scikit-learn's (skipped without it), weights as repeated rows, batching, the default
set per task, every backend, bad names and weights, and the CLI's per-digit lines."""
import numpy as np
import pytest

import fastnn
from fastnn import metrics
from conftest import blobs

CLASSES = 4
EVERY_CLASSIFICATION = ["loss", "accuracy", "top_2_accuracy", "top_3_accuracy", "precision", "recall",
                        "f1", "macro_f1"]


def _classifier(head=None, n_out=CLASSES, backend="numpy", dtype="float64", seed=0):
    layers = [fastnn.Dense(20, 12), fastnn.Tanh(), fastnn.Dense(12, n_out)]
    return fastnn.Sequential(*layers, *([head()] if head else []), backend=backend, seed=seed, dtype=dtype)


def _regressor(n_out=3, seed=0):
    return fastnn.Sequential(fastnn.Dense(5, 8), fastnn.Tanh(), fastnn.Dense(8, n_out), backend="numpy",
                             seed=seed, dtype="float64")


@pytest.fixture(scope="module")
def trained():
    """A briefly trained 4-class model: right on some rows, wrong on others, some classes rare."""
    X, y = blobs(n=120, n_classes=CLASSES, seed=3, spread=4.0)
    net = _classifier()
    net.fit(X, y, epochs=2, batch_size=16, loss="cross_entropy", lr=0.05)
    return net, X, y


@pytest.fixture(scope="module")
def regression():
    g = np.random.default_rng(5)
    X = g.standard_normal((90, 5))
    T = np.column_stack([X[:, 0] * 0.5 + 0.1 * g.standard_normal(90), np.sin(X[:, 1]), 3.0 + X[:, 2] ** 2])
    return _regressor(), X, T


def _weights(n, seed=7):
    w = np.random.default_rng(seed).uniform(0, 3, n)
    w[::5] = 0  # rows that count for nothing
    return w


def _sklearn():
    return pytest.importorskip("sklearn.metrics", reason="scikit-learn is not installed: the comparison needs it")


# ---- against scikit-learn -------------------------------------------------------------------------
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_classification_metrics_match_scikit_learn(trained, weighted):
    sk = _sklearn()
    net, X, y = trained
    w = _weights(len(y)) if weighted else None
    scores = net.evaluate(X, y, metrics=EVERY_CLASSIFICATION, sample_weight=w, batch_size=13)
    assert list(scores) == EVERY_CLASSIFICATION
    predicted, outputs = net.predict(X), np.asarray(net.forward(X))
    assert len(set(predicted)) > 1 and 0 < np.mean(predicted == y) < 1  # a case worth scoring
    labels = list(range(CLASSES))
    assert scores["accuracy"] == pytest.approx(sk.accuracy_score(y, predicted, sample_weight=w), rel=1e-12)
    for k in (2, 3):
        expected = sk.top_k_accuracy_score(y, outputs, k=k, labels=labels, sample_weight=w)
        assert scores[f"top_{k}_accuracy"] == pytest.approx(expected, rel=1e-12)
    precision, recall, f1, _ = sk.precision_recall_fscore_support(y, predicted, labels=labels, average=None,
                                                                  sample_weight=w, zero_division=0)
    np.testing.assert_allclose(scores["precision"], precision, rtol=1e-12)
    np.testing.assert_allclose(scores["recall"], recall, rtol=1e-12)
    np.testing.assert_allclose(scores["f1"], f1, rtol=1e-12)
    assert scores["macro_f1"] == pytest.approx(sk.f1_score(y, predicted, average="macro", sample_weight=w,
                                                            zero_division=0), rel=1e-12)


def test_a_class_never_predicted_scores_zero_as_scikit_learn_does():
    sk = _sklearn()
    X, y = blobs(n=40, n_classes=CLASSES, seed=1)
    net = _classifier()
    net.dense_layers[-1].b = np.array([0.0, 0.0, 0.0, -100.0])  # class 3 is never predicted
    scores = net.evaluate(X, y, metrics=["precision", "f1", "macro_f1"], loss="cross_entropy")
    predicted = net.predict(X)
    assert 3 not in predicted and 3 in y
    assert scores["precision"][3] == 0 and scores["f1"][3] == 0
    assert scores["macro_f1"] == pytest.approx(sk.f1_score(y, predicted, average="macro", zero_division=0), rel=1e-12)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_binary_metrics_match_scikit_learn(weighted):
    """One output: a logit split at 0 (binary cross-entropy), two classes."""
    sk = _sklearn()
    X, y = blobs(n=80, n_classes=2, seed=2, spread=3.0)
    net = _classifier(n_out=1)
    net.fit(X, y, epochs=1, batch_size=16, loss="binary_cross_entropy", lr=0.05)
    w = _weights(len(y)) if weighted else None
    scores = net.evaluate(X, y, metrics=EVERY_CLASSIFICATION[:3] + ["precision", "recall", "f1"],
                          sample_weight=w, batch_size=9)
    predicted = net.predict(X)
    assert scores["accuracy"] == pytest.approx(sk.accuracy_score(y, predicted, sample_weight=w), rel=1e-12)
    assert scores["top_2_accuracy"] == 1.0  # two classes: the true one is always among the top two
    precision, recall, f1, _ = sk.precision_recall_fscore_support(y, predicted, labels=[0, 1], average=None,
                                                                  sample_weight=w, zero_division=0)
    np.testing.assert_allclose([scores["precision"], scores["recall"], scores["f1"]], [precision, recall, f1],
                               rtol=1e-12)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_regression_metrics_match_scikit_learn(regression, weighted):
    sk = _sklearn()
    net, X, T = regression
    w = _weights(len(T)) if weighted else None
    scores = net.evaluate(X, T, loss="mse", sample_weight=w, batch_size=16)
    assert list(scores) == ["loss", "mae", "rmse", "r2"]  # the regression default
    Y = np.asarray(net.forward(X))
    assert scores["mae"] == pytest.approx(sk.mean_absolute_error(T, Y, sample_weight=w), rel=1e-12)
    rmse = getattr(sk, "root_mean_squared_error", None)
    expected = rmse(T, Y, sample_weight=w) if rmse else np.mean(np.sqrt(
        sk.mean_squared_error(T, Y, sample_weight=w, multioutput="raw_values")))
    assert scores["rmse"] == pytest.approx(expected, rel=1e-12)
    assert scores["r2"] == pytest.approx(sk.r2_score(T, Y, sample_weight=w), rel=1e-10)
    row_loss = 0.5 * np.sum((Y - T) ** 2, axis=1)
    assert scores["loss"] == pytest.approx(np.average(row_loss, weights=w), rel=1e-12)


# ---- without scikit-learn -------------------------------------------------------------------------
@pytest.mark.parametrize("loss, head, n_out", [
    ("cross_entropy", None, CLASSES),
    ("cross_entropy", fastnn.Softmax, CLASSES),  # the softmax layer folded into the loss
    ("binary_cross_entropy", None, 1),
    ("mse", fastnn.Sigmoid, CLASSES),  # Nielsen's quadratic cost: outputs split by argmax
])
def test_integer_weights_score_as_repeated_rows(loss, head, n_out):
    """A weight of 3 counts a row three times, 0 leaves it out: every metric, and the loss (each
    row's own loss, weighted) equal to the unweighted scores (the backend's batch loss) of the
    repeated rows."""
    X, y = blobs(n=50, n_classes=2 if n_out == 1 else CLASSES, seed=4, spread=3.0)
    net = _classifier(head, n_out=n_out)
    counts = np.random.default_rng(0).integers(0, 4, len(y))
    names = EVERY_CLASSIFICATION if n_out > 1 else ["loss", "accuracy", "precision", "recall", "f1", "macro_f1"]
    weighted = net.evaluate(X, y, loss=loss, metrics=names, sample_weight=counts, batch_size=7)
    repeated = net.evaluate(np.repeat(X, counts, axis=0), np.repeat(y, counts), loss=loss, metrics=names)
    for name in names:
        np.testing.assert_allclose(weighted[name], repeated[name], rtol=1e-9, err_msg=name)


def test_regression_weights_score_as_repeated_rows(regression):
    net, X, T = regression
    counts = np.random.default_rng(1).integers(0, 4, len(T))
    weighted = net.evaluate(X, T, sample_weight=counts, batch_size=11)
    repeated = net.evaluate(np.repeat(X, counts, axis=0), np.repeat(T, counts, axis=0))
    for name in ("loss", "mae", "rmse", "r2"):
        assert weighted[name] == pytest.approx(repeated[name], rel=1e-9), name


@pytest.mark.parametrize("loss, n_out", [("cross_entropy", CLASSES), ("binary_cross_entropy", 1), ("mse", CLASSES)])
def test_weighted_loss_is_the_weighted_mean_of_each_rows_loss(loss, n_out):
    X, y = blobs(n=12, n_classes=2 if n_out == 1 else CLASSES, seed=6)
    net, w = _classifier(n_out=n_out), np.random.default_rng(2).uniform(0.1, 2, 12)
    each = [net.evaluate(X[i:i + 1], y[i:i + 1], loss=loss, metrics=["loss"])["loss"] for i in range(12)]
    weighted = net.evaluate(X, y, loss=loss, metrics=["loss"], sample_weight=w)["loss"]
    assert weighted == pytest.approx(np.sum(w * np.array(each)) / np.sum(w), rel=1e-12)


def test_scores_do_not_depend_on_the_batch_size(trained, regression):
    net, X, y = trained
    whole = net.evaluate(X, y, metrics=EVERY_CLASSIFICATION)
    for batch_size in (1, 17):
        for name, value in net.evaluate(X, y, metrics=EVERY_CLASSIFICATION, batch_size=batch_size).items():
            np.testing.assert_allclose(value, whole[name], rtol=1e-12, err_msg=name)
    net, X, T = regression
    whole = net.evaluate(X, T)
    for name, value in net.evaluate(X, T, batch_size=4).items():
        assert value == pytest.approx(whole[name], rel=1e-10), name


def test_top_1_accuracy_is_accuracy_even_with_ties():
    """Tied outputs rank the lower class first, as argmax (and so accuracy) picks it."""
    net = fastnn.Sequential(fastnn.Dense(2, 3), backend="numpy", dtype="float64")
    net.dense_layers[0].W, net.dense_layers[0].b = np.zeros((2, 3)), np.zeros(3)  # every output 0: all tied
    X, y = np.ones((6, 2)), np.array([0, 1, 2, 0, 1, 2])
    scores = net.evaluate(X, y, loss="cross_entropy", metrics=["accuracy", "top_1_accuracy", "top_2_accuracy"])
    assert scores == {"accuracy": 2 / 6, "top_1_accuracy": 2 / 6, "top_2_accuracy": 4 / 6}


def test_r2_of_a_perfect_fit_and_of_a_constant_target():
    net = fastnn.Sequential(fastnn.Dense(2, 2), backend="numpy", dtype="float64")
    net.dense_layers[0].W, net.dense_layers[0].b = np.eye(2), np.zeros(2)  # outputs = inputs
    X = np.random.default_rng(0).standard_normal((10, 2))
    assert net.evaluate(X, X.copy()) == {"loss": 0.0, "mae": 0.0, "rmse": 0.0, "r2": 1.0}
    for constant in (0.5, 0.3):  # 0.3: its weighted mean need not be 0.3 exactly, yet R² is 0
        T = X.copy()
        T[:, 1] = constant  # constant and missed: R² 0 for that output, so 0.5 on average
        weights = np.random.default_rng(1).uniform(0.1, 2, 10)
        assert net.evaluate(X, T, metrics=["r2"], sample_weight=weights, batch_size=3) == {"r2": 0.5}


# ---- which task, which defaults --------------------------------------------------------------------
def test_defaults_follow_the_task(trained, regression):
    net, X, y = trained
    scores = net.evaluate(X, y)
    assert list(scores) == ["loss", "accuracy"]  # as before metrics existed
    assert scores["accuracy"] == pytest.approx(np.mean(net.predict(X) == y), rel=1e-12)
    # one-hot float rows with the mse loss and no output activation are classes, not a regression
    assert list(net.evaluate(X, np.eye(CLASSES)[y], loss="mse")) == ["loss", "accuracy"]
    net, X, T = regression
    assert list(net.evaluate(X, T)) == ["loss", "mae", "rmse", "r2"]
    assert list(net.evaluate(X, T, loss="cross_entropy")) == ["loss", "accuracy"]  # not an mse: classes


def test_task_names_its_reason():
    mse, ce = fastnn.losses.MSE(), fastnn.losses.CrossEntropy()
    rows = np.array([[0.2, 1.5], [0.1, 0.3]])
    assert metrics.task(mse, None, rows, None)[0] == "regression"
    assert metrics.task(mse, "identity", rows, None)[0] == "regression"
    assert metrics.task(mse, "sigmoid", rows, None) == ("classification", "a sigmoid output")
    assert metrics.task(ce, None, rows, None) == ("classification", "the cross_entropy loss")
    assert metrics.task(mse, None, [0, 1], None) == ("classification", "1-D class labels")
    assert metrics.task(mse, None, np.array([[1, 0], [0, 1]]), None)[0] == "classification"
    assert metrics.task(mse, None, np.array([[1.0], [0.0]]), None) == ("classification", "one-hot target rows")


# ---- every backend -------------------------------------------------------------------------------
def test_every_backend_scores_as_numpy(backend_name, trained):
    """The same weights on another backend, with targets and weights handed over as its arrays."""
    reference, X, y = trained
    net = _classifier(backend=backend_name, dtype="float32")
    for mine, theirs in zip(net.dense_layers, reference.dense_layers):
        mine.W, mine.b = theirs.W.astype(np.float32), theirs.b.astype(np.float32)
    w = _weights(len(y))
    backend = net.backend
    got = net.evaluate(backend.asarray(X), backend.asarray(y), loss="cross_entropy", metrics=EVERY_CLASSIFICATION,
                       sample_weight=backend.asarray(w), batch_size=50)
    expected = reference.evaluate(X, y, loss="cross_entropy", metrics=EVERY_CLASSIFICATION, sample_weight=w)
    for name in EVERY_CLASSIFICATION:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-6, err_msg=name)


# ---- bad names and weights -----------------------------------------------------------------------
@pytest.mark.parametrize("names, error, match", [
    (["accuracy", "auc"], ValueError, r"unknown metric 'auc'; known: classification loss, accuracy, "
                                      r"top_<k>_accuracy, .*; regression loss, mae, rmse, r2"),
    (["top_k_accuracy"], ValueError, r"give k in the name: 'top_5_accuracy'"),
    (["top_5_accuracy"], ValueError, r"k must be from 1 to the number of classes \(4\), got 5"),
    (["top_0_accuracy"], ValueError, r"got 0"),
    (["r2"], ValueError, r"'r2' scores a regression, but this is a classification \(1-D class labels\)"),
    (["loss", "loss"], ValueError, r"'loss' is given twice"),
    ([], ValueError, r"the list is empty"),
    ("accuracy", TypeError, r"expected a list of names such as \['loss', 'accuracy'\], got 'accuracy'"),
    ([3], TypeError, r"expected metric names \(str\), got 3"),
])
def test_bad_metric_names(trained, names, error, match):
    net, X, y = trained
    with pytest.raises(error, match=match):
        net.evaluate(X, y, metrics=names)


def test_a_classification_metric_on_a_regression(regression):
    net, X, T = regression
    with pytest.raises(ValueError, match=r"'accuracy' scores a classification, but this is a regression "
                                         r"\(float target rows, the mse loss, .*\); its metrics are loss, mae"):
        net.evaluate(X, T, metrics=["loss", "accuracy"])


@pytest.mark.parametrize("weights, error, match", [
    (np.ones(119), ValueError, r"sample_weight: expected one weight per row of X, shape \(120,\), got shape \(119,\)"),
    (np.ones((120, 1)), ValueError, r"got shape \(120, 1\)"),
    (np.r_[np.ones(119), -1.0], ValueError, r"weights must be >= 0, got -1 \(row 119\)"),
    (np.r_[np.ones(5), np.nan, np.ones(114)], ValueError, r"contains NaN or inf \(first at row 5\)"),
    (np.zeros(120), ValueError, r"all weights are zero"),
    (np.array(["1"] * 120), TypeError, r"sample_weight: expected numbers, got dtype <U1"),
])
def test_bad_sample_weights(trained, weights, error, match):
    net, X, y = trained
    with pytest.raises(error, match=match):
        net.evaluate(X, y, sample_weight=weights)


def test_a_weighted_custom_loss_needs_its_row_losses(trained):
    class Halved(fastnn.losses.MSE):  # a loss fastnn cannot split into rows
        def __call__(self, backend, Y, T):
            value, dY = super().__call__(backend, Y, T)
            return value / 2, dY / 2

    net, X, y = trained
    w = np.ones(len(y))
    with pytest.raises(ValueError, match=r"a weighted loss needs each row's loss, known for mse, cross_entropy, "
                                         r"binary_cross_entropy; not for Halved\(\)"):
        net.evaluate(X, y, loss=Halved(), sample_weight=w)
    assert set(net.evaluate(X, y, loss=Halved(), metrics=["accuracy"], sample_weight=w)) == {"accuracy"}
    assert net.evaluate(X, y, loss=Halved())["loss"] == pytest.approx(net.evaluate(X, y, loss="mse")["loss"] / 2)


# ---- the CLI ------------------------------------------------------------------------------------
def test_cli_evaluate_prints_precision_and_f1_per_digit(tmp_path, capsys):
    from fastnn import cli
    from fastnn.datasets import load_mnist_sample

    sample = load_mnist_sample()
    net = fastnn.Sequential(fastnn.Dense(784, 10), backend="numpy", seed=0)
    net.fit(sample.X_train[:200], sample.y_train[:200], epochs=1, lr=0.1)
    net.save(tmp_path / "m.npz")
    assert cli.main(["evaluate", str(tmp_path / "m.npz"), "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    scores = net.evaluate(sample.X_test, sample.y_test, metrics=["precision", "f1", "macro_f1"])
    assert f"\nmacro F1: {scores['macro_f1']:.4f} " in out
    for digit in range(10):
        line = next(line for line in out.splitlines() if line.startswith(f"  {digit}: "))
        assert line.endswith(f"  precision {scores['precision'][digit]:.4f}  F1 {scores['f1'][digit]:.4f}")
