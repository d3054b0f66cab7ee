"""The MLP estimators' work between epochs, as scikit-learn's training loop does it.

``fit`` trains every epoch in one ``Sequential.fit``; the callback here keeps
``n_iter_``, ``t_``, ``loss_curve_`` (with scikit-learn's L2 term), the
``verbose`` lines, early stopping on held-out rows or the
``tol``/``n_iter_no_change`` test and the learning-rate schedules, and stops
training where scikit-learn's loop would stop.
"""
from __future__ import annotations

import math

import numpy as np

from .callbacks import Callback


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

    def __init__(self, clf, n, batch_size, validation, mean_weight=1.0):
        # clf: the estimator (an MLPClassifier or MLPRegressor) whose fitted attributes these are;
        # validation: (X, targets, sample_weight or None) held out for early stopping, or None
        self.clf, self.n, self.n_batches, self.validation = clf, n, math.ceil(n / batch_size), validation
        self.mean_weight = mean_weight  # of the training rows' sample_weight (1: unweighted)
        self.best = None  # with early stopping: host copies of the best weights so far

    def on_epoch_end(self, epoch, logs=None):
        clf, optimizer = self.clf, self.model.optimizer
        clf.n_iter_ += 1
        clf.t_ += self.n
        clf.loss_ = clf._sklearn_loss(logs["loss"]) + self._penalty()
        clf.loss_curve_.append(clf.loss_)
        if clf.verbose:
            print(f"Iteration {clf.n_iter_}, loss = {clf.loss_:.8f}")
        if self.validation is not None:
            self._track_validation(*self.validation)
        else:
            self._track_loss()
        if clf.solver == "sgd" and clf.learning_rate == "invscaling":
            optimizer.lr = clf.learning_rate_init / (clf.t_ + 1) ** clf.power_t
        if clf._no_improvement_count > clf.n_iter_no_change and self._stop_or_slow_down(optimizer):
            self.model.stop_training = True

    def _penalty(self):
        """scikit-learn's L2 term of the epoch loss: ``alpha / 2 * ||W||^2`` per batch, over the n rows'
        weight (n · mean weight)."""
        net = self.clf._net
        xp = net.backend.xp
        squares = sum(float(xp.sum(layer.W * layer.W)) for layer in net.dense_layers)
        return 0.5 * self.clf.alpha * squares * self.n_batches / (self.n * self.mean_weight)

    def _track_loss(self):
        clf = self.clf
        if clf.best_loss_ is None:  # fitted with early_stopping before, now without it
            clf.best_loss_ = np.inf
        if clf.loss_curve_[-1] > clf.best_loss_ - clf.tol:
            clf._no_improvement_count += 1
        else:
            clf._no_improvement_count = 0
        clf.best_loss_ = min(clf.best_loss_, clf.loss_curve_[-1])

    def _track_validation(self, X_val, targets_val, weights_val):
        """Score on the held-out rows (accuracy or R², weighted by ``weights_val`` unless None); keeps
        the best weights so far (host copies) in ``best``."""
        clf = self.clf
        score = clf._validation_score(X_val, targets_val, weights_val)
        clf.validation_scores_.append(score)
        if clf.verbose:
            print(f"Validation score: {score:f}")
        if score < clf.best_validation_score_ + clf.tol:
            clf._no_improvement_count += 1
        else:
            clf._no_improvement_count = 0
        if score > clf.best_validation_score_ or self.best is None:
            clf.best_validation_score_ = max(score, clf.best_validation_score_)
            to_numpy = clf._net.backend.to_numpy
            self.best = [(to_numpy(d.W).copy(), to_numpy(d.b).copy()) for d in clf._net.dense_layers]

    def _stop_or_slow_down(self, optimizer):
        """After ``n_iter_no_change`` epochs without progress: True to stop, or (sgd with the
        adaptive rate) False after dividing the learning rate by 5."""
        clf = self.clf
        what = "Validation score" if clf.early_stopping else "Training loss"
        message = (f"{what} did not improve more than tol={clf.tol:f} for "
                   f"{clf.n_iter_no_change} consecutive epochs.")
        if clf.solver == "sgd" and clf.learning_rate == "adaptive" and optimizer.lr > 1e-6:
            optimizer.lr /= 5.0
            clf._no_improvement_count = 0
            if clf.verbose:
                print(f"{message} Setting learning rate to {optimizer.lr:f}")
            return False
        if clf.verbose:
            print(f"{message} Stopping.")
        return True
