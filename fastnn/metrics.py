"""Scores for ``Sequential.evaluate(X, y, metrics=[...], sample_weight=None)``.

>>> net.evaluate(X_test, y_test, metrics=["loss", "accuracy", "top_3_accuracy", "macro_f1"])
{'loss': 0.21, 'accuracy': 0.94, 'top_3_accuracy': 0.99, 'macro_f1': 0.94}

Metric names, by task:

- classification: ``"loss"``, ``"accuracy"``, ``"top_<k>_accuracy"`` (the true class among
  the k highest outputs, e.g. ``"top_3_accuracy"``), per-class ``"precision"``, ``"recall"``,
  ``"f1"`` (lists, one float per class, index = class; a class never predicted, or never true,
  scores 0 there: scikit-learn's ``zero_division=0``) and ``"macro_f1"`` (the plain mean of
  the F1 of the classes that occur in the targets or the predictions: scikit-learn's
  ``f1_score(average="macro")``). Default: loss and accuracy.
- regression: ``"loss"``, ``"mae"``, ``"rmse"``, ``"r2"``, each computed per output column and
  averaged uniformly over the columns (scikit-learn's ``multioutput="uniform_average"``; an
  output with constant targets has R² 1 when predicted exactly, else 0, as ``force_finite``,
  also where rounding leaves scikit-learn a tiny non-zero spread and a huge negative R²).
  Default: all four.

A regression is a model scored with the ``mse`` loss whose output has no activation (a last
Dense or Identity) on 2-D float target rows that are not one-hot; anything else is a
classification (1-D labels, one-hot rows, a cross-entropy, a sigmoid or softmax output).
``sample_weight`` (one non-negative weight per row) weights the loss, ``Σ wᵢ·lossᵢ / Σ wᵢ``,
and every metric as scikit-learn's ``sample_weight`` does.

The scores are computed on host NumPy arrays: a batch's outputs are (B, n_out) floats, small
beside the forward pass that made them, and NumPy's ``bincount`` does the per-class counting
that the array API lacks. Only running sums cross batches (per-class weighted counts, per-output
error sums), so memory stays bounded by the batch, whatever the number of rows.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from .backend import Backend
from .losses import BinaryCrossEntropy, CrossEntropy, Loss, MSE
from .validation import host_values

CLASSIFICATION = ("loss", "accuracy", "top_<k>_accuracy", "precision", "recall", "f1", "macro_f1")
REGRESSION = ("loss", "mae", "rmse", "r2")
DEFAULTS = {"classification": ("loss", "accuracy"), "regression": REGRESSION}
_TOP_K = re.compile(r"top_(\d+)_accuracy")


# ---- what is being scored --------------------------------------------------------------------
def task(loss: Loss, last_activation: str | None, y, to_numpy) -> tuple[str, str]:
    """``("regression" | "classification", why)`` for a model scored with ``loss`` whose last
    layer applies ``last_activation`` (None: a Dense), on targets ``y`` as given (``to_numpy``
    moves a backend array to the host)."""
    y = host_values(y, "y", to_numpy)
    if y.ndim == 1:
        return "classification", "1-D class labels"
    if y.dtype.kind != "f":
        return "classification", "integer target rows"
    if _one_hot(y):
        return "classification", "one-hot target rows"
    if not isinstance(loss, MSE):
        return "classification", f"the {loss.name or type(loss).__name__} loss"
    if last_activation not in (None, "identity"):
        return "classification", f"a {last_activation} output"
    return "regression", "float target rows, the mse loss, an output without activation"


def is_regression(net, loss: Loss, y) -> bool:
    """Whether ``net`` fitted with ``loss`` on ``y`` is a regression (:func:`task`): its History then
    has no training accuracy. Asked of the mse loss alone, so a classification's targets never
    travel to the host for it."""
    return isinstance(loss, MSE) and task(loss, net._last_activation(), y, net.backend.to_numpy)[0] == "regression"


def _one_hot(T):
    """Rows of 0s with a single 1 (one column: 0 or 1): classes written as target rows."""
    if not np.all((T == 0) | (T == 1)):
        return False
    return T.shape[1] == 1 or bool(np.all(np.sum(T, axis=1) == 1))


def n_classes(n_out: int) -> int:
    """A model with one output tells two classes apart."""
    return 2 if n_out == 1 else n_out


def checked_names(metrics: Sequence[str] | None, kind: str, why: str, n_out: int) -> list[str]:
    """The metric names to compute: ``metrics`` checked against the task ``kind`` (from
    :func:`task`, with its reason ``why``) for a model of ``n_out`` outputs, or the defaults."""
    if metrics is None:
        return list(DEFAULTS[kind])
    if isinstance(metrics, str) or not isinstance(metrics, Sequence):
        raise TypeError(f"metrics: expected a list of names such as ['loss', 'accuracy'], got {metrics!r}")
    names = []
    for name in metrics:
        if not isinstance(name, str):
            raise TypeError(f"metrics: expected metric names (str), got {name!r}")
        if name in names:
            raise ValueError(f"metrics: {name!r} is given twice")
        fits = _fitting_task(name, n_classes(n_out))
        if fits not in ("both", kind):
            known = ", ".join(CLASSIFICATION if kind == "classification" else REGRESSION)
            raise ValueError(f"metrics: {name!r} scores a {fits}, but this is a {kind} ({why}); "
                             f"its metrics are {known}")
        names.append(name)
    if not names:
        raise ValueError("metrics: the list is empty; leave it out for the default metrics")
    return names


def _fitting_task(name, classes):
    if name == "loss":
        return "both"
    if name in REGRESSION:
        return "regression"
    if name in CLASSIFICATION:
        return "classification"
    top = _TOP_K.fullmatch(name)
    if top:
        k = int(top.group(1))
        if not 1 <= k <= classes:
            raise ValueError(f"metrics: {name!r}: k must be from 1 to the number of classes "
                             f"({classes}), got {k}")
        return "classification"
    hint = " (give k in the name: 'top_5_accuracy')" if name == "top_k_accuracy" else ""
    raise ValueError(f"metrics: unknown metric {name!r}{hint}; known: classification "
                     f"{', '.join(CLASSIFICATION)}; regression {', '.join(REGRESSION)}")


def sample_weights(sample_weight, n: int, to_numpy) -> np.ndarray | None:
    """``sample_weight`` as float64 host weights, one per row, checked; None stays None.
    ``to_numpy`` moves a backend array to the host."""
    if sample_weight is None:
        return None
    w = host_values(sample_weight, "sample_weight", to_numpy)
    if w.dtype.kind not in "biuf":
        raise TypeError(f"sample_weight: expected numbers, got dtype {w.dtype}")
    if w.shape != (n,):
        raise ValueError(f"sample_weight: expected one weight per row of X, shape ({n},), got shape {w.shape}")
    w = w.astype(np.float64)
    if not np.all(np.isfinite(w)):
        raise ValueError(f"sample_weight: contains NaN or inf (first at row {int(np.argmax(~np.isfinite(w)))})")
    if np.any(w < 0):
        raise ValueError(f"sample_weight: weights must be >= 0, got {w.min():g} (row {int(np.argmin(w))})")
    if not np.any(w > 0):
        raise ValueError("sample_weight: all weights are zero; nothing would be scored")
    return w


# ---- per-row losses ----------------------------------------------------------------------------
#: The losses whose per-row values (``Loss.rows``, computed here on the host predictions with the
#: reference ops) a weighted loss uses: the backend ops return only the batch mean. Exact types: a
#: subclass may compute something else. ``tests/test_metrics.py`` holds them to the backend's losses
#: (integer weights = repeated rows).
ROW_LOSSES = (MSE, CrossEntropy, BinaryCrossEntropy)


# ---- per-class scores --------------------------------------------------------------------------
def class_scores(tp: np.ndarray, true_count: np.ndarray, predicted_count: np.ndarray):
    """``(precision, recall, f1)`` per class from (weighted) counts per class: true positives,
    rows of that class, rows predicted as it. Where a count is zero the score is 0."""
    tp, true_count, predicted_count = (np.asarray(a, dtype=np.float64) for a in (tp, true_count, predicted_count))
    return (_ratio(tp, predicted_count), _ratio(tp, true_count),
            _ratio(2 * tp, true_count + predicted_count))  # F1 = 2tp / (2tp + fp + fn)


def _ratio(a, b):
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


# ---- accumulating over batches ---------------------------------------------------------------
class Scores:
    """The running sums of one ``evaluate``: ``add`` each batch, then ``result()``.

    ``names`` from :func:`checked_names`; ``n_out`` the model's outputs; ``loss`` the loss the
    outputs were made for (its ``output_activation`` says whether one output is a logit,
    split at 0, or a probability, split at 0.5, as fit's accuracy does); ``weighted``: batches
    come with weights.
    """

    def __init__(self, names: list[str], kind: str, n_out: int, loss: Loss, weighted: bool):
        self.names, self.kind = names, kind
        self.n_classes = n_classes(n_out)
        self.threshold = 0.0 if loss.output_activation is not None else 0.5
        self.top_ks = sorted({int(_TOP_K.fullmatch(name).group(1)) for name in names if _TOP_K.fullmatch(name)})  # type: ignore[union-attr]
        self.row_losses = None
        if weighted and "loss" in names:
            if type(loss) in ROW_LOSSES:
                host = Backend()  # the reference ops on NumPy: Y and T are host arrays here
                self.row_losses = lambda Y, T: loss.rows(host, Y, T)
            else:
                raise ValueError(f"sample_weight: a weighted loss needs each row's loss, known for "
                                 f"{', '.join(cls.name for cls in ROW_LOSSES)}; not for {loss!r} "
                                 f"(leave 'loss' out of metrics to score the others)")
        self.weight = 0.0
        self.loss_sum = 0.0
        if kind == "classification":
            C = self.n_classes
            self.correct = 0.0
            self.top_k_hits = dict.fromkeys(self.top_ks, 0.0)
            self.tp, self.true_count, self.predicted_count = np.zeros(C), np.zeros(C), np.zeros(C)
            self.seen = np.zeros(C, dtype=bool)  # occurs in targets or predictions, whatever its weight
        else:
            self.abs_error, self.squared_error = np.zeros(n_out), np.zeros(n_out)
            self.target_mean, self.target_m2 = np.zeros(n_out), np.zeros(n_out)
            self.target_low, self.target_high = np.full(n_out, np.inf), np.full(n_out, -np.inf)

    @property
    def wants_mean_loss(self) -> bool:
        """The caller gives each batch's mean loss (the backend's, as fit computes it)."""
        return "loss" in self.names and self.row_losses is None

    def add(self, Y: np.ndarray, T: np.ndarray, labels: np.ndarray, w: np.ndarray | None = None,
            mean_loss: float | None = None) -> None:
        """One batch on the host: outputs ``Y (B, n_out)`` of the loss's layers, targets ``T (B, n_out)``,
        labels ``(B,)``, weights ``w (B,)`` or None, and, where ``wants_mean_loss``, the batch's mean loss."""
        Y = np.asarray(Y, dtype=np.float64)
        T = np.asarray(T, dtype=np.float64)
        ones = w is None
        w = np.ones(Y.shape[0]) if w is None else w
        batch_weight = float(np.sum(w))
        if "loss" in self.names:
            self.loss_sum += mean_loss * Y.shape[0] if ones else float(w @ self.row_losses(Y, T))  # type: ignore[misc]  # set where 'loss' is weighted
        if self.kind == "classification":
            self._add_classes(Y, labels, w)
        else:
            self._add_errors(Y, T, w, batch_weight)
        self.weight += batch_weight

    def _add_classes(self, Y, labels, w):
        C = self.n_classes
        predicted = (Y[:, 0] > self.threshold).astype(np.int64) if Y.shape[1] == 1 else np.argmax(Y, axis=1)
        hit = predicted == labels
        self.correct += float(w @ hit)
        self.tp += np.bincount(labels[hit], weights=w[hit], minlength=C)
        self.true_count += np.bincount(labels, weights=w, minlength=C)
        self.predicted_count += np.bincount(predicted, weights=w, minlength=C)
        self.seen[labels] = True
        self.seen[predicted] = True
        if self.top_ks:
            rank = self._true_class_rank(Y, labels, hit)
            for k in self.top_ks:
                self.top_k_hits[k] += float(w @ (rank < k))

    @staticmethod
    def _true_class_rank(Y, labels, hit):
        """How many classes rank above the true one: higher outputs, and equal ones of lower
        index (argmax's tie rule, so top-1 is accuracy)."""
        if Y.shape[1] == 1:
            return (~hit).astype(np.int64)
        true_score = Y[np.arange(Y.shape[0]), labels][:, None]  # (B, 1)
        lower = np.arange(Y.shape[1])[None, :] < labels[:, None]  # (B, C)
        return np.sum((Y > true_score) | ((Y == true_score) & lower), axis=1)

    def _add_errors(self, Y, T, w, batch_weight):
        E = Y - T
        self.abs_error += w @ np.abs(E)
        self.squared_error += w @ (E * E)
        if batch_weight == 0:
            return
        # The targets' weighted mean and sum of squared deviations, merged batch by batch
        # (Chan et al.): stable where a sum of squares minus a squared sum would cancel.
        mean = (w @ T) / batch_weight
        m2 = w @ ((T - mean) ** 2)
        total = self.weight + batch_weight
        delta = mean - self.target_mean
        self.target_m2 += m2 + delta * delta * self.weight * batch_weight / total
        self.target_mean += delta * batch_weight / total
        counted = T[w > 0]  # rows of weight 0 do not make a constant column vary
        self.target_low = np.minimum(self.target_low, counted.min(axis=0))
        self.target_high = np.maximum(self.target_high, counted.max(axis=0))

    def result(self) -> dict:
        """``{name: score}`` in the order of the names; per-class scores as lists."""
        W = self.weight
        if self.kind == "classification":
            precision, recall, f1 = class_scores(self.tp, self.true_count, self.predicted_count)
            values = {"accuracy": self.correct / W, "precision": precision.tolist(),
                      "recall": recall.tolist(), "f1": f1.tolist(), "macro_f1": float(np.mean(f1[self.seen]))}
            values.update({f"top_{k}_accuracy": hits / W for k, hits in self.top_k_hits.items()})
        else:
            # A constant target column has no spread (R² 1 if met exactly, else 0), whatever
            # rounding residue its running mean left in target_m2.
            spread = (self.target_high > self.target_low) & (self.target_m2 > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                r2 = np.where(spread, 1 - self.squared_error / self.target_m2,
                              np.where(self.squared_error == 0, 1.0, 0.0))
            values = {"mae": float(np.mean(self.abs_error / W)),
                      "rmse": float(np.mean(np.sqrt(self.squared_error / W))), "r2": float(np.mean(r2))}
        if "loss" in self.names:
            values["loss"] = self.loss_sum / W
        return {name: values[name] for name in self.names}
