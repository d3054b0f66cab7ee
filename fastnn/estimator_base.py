"""scikit-learn's estimator protocol for fastnn's estimators, without importing scikit-learn.

``import sklearn`` takes about a second (it loads scipy.stats through sklearn.utils): more
than a small job's whole training. So ``from fastnn import MLPClassifier`` does not import
it; the classes here implement what scikit-learn's tools ask of an estimator
(``get_params``/``set_params``, ``__sklearn_tags__``, ``_estimator_type``, ``score``), so
``clone``, pipelines, grid search and scikit-learn's estimator checks work, with or
without scikit-learn installed. The one thing they are not is a subclass of
``sklearn.base.BaseEstimator`` (an ``isinstance`` test against it is False).

Errors and warnings are fastnn's ``NotFittedError``, ``ConvergenceWarning`` and
``DataConversionWarning``; once the script has imported scikit-learn, what is raised is
also an instance of scikit-learn's class of the same name (``raised(cls)``), so an
``except`` clause or a warning filter written for either catches it.
"""
from __future__ import annotations

import importlib.util
import inspect
import sys
import warnings

import numpy as np

#: whether scikit-learn can be imported (found without importing it)
HAVE_SKLEARN = importlib.util.find_spec("sklearn") is not None


class NotFittedError(ValueError, AttributeError):
    """Raised when a method needs a fitted estimator."""


class ConvergenceWarning(UserWarning):
    """The solver stopped at ``max_iter`` before converging."""


class DataConversionWarning(UserWarning):
    """The input was converted (e.g. a column-vector ``y`` raveled)."""


class UndefinedMetricWarning(UserWarning):
    """A score is not defined for the data (e.g. R² of fewer than two samples)."""


_BOTH: dict[type, type] = {}


def raised(cls):
    """``cls``, or once scikit-learn is imported, a subclass of ``cls`` and of scikit-learn's
    class of the same name (``sklearn.exceptions``)."""
    if sys.modules.get("sklearn") is None:  # not imported (or blocked): nothing to be caught as
        return cls
    if cls not in _BOTH:
        from sklearn import exceptions
        _BOTH[cls] = type(cls.__name__, (cls, getattr(exceptions, cls.__name__)),
                          {"__module__": cls.__module__, "__doc__": cls.__doc__})
    return _BOTH[cls]


#: class -> its constructor's parameter names (see BaseEstimator._get_param_names)
_PARAM_NAMES: dict[type, tuple[str, ...]] = {}


class BaseEstimator:
    """scikit-learn's estimator protocol: the parameters are the ``__init__`` arguments."""

    @classmethod
    def _get_param_names(cls):
        names = _PARAM_NAMES.get(cls)
        if names is None:  # read once per class: inspect.signature is a third of a ms, and fit asks
            signature = inspect.signature(cls.__init__)
            names = _PARAM_NAMES[cls] = tuple(sorted(p.name for p in signature.parameters.values() if p.name != "self"))
        return list(names)

    def get_params(self, deep=True):
        """The constructor parameters (``deep`` is accepted; there are no nested estimators)."""
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params):
        valid = self._get_param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"Invalid parameter {name!r} for estimator {type(self).__name__}. "
                                 f"Valid parameters are: {valid!r}.")
            setattr(self, name, value)
        return self

    def __repr__(self):
        """The parameters that differ from the defaults, by name (as scikit-learn's)."""
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = [f"{name}={value!r}" for name, value in self.get_params().items()
                   if not _same(value, defaults[name])]
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_tags__(self):
        # only scikit-learn calls this, so it is already imported
        from sklearn.utils import Tags, TargetTags
        return Tags(estimator_type=None, target_tags=TargetTags(required=False), transformer_tags=None,
                    regressor_tags=None, classifier_tags=None)


class ClassifierMixin:
    """A classifier in scikit-learn's sense: ``score`` is the (subset) accuracy."""

    _estimator_type = "classifier"  # what scikit-learn before 1.6 reads

    def __sklearn_tags__(self):
        from sklearn.utils import ClassifierTags
        tags = super().__sklearn_tags__()
        tags.estimator_type = "classifier"
        tags.classifier_tags = ClassifierTags()
        tags.target_tags.required = True
        return tags

    def score(self, X, y, sample_weight=None):
        """Mean accuracy of ``predict(X)`` against ``y`` (weighted by ``sample_weight``)."""
        predicted, y = self.predict(X), np.asarray(y)
        hits = predicted == y if predicted.ndim == 1 else np.all(predicted == y, axis=1)
        return float(np.average(hits, weights=sample_weight))


class RegressorMixin:
    """A regressor in scikit-learn's sense: ``score`` is R² (:func:`r2_score`)."""

    _estimator_type = "regressor"  # what scikit-learn before 1.6 reads

    def __sklearn_tags__(self):
        from sklearn.utils import RegressorTags
        tags = super().__sklearn_tags__()
        tags.estimator_type = "regressor"
        tags.regressor_tags = RegressorTags()
        tags.target_tags.required = True
        return tags

    def score(self, X, y, sample_weight=None):
        """R² of ``predict(X)`` against ``y`` (averaged over outputs, weighted by ``sample_weight``)."""
        return r2_score(y, self.predict(X), sample_weight=sample_weight)


def r2_score(y_true, y_pred, sample_weight=None) -> float:
    """scikit-learn's ``r2_score`` (``multioutput="uniform_average"``, ``force_finite=True``):
    ``1 - SS_res / SS_tot`` per output, averaged; a constant ``y_true`` scores 1.0 if predicted
    exactly, else 0.0.

    >>> r2_score([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    0.5
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    y_true = y_true.reshape(len(y_true), -1) if y_true.ndim == 1 else y_true
    y_pred = y_pred.reshape(len(y_pred), -1) if y_pred.ndim == 1 else y_pred
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred have different shapes: {y_true.shape} and {y_pred.shape}")
    if len(y_true) < 2:
        warnings.warn("R^2 score is not well-defined with less than two samples.",
                      raised(UndefinedMetricWarning), stacklevel=2)
        return float("nan")
    weights = np.ones(len(y_true)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if weights.shape != (len(y_true),):
        raise ValueError(f"sample_weight must have shape ({len(y_true)},), got {weights.shape}")
    residual = weights @ (y_true - y_pred) ** 2  # (n,) @ (n, k) -> (k,)
    total = weights @ (y_true - np.average(y_true, axis=0, weights=weights)) ** 2
    scores = np.where(residual == 0, 1.0, 0.0)  # the cases with total == 0
    defined = total != 0
    scores[defined] = 1 - residual[defined] / total[defined]
    return float(np.mean(scores))


def _same(a, b):
    try:
        return type(a) is type(b) and bool(a == b)
    except (TypeError, ValueError):
        return a is b
