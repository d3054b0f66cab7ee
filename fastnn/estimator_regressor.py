"""``MLPRegressor``: scikit-learn's ``MLPRegressor`` API, trained by fastnn.

A script written for scikit-learn switches by changing one import::

    from fastnn import MLPRegressor   # was: from sklearn.neural_network import MLPRegressor

    reg = MLPRegressor(hidden_layer_sizes=(30,), max_iter=200, random_state=0).fit(X, y)
    reg.predict(X_test), reg.score(X_test, y_test)   # score: R²

Same parameter names and defaults as scikit-learn's, plus ``backend`` (as
``MLPClassifier``); the same methods (``fit``, ``partial_fit``, ``predict``,
``score``, ``get_params``, ``set_params``) and fitted attributes (``loss_curve_``,
``n_iter_``, ``coefs_``, ``intercepts_``, ``n_outputs_``, ``best_loss_``,
``validation_scores_`` with early stopping, ...). Importing it does not import
scikit-learn or SciPy.

The model is scikit-learn's: an identity output layer and the squared error,
``y`` 1-D (one output, ``predict`` gives 1-D) or 2-D (``n_outputs_`` columns).
Early stopping scores R² on the held-out rows. ``loss="poisson"`` is refused
(fastnn has no Poisson loss). The rest, shared with ``MLPClassifier``, and where
it differs from scikit-learn: ``fastnn.estimator_mlp``.
"""
from __future__ import annotations

from typing import Any

from numpy.typing import ArrayLike, NDArray

from .estimator_base import RegressorMixin, r2_score
from .estimator_checks import _check_targets
from .estimator_mlp import _BaseMLP


class MLPRegressor(RegressorMixin, _BaseMLP):
    """A multi-layer perceptron regressor with scikit-learn's API (see the module docstring).

    >>> reg = MLPRegressor(hidden_layer_sizes=(30,), learning_rate_init=0.01, max_iter=100,
    ...                    random_state=0, backend="numba").fit(X, y)
    >>> reg.score(X_test, y_test), reg.loss_curve_[-1]
    """

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant", learning_rate_init=0.001,
                 power_t=0.5, max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 max_fun=15000, backend=None):
        # loss first, as in scikit-learn (>= 1.7): MLPRegressor((50,)) is not hidden_layer_sizes there either
        self.loss = loss
        super().__init__(hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
                         learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t,
                         max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol,
                         verbose=verbose, warm_start=warm_start, momentum=momentum,
                         nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
                         validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun,
                         backend=backend)

    # ---- fitting ------------------------------------------------------------
    def fit(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> MLPRegressor:
        """Train on ``X (n_samples, n_features)`` and targets ``y`` (1-D, or 2-D for several outputs),
        each row weighted by ``sample_weight`` (>= 0, None: all 1)."""
        return self._fit(X, y, incremental=False, sample_weight=sample_weight)

    def partial_fit(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> MLPRegressor:
        """One epoch over ``(X, y)`` (rows weighted by ``sample_weight``), continuing from the weights so far."""
        return self._fit(X, y, incremental=True, sample_weight=sample_weight)

    def _targets(self, y, n, first, incremental, classes):
        """``y`` as float64 rows ``(n, n_outputs)``; as many outputs as the first fit after that."""
        T = _check_targets(y, n, type(self).__name__)
        if not first and T.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {T.shape[1]} output{'s' if T.shape[1] > 1 else ''}, but "
                             f"{type(self).__name__} was fitted with {self.n_outputs_}; pass y of the "
                             f"first fit's width (or fit afresh: warm_start=False)")
        return T

    @staticmethod
    def _output(T):
        return T.shape[1], "identity", "mse"

    @staticmethod
    def _strata(T):
        return None  # no classes to keep in proportion (as scikit-learn)

    def _validation_score(self, X, T, sample_weight=None):
        return r2_score(T, self._predict_rows(X), sample_weight)

    def _sklearn_loss(self, loss):
        # fastnn's "mse" is ½‖ŷ − y‖² summed over the outputs and averaged over the rows; its gradient
        # (Y − T) / B is scikit-learn's step exactly (its output delta p − y, over the batch's rows),
        # for any number of outputs. scikit-learn *reports* squared_loss, ½ the mean over rows and
        # outputs: the same number divided by n_outputs_. So only the report is scaled, not the steps.
        return loss / self.n_outputs_

    # ---- prediction ----------------------------------------------------------
    def _predict_rows(self, X):
        """The network's output ``(n, n_outputs_)`` on host."""
        return self._net.backend.to_numpy(self._net.forward(X))

    def predict(self, X: ArrayLike) -> NDArray[Any]:
        """The predicted targets: ``(n_samples,)`` for one output, else ``(n_samples, n_outputs_)``."""
        self._check_fitted()
        Y = self._predict_rows(self._check_input(X, reset=False))
        return Y[:, 0].copy() if self.n_outputs_ == 1 else Y

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True  # scikit-learn's own leaves this False, though it fits them
        return tags
