"""The MLP estimators' checks of their parameters and inputs, with scikit-learn's messages.

Parameters are checked at fit time, as scikit-learn does (``__init__`` and
``set_params`` never raise); ``X`` and ``y`` on every call that takes them.
"""
from __future__ import annotations

import functools
import math
import numbers
import warnings

import numpy as np

from .estimator_base import DataConversionWarning, raised
from .layers import Identity, ReLU, Sigmoid, Tanh

_HIDDEN_ACTIVATIONS = {"identity": Identity, "logistic": Sigmoid, "tanh": Tanh, "relu": ReLU}


# ---- parameters --------------------------------------------------------------------
def _number(params, name, low, high=math.inf, low_open=False, high_open=False, integer=False,
            *, estimator):
    value = params[name]
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open or high == math.inf else ']'}"
        raise ValueError(f"The {name!r} parameter of {estimator} must be "
                         f"{'an int' if integer else 'a number'} in {interval}. Got {value!r} instead.")


def _choice(params, name, options, *, estimator):
    if not isinstance(params[name], str) or params[name] not in options:
        raise ValueError(f"The {name!r} parameter of {estimator} must be one of "
                         f"{sorted(options)}. Got {params[name]!r} instead.")


def _check_params(params, estimator):
    """scikit-learn's constraints on the shared MLP parameters; errors name ``estimator``."""
    number = functools.partial(_number, params, estimator=estimator)
    choice = functools.partial(_choice, params, estimator=estimator)
    choice("activation", _HIDDEN_ACTIVATIONS)
    if params["solver"] == "lbfgs":
        raise ValueError(f"solver='lbfgs' is not supported by fastnn's {estimator} (it trains by "
                         "mini-batches); use solver='adam' or solver='sgd'")
    choice("solver", {"sgd", "adam"})
    if "loss" in params:  # MLPRegressor's
        if params["loss"] == "poisson":
            raise ValueError(f"loss='poisson' is not supported by fastnn's {estimator} (fastnn has no "
                             f"Poisson loss); use loss='squared_error'")
        choice("loss", {"squared_error"})
    choice("learning_rate", {"constant", "invscaling", "adaptive"})
    if params["batch_size"] != "auto":
        number("batch_size", 1, integer=True)
    number("alpha", 0)
    number("learning_rate_init", 0, low_open=True)
    number("power_t", 0)
    number("max_iter", 1, integer=True)
    number("tol", 0)
    number("momentum", 0, 1, high_open=True)  # 1 never forgets: fastnn's SGD refuses it
    number("validation_fraction", 0, 1, high_open=True)
    number("beta_1", 0, 1, high_open=True)
    number("beta_2", 0, 1, high_open=True)
    number("epsilon", 0, low_open=True)
    number("max_fun", 1, integer=True)
    if params["n_iter_no_change"] != np.inf:
        number("n_iter_no_change", 1, integer=True)
    for name in ("shuffle", "warm_start", "nesterovs_momentum", "early_stopping"):
        if not isinstance(params[name], (bool, np.bool_)):
            raise ValueError(f"The {name!r} parameter of {estimator} must be a bool. "
                             f"Got {params[name]!r} instead.")


def _hidden_sizes(value):
    sizes = [value] if isinstance(value, numbers.Integral) else value
    try:
        sizes = list(sizes)
    except TypeError:
        sizes = None
    if sizes is None or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0
                                for s in sizes):
        raise ValueError(f"hidden_layer_sizes must be a positive int or a sequence of positive ints, "
                         f"got {value!r}")
    return [int(s) for s in sizes]


def _seed(random_state):
    """An int seed from scikit-learn's ``random_state`` (None, int, RandomState, Generator)."""
    if random_state is None:
        return np.random.SeedSequence().entropy
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(np.iinfo(np.int32).max))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**63 - 1))
    raise ValueError(f"random_state must be None, an int, a numpy RandomState or Generator, "
                     f"got {random_state!r}")


# ---- inputs ------------------------------------------------------------------------
def _is_sparse(X):
    return type(X).__module__.startswith("scipy.sparse")


def _feature_names(X):
    columns = getattr(X, "columns", None)
    if columns is None or isinstance(X, np.ndarray):
        return None
    names = list(columns)
    if names and all(isinstance(name, str) for name in names):
        return np.asarray(names, dtype=object)
    return None


def _check_X(X, estimator):
    """``X`` as a C-contiguous float32 (if given so) or float64 ``(n, d)`` array; errors name ``estimator``."""
    if X is None:
        raise ValueError("Expected a 2D array for X, got None")
    if _is_sparse(X):
        raise TypeError(f"{estimator}: sparse input is not supported (fastnn trains on dense arrays); "
                        "pass X.toarray() if it fits in memory")
    X = np.asarray(X)
    if X.dtype.kind == "c":
        raise ValueError("Complex data not supported")
    if X.dtype.kind not in "biuf":
        try:
            X = X.astype(np.float64)  # object arrays of numbers; a dict or a str inside fails here
        except ValueError as exc:
            raise ValueError(f"X: expected numbers ({exc})") from None
    if X.ndim != 2:
        raise ValueError(f"Expected 2D array, got {X.ndim}D array instead (shape {X.shape}). Reshape "
                         f"your data either using array.reshape(-1, 1) if your data has a single "
                         f"feature or array.reshape(1, -1) if it contains a single sample.")
    for axis, what in ((0, "sample"), (1, "feature")):
        if X.shape[axis] == 0:
            raise ValueError(f"Found array with 0 {what}(s) (shape={X.shape}) while a minimum of 1 "
                             f"is required by {estimator}.")
    X = np.ascontiguousarray(X, dtype=np.float32 if X.dtype == np.float32 else np.float64)
    finite = np.isfinite(X)
    if not finite.all():
        row = int(np.argmin(finite.all(axis=1)))
        what = "NaN" if np.isnan(X).any() else f"infinity or a value too large for {X.dtype}"
        raise ValueError(f"Input X contains {what} (first in row {row}); {estimator} does not "
                         f"accept missing or infinite values: impute or drop them first.")
    return X


def _column_raveled(y, n):
    """``y`` with a column vector raveled (with scikit-learn's warning), checked for ``n`` rows."""
    if y.ndim == 2 and y.shape[1] == 1:
        warnings.warn("A column-vector y was passed when a 1d array was expected. Please change the "
                      "shape of y to (n_samples,), for example using ravel().", raised(DataConversionWarning),
                      stacklevel=6)  # the user's call: fit, _fit, _targets, the y check, here
        y = y[:, 0]
    if y.ndim == 0 or y.ndim > 2 or y.shape[0] != n:
        raise ValueError(f"Found input variables with inconsistent numbers of samples: [{n}, "
                         f"{y.shape[0] if y.ndim else 'a scalar y'}]")
    if y.dtype.kind == "c":
        raise ValueError("Complex data not supported")
    return y


def _check_y(y, n):
    """``(y, kind)``: ``kind`` is "multiclass" (incl. binary) or "multilabel"."""
    if y is None:
        raise ValueError("MLPClassifier requires y to be passed, but the target y is None.")
    y = _column_raveled(np.asarray(y), n)
    numeric = y
    if y.dtype.kind in "OU" and not all(isinstance(v, str) for v in y.ravel()):
        try:
            numeric = y.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError("Unknown label type: y mixes strings with other values") from None
    if numeric.dtype.kind == "f":
        if not np.isfinite(numeric).all():
            raise ValueError("Input y contains NaN or infinity.")
        if not np.all(numeric == np.round(numeric)):
            raise ValueError("Unknown label type: continuous. MLPClassifier expects discrete class "
                             "labels, not a regression target with continuous values.")
    if y.ndim == 1:
        return y, "multiclass"
    if numeric.dtype.kind not in "biuf" or not np.isin(numeric, (0, 1)).all():
        raise ValueError("Unknown label type: multiclass-multioutput. A 2-D y must be a 0/1 "
                         "multilabel indicator matrix.")
    return numeric.astype(np.int64), "multilabel"


def _unique_labels(y):
    try:
        return np.unique(y)
    except TypeError:
        raise ValueError("Unknown label type: y mixes labels of types that cannot be compared "
                         "(e.g. strings and numbers)") from None


def _check_targets(y, n, estimator):
    """Regression targets as a float64 ``(n, n_outputs)`` array: a 1-D ``y`` is one output."""
    if y is None:
        raise ValueError(f"{estimator} requires y to be passed, but the target y is None.")
    y = _column_raveled(np.asarray(y), n)
    try:
        y = y.astype(np.float64)  # ints, bools, object arrays of numbers
    except (TypeError, ValueError):
        raise ValueError(f"{estimator} expects numeric targets y (a regression), got dtype {y.dtype}; "
                         f"for class labels use MLPClassifier") from None
    if np.isnan(y).any():
        raise ValueError("Input y contains NaN.")
    if not np.isfinite(y).all():
        raise ValueError("Input y contains infinity or a value too large for dtype('float64').")
    y = y.reshape(n, -1)
    if y.shape[1] == 0:
        raise ValueError(f"y has 0 outputs (shape {y.shape}); {estimator} needs at least one")
    return y
