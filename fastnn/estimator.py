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

scikit-learn is optional. Where it is installed the class *is* a scikit-learn
estimator (it inherits ``BaseEstimator`` and ``ClassifierMixin``, raises
scikit-learn's ``NotFittedError``, so ``clone``, pipelines and grid search work);
where it is not, small stand-ins in this module provide the same methods.
Input checks are fastnn's own in both cases, with scikit-learn's messages.

How it maps onto scikit-learn's model, and where it differs:

- Outputs as scikit-learn: several classes -> softmax + cross-entropy; two
  classes -> *one* logistic output + binary cross-entropy (``n_outputs_ == 1``,
  ``predict_proba`` gives ``[1 - p, p]``); a 2-D 0/1 ``y`` -> multilabel, one
  logistic output per label.
- ``alpha`` (L2): scikit-learn adds ``alpha / (2 n_b) * sum ||W||^2`` to the loss
  of each batch of ``n_b`` rows (weights only, not intercepts), i.e. a gradient
  ``alpha / n_b * W``. That is fastnn's ``weight_decay = alpha / batch_size``.
  The one difference: the last, smaller batch of an epoch gets the same decay
  (scikit-learn's would be ``alpha / n_last``). ``loss_curve_`` adds the penalty
  as scikit-learn does, computed with the weights at the end of the epoch.
- ``solver="sgd"``: momentum with scikit-learn's (= PyTorch's) update; with
  ``learning_rate="invscaling"``/``"adaptive"`` the velocity is kept in
  gradient units, so a changed rate also scales the old velocity.
  ``solver="adam"``: ``eps`` is added to ``sqrt(v_hat)`` (the paper's form)
  rather than to ``sqrt(v)``; the two differ only at the ``eps`` scale.
- Initial weights: Glorot uniform (``sqrt(6 / (fan_in + fan_out))``) and zero
  intercepts, for every activation.
- Not supported: ``solver="lbfgs"`` (fastnn trains by mini-batches),
  ``sample_weight`` in ``fit``, sparse ``X`` (a clear ``TypeError``: pass
  ``X.toarray()``). ``max_fun`` is accepted and unused, as in scikit-learn
  for stochastic solvers.
- Float32 ``X`` trains in float32; any other input in float64 (as scikit-learn).
"""
from __future__ import annotations

import inspect
import math
import numbers
import warnings

import numpy as np

from .callbacks import Callback
from .layers import Dense, Identity, ReLU, Sigmoid, Tanh
from .losses import get_loss
from .model import Sequential, TrainingDiverged
from .optim import SGD, Adam, optimizer_from_config

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


_HIDDEN_ACTIVATIONS = {"identity": Identity, "logistic": Sigmoid, "tanh": Tanh, "relu": ReLU}


# ---- parameter checks (at fit time, as scikit-learn: __init__ and set_params never raise) ----
def _number(params, name, low, high=math.inf, low_open=False, high_open=False, integer=False):
    value = params[name]
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open or high == math.inf else ']'}"
        raise ValueError(f"The {name!r} parameter of MLPClassifier must be "
                         f"{'an int' if integer else 'a number'} in {interval}. Got {value!r} instead.")


def _choice(params, name, options):
    if not isinstance(params[name], str) or params[name] not in options:
        raise ValueError(f"The {name!r} parameter of MLPClassifier must be one of "
                         f"{sorted(options)}. Got {params[name]!r} instead.")


def _check_params(params):
    _choice(params, "activation", _HIDDEN_ACTIVATIONS)
    if params["solver"] == "lbfgs":
        raise ValueError("solver='lbfgs' is not supported by fastnn's MLPClassifier (it trains by "
                         "mini-batches); use solver='adam' or solver='sgd'")
    _choice(params, "solver", {"sgd", "adam"})
    _choice(params, "learning_rate", {"constant", "invscaling", "adaptive"})
    if params["batch_size"] != "auto":
        _number(params, "batch_size", 1, integer=True)
    _number(params, "alpha", 0)
    _number(params, "learning_rate_init", 0, low_open=True)
    _number(params, "power_t", 0)
    _number(params, "max_iter", 1, integer=True)
    _number(params, "tol", 0)
    _number(params, "momentum", 0, 1, high_open=True)  # 1 never forgets: fastnn's SGD refuses it
    _number(params, "validation_fraction", 0, 1, high_open=True)
    _number(params, "beta_1", 0, 1, high_open=True)
    _number(params, "beta_2", 0, 1, high_open=True)
    _number(params, "epsilon", 0, low_open=True)
    _number(params, "max_fun", 1, integer=True)
    if params["n_iter_no_change"] != np.inf:
        _number(params, "n_iter_no_change", 1, integer=True)
    for name in ("shuffle", "warm_start", "nesterovs_momentum", "early_stopping"):
        if not isinstance(params[name], (bool, np.bool_)):
            raise ValueError(f"The {name!r} parameter of MLPClassifier must be a bool. "
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


# ---- input checks ---------------------------------------------------------------
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


def _check_X(X):
    """``X`` as a C-contiguous float32 (if given so) or float64 ``(n, d)`` array."""
    if X is None:
        raise ValueError("Expected a 2D array for X, got None")
    if _is_sparse(X):
        raise TypeError("MLPClassifier: sparse input is not supported (fastnn trains on dense arrays); "
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
                             f"is required by MLPClassifier.")
    X = np.ascontiguousarray(X, dtype=np.float32 if X.dtype == np.float32 else np.float64)
    finite = np.isfinite(X)
    if not finite.all():
        row = int(np.argmin(finite.all(axis=1)))
        what = "NaN" if np.isnan(X).any() else f"infinity or a value too large for {X.dtype}"
        raise ValueError(f"Input X contains {what} (first in row {row}); MLPClassifier does not "
                         f"accept missing or infinite values: impute or drop them first.")
    return X


def _check_y(y, n):
    """``(y, kind)``: ``kind`` is "multiclass" (incl. binary) or "multilabel"."""
    if y is None:
        raise ValueError("MLPClassifier requires y to be passed, but the target y is None.")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        warnings.warn("A column-vector y was passed when a 1d array was expected. Please change the "
                      "shape of y to (n_samples,), for example using ravel().", DataConversionWarning,
                      stacklevel=3)
        y = y[:, 0]
    if y.ndim == 0 or y.ndim > 2 or y.shape[0] != n:
        raise ValueError(f"Found input variables with inconsistent numbers of samples: [{n}, "
                         f"{y.shape[0] if y.ndim else 'a scalar y'}]")
    if y.dtype.kind == "c":
        raise ValueError("Complex data not supported")
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


def _validation_split(codes, fraction, rng, stratify):
    """``(train_rows, val_rows)``: ``ceil(fraction * n)`` rows held out, classes in proportion."""
    n = codes.shape[0]
    n_val = math.ceil(fraction * n)
    if n_val < 2 or n - n_val < 1:
        raise ValueError("The validation set is too small. Increase 'validation_fraction' or the "
                         "size of your dataset.")
    order = rng.permutation(n)
    if stratify:
        # Rank every row within its class (in shuffled order), then sort by rank / class size:
        # each prefix of the result holds every class in proportion.
        shuffled = codes[order]
        counts = np.bincount(shuffled)
        by_class = np.argsort(shuffled, kind="stable")
        rank = np.empty(n)
        rank[by_class] = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
        order = order[np.argsort((rank + 0.5) / counts[shuffled], kind="stable")]
    return order[n_val:], order[:n_val]


class _Epochs(Callback):
    """scikit-learn's work after each epoch: ``n_iter_``, ``loss_curve_`` (with the L2 term),
    ``verbose`` lines, early stopping on held-out rows or the ``tol``/``n_iter_no_change`` test,
    the learning-rate schedules; it stops training where scikit-learn's epoch loop stops."""

    def __init__(self, clf, n, batch_size, validation):
        self.clf, self.n, self.n_batches, self.validation = clf, n, math.ceil(n / batch_size), validation
        self.best = None  # with early stopping: host copies of the best weights so far

    def on_epoch_end(self, epoch, logs=None):
        clf, optimizer = self.clf, self.model.optimizer
        clf.n_iter_ += 1
        clf.t_ += self.n
        clf.loss_ = logs["loss"] + clf._penalty(self.n_batches, self.n)
        clf.loss_curve_.append(clf.loss_)
        if clf.verbose:
            print(f"Iteration {clf.n_iter_}, loss = {clf.loss_:.8f}")
        if self.validation is not None:
            self.best = clf._track_validation(*self.validation, self.best)
        else:
            clf._track_loss()
        if clf.solver == "sgd" and clf.learning_rate == "invscaling":
            optimizer.lr = clf.learning_rate_init / (clf.t_ + 1) ** clf.power_t
        if clf._no_improvement_count > clf.n_iter_no_change and clf._stop_or_slow_down(optimizer):
            self.model.stop_training = True


class MLPClassifier(ClassifierMixin, BaseEstimator):
    """A multi-layer perceptron classifier with scikit-learn's API (see the module docstring).

    >>> clf = MLPClassifier(hidden_layer_sizes=(30,), solver="sgd", learning_rate_init=0.1,
    ...                     max_iter=30, random_state=0, backend="numba").fit(X, y)
    >>> clf.score(X_test, y_test), clf.loss_curve_[-1]
    """

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 max_fun=15000, backend=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.backend = backend

    # ---- fitting ------------------------------------------------------------
    def fit(self, X, y):
        """Train on ``X (n_samples, n_features)`` and labels ``y``; returns self."""
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X, y, classes=None):
        """One epoch over ``(X, y)``; the first call needs ``classes`` (all labels there will be)."""
        return self._fit(X, y, incremental=True, classes=classes)

    def _fit(self, X, y, incremental, classes=None):
        _check_params(self.get_params())
        hidden = _hidden_sizes(self.hidden_layer_sizes)
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        first = not hasattr(self, "_net") or (not self.warm_start and not incremental)
        if first:  # a refit starts from nothing: if it fails, the estimator is unfitted, not half-old
            self.__dict__.pop("_net", None)
            self.__dict__.pop("_optimizer", None)
        X = self._check_input(X, reset=first)
        y, kind = _check_y(y, X.shape[0])
        if first:
            self._set_classes(y, kind, incremental, classes)
        codes = self._encode(y, kind, incremental, classes)
        if first:
            self._initialize(hidden, X.dtype, kind)
        else:
            self._net.to(self.backend)
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = self._new_optimizer()
        try:
            self._fit_stochastic(X, codes, incremental)
        except TrainingDiverged as exc:
            raise ValueError(f"Solver produced non-finite parameter weights ({exc}). The input data "
                             f"may contain large values and need to be preprocessed.") from None
        return self

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

    def _initialize(self, hidden, dtype, kind):
        multiclass = kind == "multiclass" and len(self.classes_) > 2
        self.n_outputs_ = len(self.classes_) if kind == "multilabel" or multiclass else 1
        self.n_layers_ = len(hidden) + 2
        self.out_activation_ = "softmax" if multiclass else "logistic"
        self._loss = "cross_entropy" if multiclass else "binary_cross_entropy"
        sizes = [self.n_features_in_, *hidden, self.n_outputs_]
        layers = []
        for i in range(len(sizes) - 1):
            layers.append(Dense(sizes[i], sizes[i + 1], init="glorot_uniform"))
            if i < len(sizes) - 2:
                layers.append(_HIDDEN_ACTIVATIONS[self.activation]())
        self._net = Sequential(*layers, backend=self.backend, seed=_seed(self.random_state),
                               dtype=str(np.dtype(dtype)))
        self.n_iter_ = 0
        self.t_ = 0
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_, self.best_validation_score_, self.best_loss_ = [], -np.inf, None
        else:
            self.validation_scores_, self.best_validation_score_, self.best_loss_ = None, None, np.inf

    def _new_optimizer(self):
        if self.solver == "adam":
            return Adam(lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2), eps=self.epsilon)
        return SGD(lr=self.learning_rate_init, momentum=self.momentum,
                   nesterov=bool(self.nesterovs_momentum and self.momentum > 0))

    def _fit_stochastic(self, X, codes, incremental):
        net, optimizer = self._net, self._optimizer
        validation = None
        if self.early_stopping:
            rng = np.random.default_rng([_seed(self.random_state), 1])
            train, val = _validation_split(codes if codes.ndim == 1 else np.zeros(len(codes), int),
                                           self.validation_fraction, rng, stratify=codes.ndim == 1)
            X, codes, validation = X[train], codes[train], (X[val], codes[val])
        n = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going "
                              "to be clipped", stacklevel=4)
            batch_size = min(self.batch_size, n)
        optimizer.weight_decay = self.alpha / batch_size  # see the module docstring
        self.n_iter_ = 0
        # every epoch in one fit (one check of the data, one trainer); scikit-learn's work between
        # epochs runs in a callback, which stops training where scikit-learn's loop would
        epochs = _Epochs(self, n, batch_size, validation)
        history = net.fit(X, codes, epochs=1 if incremental else self.max_iter, batch_size=batch_size,
                          loss=self._loss, optimizer=optimizer, shuffle=self.shuffle, callbacks=[epochs])
        if history.interrupted:
            warnings.warn("Training interrupted by user.", stacklevel=4)
        elif not incremental and not net.stop_training and self.n_iter_ == self.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and "
                          f"the optimization hasn't converged yet.", ConvergenceWarning, stacklevel=4)
        if epochs.best is not None:
            for layer, (W, b) in zip(net.dense_layers, epochs.best):
                layer.W, layer.b = W, b

    def _penalty(self, n_batches, n):
        """scikit-learn's L2 term of the epoch loss: ``alpha / 2 * ||W||^2`` per batch, over n rows."""
        xp = self._net.backend.xp
        squares = sum(float(xp.sum(layer.W * layer.W)) for layer in self._net.dense_layers)
        return 0.5 * self.alpha * squares * n_batches / n

    def _track_loss(self):
        if self.best_loss_ is None:  # fitted with early_stopping before, now without it
            self.best_loss_ = np.inf
        if self.loss_curve_[-1] > self.best_loss_ - self.tol:
            self._no_improvement_count += 1
        else:
            self._no_improvement_count = 0
        self.best_loss_ = min(self.best_loss_, self.loss_curve_[-1])

    def _track_validation(self, X_val, codes_val, best):
        """Score on the held-out rows; returns the best weights so far (host copies)."""
        score = self._accuracy(self._predict_codes(X_val), codes_val)
        self.validation_scores_.append(score)
        if self.verbose:
            print(f"Validation score: {score:f}")
        if score < self.best_validation_score_ + self.tol:
            self._no_improvement_count += 1
        else:
            self._no_improvement_count = 0
        if score > self.best_validation_score_ or best is None:
            self.best_validation_score_ = max(score, self.best_validation_score_)
            to_numpy = self._net.backend.to_numpy
            best = [(to_numpy(d.W).copy(), to_numpy(d.b).copy()) for d in self._net.dense_layers]
        return best

    def _stop_or_slow_down(self, optimizer):
        what = "Validation score" if self.early_stopping else "Training loss"
        message = (f"{what} did not improve more than tol={self.tol:f} for "
                   f"{self.n_iter_no_change} consecutive epochs.")
        if self.solver == "sgd" and self.learning_rate == "adaptive" and optimizer.lr > 1e-6:
            optimizer.lr /= 5.0
            self._no_improvement_count = 0
            if self.verbose:
                print(f"{message} Setting learning rate to {optimizer.lr:f}")
            return False
        if self.verbose:
            print(f"{message} Stopping.")
        return True

    # ---- prediction ----------------------------------------------------------
    def __sklearn_is_fitted__(self):
        return hasattr(self, "_net")

    def _check_fitted(self):
        if not hasattr(self, "_net"):
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet. Call 'fit' "
                                 f"with appropriate arguments before using this estimator.")

    def _check_input(self, X, reset):
        """``X`` checked (see ``_check_X``), its width and feature names against the fit's."""
        names = _feature_names(X)
        X = _check_X(X)
        if reset:
            self.n_features_in_ = X.shape[1]
            if names is not None:
                self.feature_names_in_ = names
            elif hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
            return X
        fitted = getattr(self, "feature_names_in_", None)
        if names is not None and fitted is None:
            warnings.warn(f"X has feature names, but {type(self).__name__} was fitted without feature "
                          f"names", UserWarning, stacklevel=3)
        elif names is None and fitted is not None:
            warnings.warn(f"X does not have valid feature names, but {type(self).__name__} was "
                          f"fitted with feature names", UserWarning, stacklevel=3)
        elif names is not None and not np.array_equal(names, fitted):
            raise ValueError(f"The feature names should match those that were passed during fit: "
                             f"fitted with {list(fitted)}, got {list(names)}")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input.")
        return X

    def _predict_codes(self, X):
        P = self._net.predict_proba(X)
        if self._label_kind == "multilabel":
            return (P > 0.5).astype(np.int64)
        if P.shape[1] == 1:
            return (P[:, 0] > 0.5).astype(np.int64)
        return np.argmax(P, axis=1)

    @staticmethod
    def _accuracy(predicted, codes):
        hits = predicted == codes if predicted.ndim == 1 else np.all(predicted == codes, axis=1)
        return float(np.mean(hits))

    def predict(self, X):
        """The predicted labels (from ``classes_``), or the 0/1 matrix for multilabel."""
        self._check_fitted()
        codes = self._predict_codes(self._check_input(X, reset=False))
        return codes if self._label_kind == "multilabel" else self.classes_[codes]

    def predict_proba(self, X):
        """Class probabilities ``(n_samples, n_classes)``, columns in the order of ``classes_``."""
        self._check_fitted()
        P = self._net.predict_proba(self._check_input(X, reset=False))
        if self._label_kind != "multilabel" and P.shape[1] == 1:
            return np.hstack([1 - P, P])
        return P

    def predict_log_proba(self, X):
        """``log(predict_proba(X))``."""
        return np.log(self.predict_proba(X))

    # ---- fitted weights, as scikit-learn names them --------------------------------
    @property
    def coefs_(self):
        """The weight matrices, one per layer, as host NumPy copies."""
        self._check_fitted()
        return [self._net.backend.to_numpy(d.W).copy() for d in self._net.dense_layers]

    @property
    def intercepts_(self):
        """The bias vectors, one per layer, as host NumPy copies."""
        self._check_fitted()
        return [self._net.backend.to_numpy(d.b).copy() for d in self._net.dense_layers]

    # ---- pickling: arrays and settings, never backend objects --------------------
    def __getstate__(self):
        state = dict(self.__dict__)
        net = state.pop("_net", None)
        optimizer = state.pop("_optimizer", None)
        if net is not None:
            state["_weights"] = [(net.backend.to_numpy(d.W).copy(), net.backend.to_numpy(d.b).copy())
                                 for d in net.dense_layers]
            state["_layers"] = [layer.config() for layer in net.layers]
            state["_dtype"] = net.dtype
            state["_batch_rng"] = net.batch_rng.bit_generator.state
        if optimizer is not None:
            arrays, counters = optimizer.state_arrays(net.backend)
            state["_optimizer_state"] = (optimizer.config(), arrays, counters)
        return state

    def __setstate__(self, state):
        from .layers import layer_from_config

        state = dict(state)
        weights = state.pop("_weights", None)
        layers, dtype = state.pop("_layers", None), state.pop("_dtype", None)
        rng_state = state.pop("_batch_rng", None)
        optimizer_state = state.pop("_optimizer_state", None)
        self.__dict__.update(state)
        if weights is None:
            return
        net = Sequential(*[layer_from_config(c) for c in layers], backend=self.backend, dtype=dtype)
        for layer, (W, b) in zip(net.dense_layers, weights):
            layer.W, layer.b = W, b
        net.batch_rng.bit_generator.state = rng_state
        net.loss = get_loss(self._loss)  # predict_proba applies the loss's output activation
        self._net = net
        if optimizer_state is not None:
            config, arrays, counters = optimizer_state
            self._optimizer = optimizer_from_config(config)
            self._optimizer.load_state_arrays(net.backend, arrays, counters, dtype)

    if HAVE_SKLEARN:
        def __sklearn_tags__(self):
            tags = super().__sklearn_tags__()
            tags.classifier_tags.multi_label = True
            tags.input_tags.sparse = False
            return tags
