"""What ``MLPClassifier`` and ``MLPRegressor`` share: scikit-learn's MLP parameters, training by
mini-batches on a fastnn ``Sequential``, the fitted weights, pickling.

How both map onto scikit-learn's model, and where they differ:

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
- ``sample_weight`` (``fit``, ``partial_fit``): each batch's loss and gradient are the
  weighted means, as scikit-learn's; weights must be >= 0 (scikit-learn takes negative ones
  too). scikit-learn divides the L2 gradient by the batch's weight sum, fastnn by
  ``batch_size · mean(sample_weight)`` (the same when a batch holds the whole set, or all
  weights are 1); ``loss_curve_`` is the weighted mean of the epoch (scikit-learn averages the
  batches' weighted means by their row counts: the same when one batch holds the whole set).
  Weighted, training runs layer by layer on every backend (``Sequential.fit``).
- Not supported: ``solver="lbfgs"`` (fastnn trains by mini-batches),
  sparse ``X`` (a clear ``TypeError``: pass ``X.toarray()``). ``max_fun`` is accepted and unused, as in scikit-learn
  for stochastic solvers.
- Float32 ``X`` trains in float32; any other input in float64 (as scikit-learn).
"""
from __future__ import annotations

import warnings

import numpy as np

from .estimator_base import BaseEstimator, ConvergenceWarning, NotFittedError, raised
from .estimator_checks import _HIDDEN_ACTIVATIONS, _check_params, _check_X, _feature_names, _hidden_sizes, _seed
from .estimator_epochs import _Epochs, _validation_split
from .estimator_pickle import pickled_state, restore_state
from .layers import Dense
from .metrics import sample_weights
from .model import Sequential, TrainingDiverged
from .optim import SGD, Adam


class _BaseMLP(BaseEstimator):
    """The shared part of the MLP estimators. A subclass says what its targets are:

    - ``_targets(y, n, first, incremental, classes)``: ``y`` checked, as the rows ``Sequential.fit``
      trains on (setting ``classes_`` and the like on the ``first`` call);
    - ``_output(targets)``: ``(n_outputs_, out_activation_, fastnn loss name)``;
    - ``_strata(targets)``: labels the early-stopping split keeps in proportion, or None;
    - ``_validation_score(X, targets, sample_weight)``: the early-stopping score (higher is better);
    - ``_sklearn_loss(loss)``: fastnn's epoch loss as scikit-learn reports it.
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
    def _fit(self, X, y, incremental, classes=None, sample_weight=None):
        _check_params(self.get_params(), type(self).__name__)
        hidden = _hidden_sizes(self.hidden_layer_sizes)
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        first = not hasattr(self, "_net") or (not self.warm_start and not incremental)
        if first:  # a refit starts from nothing: if it fails, the estimator is unfitted, not half-old
            self.__dict__.pop("_net", None)
            self.__dict__.pop("_optimizer", None)
        X = self._check_input(X, reset=first)
        weights = sample_weights(sample_weight, X.shape[0], np.asarray)  # host float64, or None
        targets = self._targets(y, X.shape[0], first, incremental, classes)
        if first:
            self._initialize(hidden, X.dtype, targets)
        else:
            self._net.to(self.backend)
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = self._new_optimizer()
        try:
            self._fit_stochastic(X, targets, incremental, weights)
        except TrainingDiverged as exc:
            raise ValueError(f"Solver produced non-finite parameter weights ({exc}). The input data "
                             f"may contain large values and need to be preprocessed.") from None
        return self

    def _initialize(self, hidden, dtype, targets):
        self.n_outputs_, self.out_activation_, self._loss = self._output(targets)
        self.n_layers_ = len(hidden) + 2
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

    def _fit_stochastic(self, X, targets, incremental, weights):
        net, optimizer = self._net, self._optimizer
        validation = None
        if self.early_stopping:
            rng = np.random.default_rng([_seed(self.random_state), 1])
            strata = self._strata(targets)
            train, val = _validation_split(np.zeros(len(targets), int) if strata is None else strata,
                                           self.validation_fraction, rng, stratify=strata is not None)
            validation = (X[val], targets[val], None if weights is None else weights[val])
            X, targets, weights = X[train], targets[train], None if weights is None else weights[train]
            if validation[2] is not None and not np.any(validation[2] > 0):
                raise ValueError("sample_weight: every row held out for early stopping weighs zero; its "
                                 "score would be undefined (use other weights or random_state)")
        n = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going "
                              "to be clipped", stacklevel=4)
            batch_size = min(self.batch_size, n)
        # scikit-learn's L2 gradient is alpha / (the batch's weight sum): see the module docstring
        mean_weight = 1.0 if weights is None else float(np.mean(weights))
        optimizer.weight_decay = self.alpha / (batch_size * mean_weight)
        self.n_iter_ = 0
        # every epoch in one fit (one check of the data, one trainer); scikit-learn's work between
        # epochs runs in a callback, which stops training where scikit-learn's loop would
        epochs = _Epochs(self, n, batch_size, validation, mean_weight)
        history = net.fit(X, targets, epochs=1 if incremental else self.max_iter, batch_size=batch_size,
                          loss=self._loss, optimizer=optimizer, shuffle=self.shuffle, callbacks=[epochs],
                          sample_weight=weights)
        if history.interrupted:
            warnings.warn("Training interrupted by user.", stacklevel=4)
        elif not incremental and not net.stop_training and self.n_iter_ == self.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and "
                          f"the optimization hasn't converged yet.", raised(ConvergenceWarning), stacklevel=4)
        if epochs.best is not None:
            for layer, (W, b) in zip(net.dense_layers, epochs.best):
                layer.W, layer.b = W, b

    def _sklearn_loss(self, loss):
        return loss

    # ---- inputs at predict time ----------------------------------------------
    def __sklearn_is_fitted__(self):
        return hasattr(self, "_net")

    def _check_fitted(self):
        if not hasattr(self, "_net"):
            raise raised(NotFittedError)(f"This {type(self).__name__} instance is not fitted yet. Call 'fit' "
                                         f"with appropriate arguments before using this estimator.")

    def _check_input(self, X, reset):
        """``X`` checked (see ``_check_X``), its width and feature names against the fit's."""
        names = _feature_names(X)
        X = _check_X(X, type(self).__name__)
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
        tags.input_tags.sparse = False
        return tags
