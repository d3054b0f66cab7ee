"""``MLPClassifier``: scikit-learn's ``MLPClassifier`` API, trained by fastnn.

A script written for scikit-learn switches by changing one import::

    from fastnn import MLPClassifier   # was: from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(30,), max_iter=50, random_state=0).fit(X, y)
    clf.predict(X_test), clf.predict_proba(X_test), clf.score(X_test, y_test)

Same parameter names and defaults as scikit-learn's, plus ``backend`` (None:
fastnn's default, ``fastnn.default_backend()``: numba where it is installed, else
numpy; ``"cupy"`` for a GPU); the same methods (``fit``, ``partial_fit``,
``predict``, ``predict_proba``, ``predict_log_proba``, ``score``,
``get_params``, ``set_params``) and fitted attributes (``classes_`` of any
label type, ``loss_curve_``, ``n_iter_``, ``coefs_``, ...).

scikit-learn is optional, and importing this class does not import it (a second
of a small script's time): ``fastnn.estimator_base`` implements scikit-learn's
estimator protocol, so ``clone``, pipelines, grid search and scikit-learn's
estimator checks work; once scikit-learn is imported, a ``NotFittedError`` or
``ConvergenceWarning`` is also an instance of scikit-learn's class of that name.
Input checks are fastnn's own, with scikit-learn's messages
(``fastnn.estimator_checks``).

How it maps onto scikit-learn's model: the outputs as scikit-learn's; several
classes -> softmax + cross-entropy; two classes -> *one* logistic output +
binary cross-entropy (``n_outputs_ == 1``, ``predict_proba`` gives
``[1 - p, p]``); a 2-D 0/1 ``y`` -> multilabel, one logistic output per label.
What it shares with ``MLPRegressor`` (``alpha``, the solvers, the initial
weights, what is not supported) and where that differs from scikit-learn:
``fastnn.estimator_mlp``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

# the scikit-learn names stay importable from here, as before the split
from .estimator_base import (HAVE_SKLEARN, BaseEstimator, ClassifierMixin, ConvergenceWarning,  # noqa: F401
                             DataConversionWarning, NotFittedError, raised)
from .estimator_checks import _check_y, _unique_labels
from .estimator_epochs import _validation_split  # noqa: F401
from .estimator_mlp import _BaseMLP


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """A multi-layer perceptron classifier with scikit-learn's API (see the module docstring).

    >>> clf = MLPClassifier(hidden_layer_sizes=(30,), solver="sgd", learning_rate_init=0.1,
    ...                     max_iter=30, random_state=0, backend="numba").fit(X, y)
    >>> clf.score(X_test, y_test), clf.loss_curve_[-1]
    """

    # ---- fitting ------------------------------------------------------------
    def fit(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> MLPClassifier:
        """Train on ``X (n_samples, n_features)`` and labels ``y``, each row weighted by
        ``sample_weight`` (>= 0, None: all 1); returns self."""
        return self._fit(X, y, incremental=False, sample_weight=sample_weight)

    def partial_fit(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None,
                    classes: ArrayLike | None = None) -> MLPClassifier:
        """One epoch over ``(X, y)`` (rows weighted by ``sample_weight``); the first call needs
        ``classes`` (all labels there will be)."""
        return self._fit(X, y, incremental=True, classes=classes, sample_weight=sample_weight)

    def _targets(self, y, n, first, incremental, classes):
        """Class indices ``(n,)``, or the 0/1 matrix for multilabel; the first call sets ``classes_``."""
        y, kind = _check_y(y, n)
        if first:
            self._set_classes(y, kind, incremental, classes)
        return self._encode(y, kind, incremental, classes)

    def _set_classes(self, y, kind, incremental, classes):
        self._label_kind = kind
        if kind == "multilabel":
            self.classes_ = np.arange(y.shape[1])
            return
        if incremental:
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            y = np.asarray(classes)
        self.classes_ = _unique_labels(y)
        if len(self.classes_) < 2:
            raise ValueError(f"MLPClassifier needs samples of at least 2 classes in the data, but "
                             f"the data contains only one class: {self.classes_[0]!r}")

    def _encode(self, y, kind, incremental, classes):
        """Training targets: class indices (n,), or the 0/1 matrix for multilabel."""
        if kind == "multilabel" or self._label_kind == "multilabel":
            if kind != self._label_kind or y.shape[1] != len(self.classes_):
                raise ValueError(f"y must be a 0/1 matrix with {len(self.classes_)} columns, as in "
                                 f"the first fit")
            return y
        if incremental and classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"`classes={list(classes)!r}` is not the same as on the first call to "
                             f"partial_fit, was: {list(self.classes_)!r}")
        present = _unique_labels(y)
        unknown = present[~np.isin(present, self.classes_)]
        if unknown.size:
            what = "the same classes as in the previous call to fit" if self.warm_start and not incremental \
                else "only classes in self.classes_"
            raise ValueError(f"y has classes not in self.classes_ {list(self.classes_)!r}: "
                             f"{list(unknown)!r}; it must have {what}")
        return np.searchsorted(self.classes_, y).astype(np.int64)

    def _output(self, codes):
        multiclass = self._label_kind == "multiclass" and len(self.classes_) > 2
        n_outputs = len(self.classes_) if self._label_kind == "multilabel" or multiclass else 1
        if multiclass:
            return n_outputs, "softmax", "cross_entropy"
        return n_outputs, "logistic", "binary_cross_entropy"

    @staticmethod
    def _strata(codes):
        return codes if codes.ndim == 1 else None  # multilabel: not stratified, as scikit-learn

    def _validation_score(self, X, codes, sample_weight=None):
        return self._accuracy(self._predict_codes(X), codes, sample_weight)

    # ---- prediction ----------------------------------------------------------
    def _predict_codes(self, X):
        P = self._net.predict_proba(X)
        if self._label_kind == "multilabel":
            return (P > 0.5).astype(np.int64)
        if P.shape[1] == 1:
            return (P[:, 0] > 0.5).astype(np.int64)
        return np.argmax(P, axis=1)

    @staticmethod
    def _accuracy(predicted, codes, sample_weight=None):
        hits = predicted == codes if predicted.ndim == 1 else np.all(predicted == codes, axis=1)
        return float(np.average(hits, weights=sample_weight))

    def predict(self, X: ArrayLike) -> NDArray[Any]:
        """The predicted labels (from ``classes_``), or the 0/1 matrix for multilabel."""
        self._check_fitted()
        codes = self._predict_codes(self._check_input(X, reset=False))
        return codes if self._label_kind == "multilabel" else self.classes_[codes]

    def predict_proba(self, X: ArrayLike) -> NDArray[Any]:
        """Class probabilities ``(n_samples, n_classes)``, columns in the order of ``classes_``."""
        self._check_fitted()
        P = self._net.predict_proba(self._check_input(X, reset=False))
        if self._label_kind != "multilabel" and P.shape[1] == 1:
            return np.hstack([1 - P, P])
        return P

    def predict_log_proba(self, X: ArrayLike) -> NDArray[Any]:
        """``log(predict_proba(X))``."""
        return np.log(self.predict_proba(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags
