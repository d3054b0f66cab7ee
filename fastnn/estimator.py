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

import warnings

import numpy as np

# the scikit-learn names stay importable from here, as before the split
from .estimator_base import (HAVE_SKLEARN, BaseEstimator, ClassifierMixin, ConvergenceWarning,  # noqa: F401
                             DataConversionWarning, NotFittedError, raised)
from .estimator_checks import (_HIDDEN_ACTIVATIONS, _check_params, _check_X, _check_y, _feature_names,
                               _hidden_sizes, _seed, _unique_labels)
from .estimator_epochs import _Epochs, _validation_split
from .estimator_pickle import pickled_state, restore_state
from .layers import Dense
from .model import Sequential, TrainingDiverged
from .optim import SGD, Adam


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
                          f"the optimization hasn't converged yet.", raised(ConvergenceWarning), stacklevel=4)
        if epochs.best is not None:
            for layer, (W, b) in zip(net.dense_layers, epochs.best):
                layer.W, layer.b = W, b

    # ---- prediction ----------------------------------------------------------
    def __sklearn_is_fitted__(self):
        return hasattr(self, "_net")

    def _check_fitted(self):
        if not hasattr(self, "_net"):
            raise raised(NotFittedError)(f"This {type(self).__name__} instance is not fitted yet. Call 'fit' "
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

    # ---- pickling: arrays and settings, never backend objects (see estimator_pickle) ----
    def __getstate__(self):
        return pickled_state(self)

    def __setstate__(self, state):
        restore_state(self, state)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        tags.input_tags.sparse = False
        return tags
