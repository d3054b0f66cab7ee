"""scikit-learn's base classes and exceptions for ``MLPClassifier``, or stand-ins without it.

Where scikit-learn is installed these are its own ``BaseEstimator``,
``ClassifierMixin``, ``NotFittedError``, ``ConvergenceWarning`` and
``DataConversionWarning`` (so ``clone``, pipelines and grid search work); where
it is not, small classes here provide the same methods and names.
"""
from __future__ import annotations

import inspect

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.exceptions import ConvergenceWarning, DataConversionWarning, NotFittedError
    HAVE_SKLEARN = True
except ImportError:
    HAVE_SKLEARN = False

    class NotFittedError(ValueError, AttributeError):
        """Raised when a method needs a fitted estimator (scikit-learn's, when installed)."""

    class ConvergenceWarning(UserWarning):
        """The solver stopped at ``max_iter`` before converging."""

    class DataConversionWarning(UserWarning):
        """The input was converted (e.g. a column-vector ``y`` raveled)."""

    class BaseEstimator:
        """Stand-in for scikit-learn's: parameters are the ``__init__`` arguments."""

        @classmethod
        def _param_names(cls):
            signature = inspect.signature(cls.__init__)
            return [p.name for p in signature.parameters.values() if p.name != "self"]

        def get_params(self, deep=True):
            """The constructor parameters (``deep`` is accepted; there are no nested estimators)."""
            return {name: getattr(self, name) for name in self._param_names()}

        def set_params(self, **params):
            valid = self._param_names()
            for name, value in params.items():
                if name not in valid:
                    raise ValueError(f"Invalid parameter {name!r} for estimator {type(self).__name__}. "
                                     f"Valid parameters are: {valid!r}.")
                setattr(self, name, value)
            return self

        def __repr__(self):
            defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
            changed = [f"{name}={value!r}" for name, value in self.get_params().items()
                       if not _same(value, defaults.get(name))]
            return f"{type(self).__name__}({', '.join(changed)})"

    class ClassifierMixin:
        """Stand-in for scikit-learn's: ``score`` is the (subset) accuracy."""

        def score(self, X, y, sample_weight=None):
            """Mean accuracy of ``predict(X)`` against ``y`` (weighted by ``sample_weight``)."""
            predicted, y = self.predict(X), np.asarray(y)
            hits = predicted == y if predicted.ndim == 1 else np.all(predicted == y, axis=1)
            return float(np.average(hits, weights=sample_weight))


def _same(a, b):
    try:
        return type(a) is type(b) and bool(a == b)
    except (TypeError, ValueError):
        return a is b
