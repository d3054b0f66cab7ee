"""``Sequential``'s training: ``fit`` (the epoch loop, callbacks, checkpoints, Ctrl-C), an epoch
layer by layer on the backend's ops or as one call of a backend's compiled trainer
(``fastnn.trainer``), sample and class weights, and the snapshots that undo an epoch.

``Training`` is a mixin of :class:`fastnn.Sequential`: the methods are the model's, kept in
their own file.
"""
from __future__ import annotations

import functools
import math
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import numpy as np
from numpy.typing import ArrayLike

from . import notices
from . import validation as check
from .callbacks import ResumeCheckpoint
from .history import History
from .losses import Loss, LossName

if TYPE_CHECKING:
    import os

    from .callbacks import Callback
    from .optim import Optimizer


#: ``History.path`` of a weighted fit on a compiled trainer that takes no weights (CuPy's graph)
WEIGHTED_PATH = "layer by layer (sample weights: this backend's compiled trainer takes none)"


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or inf during ``fit``; the weights were restored."""


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _in_backend_scope(method: _Method) -> _Method:
    """Run ``method`` inside ``self.backend.scope(self)``: on a GPU backend, its own device, so
    every array the model makes lands where the parameters are (``"cupy:1"`` beside ``"cupy:0"``)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self.backend.scope(self):
            return method(self, *args, **kwargs)
    return cast(_Method, run)  # the same signature: typed callers see the method's own


def _one_thread_at_a_time(method: _Method) -> _Method:
    """Refuse ``method`` (fit, backprop) while another thread runs either on the same model: both
    would update the same weights, gradients and optimizer state, and lose or mix updates. The
    thread already training may call them again (a callback's backprop); nobody waits."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        if not self._training.acquire(blocking=False):
            raise RuntimeError(f"{method.__name__}: this model ({self!r}) is being trained by another "
                               f"thread ({self._training_thread}); a model trains in one thread at a time: "
                               f"wait for that one, or give this thread its own model")
        try:
            self._training_thread = threading.current_thread().name
            return method(self, *args, **kwargs)
        finally:
            self._training.release()
    return cast(_Method, run)


class Training:
    """fit and its epochs (mixed into Sequential)."""

    if TYPE_CHECKING:  # what fit reads of the model (Sequential sets them)
        from .backend import Backend
        from .layers import Dense, Layer

        backend: Backend
        dtype: str
        loss: Loss | None
        optimizer: Optimizer | None
        batch_rng: np.random.Generator
        epochs_trained: int
        stop_training: bool
        layers: list[Layer]

        @property
        def dense_layers(self) -> list[Dense]: ...

        @property
        def n_out(self) -> int: ...

        def evaluate(self, X: ArrayLike, y: ArrayLike, loss: LossName | Loss | None = None, batch_size: int = 4096,
                     metrics: Any = None, sample_weight: ArrayLike | None = None) -> dict[str, Any]: ...

        def training_layers(self, loss: Loss) -> list[Layer]: ...

    @_one_thread_at_a_time
    @_in_backend_scope
    def fit(self, X: ArrayLike, y: ArrayLike, epochs: int = 1, batch_size: int = 32, loss: LossName | Loss | None = None,
            optimizer: Optimizer | None = None, lr: float | None = None,
            shuffle: bool = True, validation_data: tuple[ArrayLike, ArrayLike] | None = None,
            validation_split: float = 0.0, verbose: int = 0, checkpoint: str | os.PathLike[str] | None = None,
            resume: bool = False, on_epoch_end: Callable[[int, dict[str, Any]], Any] | None = None,
            callbacks: Callback | list[Callback] | None = None, sample_weight: ArrayLike | None = None,
            class_weight: dict[int, float] | Literal["balanced"] | None = None, comm: Any = None) -> History:
        """Train by mini-batch gradient descent; returns a :class:`History`.

        - ``loss``: ``"mse"``, ``"cross_entropy"``, ``"binary_cross_entropy"`` or a Loss
          (default: the model's last loss, else ``"cross_entropy"``).
        - ``optimizer`` (an SGD/Adam object) *or* ``lr`` (plain SGD at that rate);
          neither: the optimizer of the last fit, else ``SGD(lr=0.1)``.
        - Batches: a permutation per epoch from the model's seeded host generator,
          the last partial batch kept. ``shuffle=False`` keeps the data order.
        - ``validation_data=(X_val, y_val)`` adds ``val_loss``/``val_accuracy``;
          ``validation_split=0.2`` holds out the *last* 20% of the rows instead (before any
          shuffling, as Keras does; ``validation_data``, when given, is used instead).
        - ``sample_weight``: one weight >= 0 per row of X (finite, not all zero); ``class_weight``:
          ``{class: weight}`` (classes absent weigh 1) or ``"balanced"`` (scikit-learn's
          ``n_rows / (n_classes · rows of the class)``, over the training rows), multiplying
          ``sample_weight``; a class is a label of 1-D ``y`` or the column of a one-hot row. Each
          batch's loss is ``Σ wᵢ·lossᵢ / Σ wᵢ`` over its rows, so its step follows the weighted
          mean gradient (weight decay as the optimizer's rule, unweighted); a batch whose weights
          are all zero makes no step (the optimizer's step count stays). The History's ``loss`` is
          the weighted mean over the epoch; ``accuracy`` and the validation scores stay unweighted
          (``validation_split`` drops the weights of the rows it holds out). The compiled numba epoch
          takes weights; CuPy's CUDA graph does not: there a weighted fit trains layer by layer.
          ``fit(X, y, sample_weight=w)``
        - ``checkpoint="ckpt.npz"`` saves after every epoch; ``resume=True``
          continues from it (same final weights as an uninterrupted run): the
          checkpoint's weights, optimizer (settings and state), batch order and
          history replace this model's; a missing file starts from epoch 1. The
          whole checkpoint is checked first: one that is damaged or crafted
          (:class:`~fastnn.ModelFileError`) or trained with other settings (``ValueError``)
          is refused with this model's weights, loss, optimizer and batch order untouched.
        - ``callbacks=[...]``: :class:`fastnn.Callback` objects run after every epoch (one
          may stop training: ``self.model.stop_training = True``); ``on_epoch_end=f``
          calls ``f(epoch, logs)`` after every epoch, after the callbacks.
        - ``verbose=1`` prints which path trains (and why), a notice while kernels compile,
          and a line per epoch. ``History.path`` keeps the path in words.
        - Ctrl-C stops training and keeps the last completed epoch: the epoch in
          progress is rolled back (weights, optimizer state, batch order), the History
          has ``interrupted=True`` and, with ``verbose``, a line on stderr says so.
        - A NaN/inf loss raises :class:`TrainingDiverged` naming the epoch (and batch),
          with finite weights restored.
        - A model trains in one thread at a time: ``fit`` or ``backprop`` while another
          thread's runs raises ``RuntimeError`` at once (a callback may call ``backprop``).
        - ``comm=MPI.COMM_WORLD`` (mpi4py, ``pip install 'fastnn[mpi]'``, run under ``mpiexec``):
          data-parallel training; every rank passes the same data and seed,
          ``batch_size`` is per rank, and N ranks at batch b train as one process at batch N·b.
          Rank 0 alone writes the checkpoint and runs the validation. Details:
          :mod:`fastnn.distributed`. A communicator of one rank trains as without it.
        """
        if comm is not None and comm.Get_size() > 1:
            from . import distributed
            return distributed.fit(self, comm, X, y, epochs=epochs, batch_size=batch_size, loss=loss,
                                   optimizer=optimizer, lr=lr, shuffle=shuffle, validation_data=validation_data,
                                   validation_split=validation_split, verbose=verbose, checkpoint=checkpoint,
                                   resume=resume, on_epoch_end=on_epoch_end, callbacks=callbacks,
                                   sample_weight=sample_weight, class_weight=class_weight)
        from . import io
        from .fit_arguments import checked as checked_arguments

        args = checked_arguments(self, X, y, epochs=epochs, batch_size=batch_size, loss=loss, optimizer=optimizer,
                                 lr=lr, shuffle=shuffle, validation_data=validation_data,
                                 validation_split=validation_split, checkpoint=checkpoint, resume=resume,
                                 on_epoch_end=on_epoch_end, callbacks=callbacks, sample_weight=sample_weight,
                                 class_weight=class_weight)
        epochs, batch_size, loss, optimizer, callbacks = (args.epochs, args.batch_size, args.loss, args.optimizer,
                                                          args.callbacks)
        X, T, labels, weights, validation_data = args.X, args.T, args.labels, args.weights, args.validation_data
        total_weight = X.shape[0] if weights is None else float(weights.sum())
        n = X.shape[0]
        trainer = path = None
        if not resume:  # a resume changes the model first: its trainer is chosen below
            trainer, path = self._training_plan(loss, optimizer, n, epochs, batch_size, verbose,
                                                weights is not None)
        # A compiled epoch that stops at a NaN/inf in X spares the pass over the whole set.
        x_checked_by_trainer = getattr(trainer, "checks_finite_x", False)
        if not x_checked_by_trainer:
            check.placed_finite(self.backend, X)
        resumed = None
        if resume:  # the whole checkpoint is checked here; nothing of it is applied yet
            resumed = io.read_checkpoint(self, checkpoint, args.resume_settings, verbose)
        previous = self.loss, self.optimizer
        self.loss, self.optimizer = loss, optimizer  # only now: a refused call changes nothing

        history = History()
        first_epoch = 0
        if resume:
            if resumed is not None:
                first_epoch, history = io.apply_checkpoint(self, resumed, verbose)
            trainer, path = self._training_plan(loss, self.optimizer, n, epochs - first_epoch, batch_size, verbose,
                                                weights is not None)
        history.path = path
        if checkpoint:  # saved after every epoch, before the user's callbacks see it
            callbacks = [ResumeCheckpoint(checkpoint, history, batch_size, shuffle), *callbacks]

        self.stop_training = False
        for callback in callbacks:
            callback.set_model(self)
            callback.on_train_begin({})
        for epoch in range(first_epoch, epochs):
            for callback in callbacks:
                callback.on_epoch_begin(epoch + 1, {})  # a schedule sets this epoch's rate here
            rng_state = self.batch_rng.bit_generator.state
            saved = self._snapshot()
            started = time.perf_counter()
            try:
                order = self.batch_rng.permutation(n) if shuffle else np.arange(n)
                if trainer is not None:
                    result = self._epoch_compiled(trainer, X, T, labels, order, batch_size, epoch, saved,
                                                  x_checked_by_trainer, weights)
                    if result is None:  # X holds a NaN/inf: refused, as the check before training does
                        self.batch_rng.bit_generator.state = rng_state
                        self.loss, self.optimizer = previous
                        check.finite(X)  # raises, naming the first such row
                    loss_sum, correct = result
                else:
                    loss_sum, correct = self._epoch_layers(X, T, labels, order, batch_size, loss, epoch, saved,
                                                           weights, count_correct=not args.regression)
                mean_loss = loss_sum / total_weight
                if not math.isfinite(mean_loss):
                    self._restore(saved)
                    raise TrainingDiverged(f"fit: the loss became {mean_loss} in epoch {epoch + 1}; "
                                           f"weights restored to the end of epoch {epoch}")
                logs = {"loss": mean_loss, **({} if args.regression else {"accuracy": correct / n}),
                        "lr": float(self.optimizer.lr)}
                if validation_data is not None:
                    scores = self.evaluate(*validation_data, loss=loss)
                    logs["val_loss"] = scores["loss"]
                    if "accuracy" in scores:  # a regression (mse, no output activation, float rows) has none
                        logs["val_accuracy"] = scores["accuracy"]
            except KeyboardInterrupt:
                # Back to the end of the last completed epoch, batch generator included,
                # so a later fit (or the checkpoint) continues as if never interrupted.
                self._restore(saved)
                self.batch_rng.bit_generator.state = rng_state
                if verbose:
                    print(f"fit: interrupted (Ctrl-C) in epoch {epoch + 1}; stopped and kept the weights "
                          f"of the last completed epoch ({epoch})", file=sys.stderr)
                history.interrupted = True
                break
            logs["seconds"] = time.perf_counter() - started
            self.epochs_trained += 1
            history.append(epoch + 1, logs)
            if verbose:
                print(history.line(-1, n), file=sys.stderr)
            for callback in callbacks:
                callback.on_epoch_end(epoch + 1, dict(logs))
            if self.stop_training:
                break
        for callback in callbacks:
            callback.on_train_end({"epochs": len(history), "interrupted": history.interrupted})
        return history

    def _training_plan(self, loss, optimizer, n, epochs, batch_size, verbose, weighted=False):
        """The backend's ``(trainer, path)`` for this job; with ``verbose``, its notices and the path."""
        with notices.shown(verbose):
            trainer, path = self.backend.training_plan(self, loss, optimizer, n, epochs, batch_size)
            if weighted and trainer is not None and not trainer.takes_weights:
                trainer, path = None, WEIGHTED_PATH
            notices.logger.info(f"fit: backend {self.backend.name}, {path}")
        return trainer, path

    def _epoch_layers(self, X, T, labels, order, batch_size, loss, epoch, saved, weights=None, count_correct=True):
        """One epoch, batch by batch, with the backend's ops: ``(loss_sum, n_correct)``, the loss
        summed over rows, each row's times its weight (``weights``: host float64, one per row, or None);
        ``count_correct=False`` (a regression: it logs no accuracy): n_correct 0, nothing counted."""
        backend, xp = self.backend, self.backend.xp
        layers = self.training_layers(loss)
        dense = self.dense_layers
        host_order, order = order, backend.asarray(order)
        loss_sum, correct = 0.0, 0
        n = X.shape[0]
        with self._dropout_batches(layers, self.epochs_trained) as set_rows:
            for batch, start in enumerate(range(0, n, batch_size)):
                stop = min(start + batch_size, n)
                idx = order[start:stop]
                set_rows(idx)
                scale, batch_weight = self._batch_weights(weights, host_order[start:stop])
                if batch_weight == 0:  # every row weighs zero: no step (nor a step count); outputs for accuracy
                    if not count_correct:
                        continue
                    Y = self._run(layers, self._batch_rows(X, T, idx)[0])
                else:
                    value, Y = self._batch_step(layers, X, T, idx, loss, epoch, batch, saved, scale)
                    loss_sum = loss_sum + value * batch_weight
                if count_correct:
                    correct = correct + self._n_correct(Y, xp.take(labels, idx, axis=0), loss)
                if batch_weight != 0:
                    self.optimizer.step(backend, dense)
        return float(loss_sum), int(correct)

    def _batch_weights(self, weights, rows):
        """``(scale, Σw)`` of the batch of ``rows`` (host indices): ``scale`` the backend's (B,)
        ``wᵢ·B / Σw`` for :meth:`_forward_backward`, or None where the plain mean is the weighted
        one (no weights, or all alike: then the numbers are the unweighted ones, bit for bit);
        ``Σw`` the row count when unweighted, a Python number either way (it keeps the loss's dtype)."""
        if weights is None:
            return None, len(rows)
        w = weights[rows]
        total = float(w.sum())
        if total == 0 or np.all(w == w[0]):
            return None, total
        return self.backend.asarray(w * (len(w) / total), dtype=self.dtype), total

    def _batch_rows(self, X, T, idx):
        """The rows ``idx`` of X and T, X in T's dtype."""
        xp = self.backend.xp
        Xb, Tb = xp.take(X, idx, axis=0), xp.take(T, idx, axis=0)
        if Xb.dtype != Tb.dtype:  # a data set kept as uint8 (Backend.training_set)
            Xb = xp.astype(Xb, Tb.dtype)
        return Xb, Tb

    def _batch_step(self, layers, X, T, idx, loss, epoch, batch, saved, scale=None):
        """Forward and backward on the rows ``idx`` (weighted by ``scale``, see :meth:`_forward_backward`):
        ``(loss, output)``; raises at a NaN/inf loss."""
        backend = self.backend
        Xb, Tb = self._batch_rows(X, T, idx)
        value, Y = self._forward_backward(layers, Xb, Tb, loss, scale)
        if backend.check_every_batch and not math.isfinite(float(value)):
            self._restore_if_not_finite(saved)
            raise TrainingDiverged(f"fit: the loss became {float(value)} in epoch {epoch + 1}, "
                                   f"batch {batch + 1}; training stopped before that update")
        return value, Y

    def _epoch_compiled(self, trainer, X, T, labels, order, batch_size, epoch, saved, x_unchecked=False,
                        weights=None):
        """One epoch as one call of a backend's compiled trainer: ``(loss_sum, correct)``, or None
        when it stopped at a NaN/inf in X, which fit left to it (``x_unchecked``): then the
        epoch is undone."""
        loss_sum, correct, bad_batch = trainer(X, T, labels, order, batch_size, weights)
        if bad_batch >= 0 and x_unchecked and not check.all_finite(X):
            self._restore(saved)
            return None
        if bad_batch >= 0:
            # with X finite, a trainer that checks X stops on sums that overflowed too
            what = "the loss or a first-layer sum" if x_unchecked else "the loss"
            self._restore_if_not_finite(saved)
            raise TrainingDiverged(f"fit: {what} became NaN or inf in epoch {epoch + 1}, "
                                   f"batch {bad_batch + 1}; training stopped before that update")
        return float(loss_sum), int(correct)

    def _snapshot(self):
        xp = self.backend.xp
        params = [(xp.asarray(d.W, copy=True), xp.asarray(d.b, copy=True)) for d in self.dense_layers]
        state = {key: {slot: xp.asarray(v, copy=True) for slot, v in entry.items()}
                 for key, entry in self.optimizer.state.items()} if self.optimizer else {}
        counters = dict(self.optimizer._counters()) if self.optimizer else {}
        return params, state, counters

    def _restore(self, saved):
        params, state, counters = saved
        for layer, (W, b) in zip(self.dense_layers, params):
            layer._W, layer._b = W, b
        if self.optimizer is not None:
            self.optimizer.state = state
            for name, value in counters.items():
                setattr(self.optimizer, name, value)

    def _restore_if_not_finite(self, saved):
        xp = self.backend.xp
        finite = all(bool(xp.all(xp.isfinite(p))) for d in self.dense_layers for p in (d.W, d.b))
        if not finite:
            self._restore(saved)
