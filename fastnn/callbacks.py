"""Callbacks: code that ``fit`` runs between epochs, in Keras's sense.

>>> class StopAt(fastnn.Callback):
...     def on_epoch_end(self, epoch, logs):
...         if logs["loss"] < 0.05:
...             self.model.stop_training = True     # ends fit after this epoch
>>> net.fit(X, y, epochs=100, callbacks=[StopAt()])

``fit`` calls ``set_model(net)``, then ``on_train_begin(logs)``; around every epoch
``on_epoch_begin(epoch, logs)`` and ``on_epoch_end(epoch, logs)`` (epochs count from 1, both
hooks get the same number; ``logs`` at the end hold that epoch's ``loss``, ``accuracy``,
``seconds``, ``lr`` (the rate it trained at) and, with validation data,
``val_loss``/``val_accuracy``); and ``on_train_end(logs)`` once training stops. Between epochs
a callback may change the optimizer's hyper-parameters (``self.model.optimizer.lr``): the next
epoch uses them, on every backend and in the compiled epoch.

Ready-made, with Keras's semantics: :class:`EarlyStopping`, :class:`ModelCheckpoint`,
:class:`LearningRateScheduler` (schedules in :mod:`fastnn.schedules`), :class:`ReduceLROnPlateau`.
Where Keras warns that a monitored value is missing from the logs and carries on, these raise
``ValueError``: fit's logs hold the same keys every epoch (validation runs every epoch or
never), so the callback would do nothing for the whole run.
"""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .optim import _non_negative, _number
from .validation import count


class Callback:
    """The hooks ``fit`` calls; each does nothing here. ``self.model``: the model in training."""

    #: the Sequential in training (``fit`` sets it; Any, so a subclass reads and sets what it needs)
    model: Any = None

    def set_model(self, model: Any) -> None:
        self.model = model

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        pass


class LambdaCallback(Callback):
    """A callback from plain functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``.

    ``fit(on_epoch_end=f)`` is ``fit(callbacks=[LambdaCallback(on_epoch_end=f)])``.
    """

    def __init__(self, on_train_begin: Callable[..., Any] | None = None,
                 on_epoch_end: Callable[..., Any] | None = None,
                 on_train_end: Callable[..., Any] | None = None,
                 on_epoch_begin: Callable[..., Any] | None = None) -> None:
        for name, function in (("on_train_begin", on_train_begin), ("on_epoch_begin", on_epoch_begin),
                               ("on_epoch_end", on_epoch_end), ("on_train_end", on_train_end)):
            if function is not None:
                if not callable(function):
                    raise TypeError(f"LambdaCallback: {name} must be callable, got {type(function).__name__}")
                setattr(self, name, function)


class ResumeCheckpoint(Callback):
    """What ``fit(checkpoint=path)`` runs first after every epoch: the model, its optimizer, the
    batch order and the History so far, for ``fit(resume=True)`` (``fastnn.io_checkpoint``)."""

    def __init__(self, path: Any, history: Any, batch_size: int, shuffle: bool) -> None:
        self.path, self.history, self.batch_size, self.shuffle = path, history, batch_size, shuffle

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        from .io_checkpoint import save_checkpoint
        save_checkpoint(self.model, self.path, epoch, self.history, self.batch_size, self.shuffle)


def checked(callbacks: Callback | Iterable[Callback] | None,
            on_epoch_end: Callable[..., Any] | None = None) -> list[Callback]:
    """``fit``'s callbacks as a list (``on_epoch_end`` last, as its own LambdaCallback)."""
    if callbacks is None:
        callbacks = []
    elif isinstance(callbacks, Callback):
        callbacks = [callbacks]
    else:
        callbacks = list(callbacks)
    for i, callback in enumerate(callbacks):
        if not isinstance(callback, Callback):
            raise TypeError(f"fit: callbacks[{i}] is {type(callback).__name__}, not a fastnn.Callback "
                            f"(subclass it, or pass a function as on_epoch_end=)")
    if on_epoch_end is not None:
        if not callable(on_epoch_end):
            raise TypeError(f"fit: on_epoch_end must be callable, got {type(on_epoch_end).__name__}")
        callbacks.append(LambdaCallback(on_epoch_end=on_epoch_end))
    return callbacks


# ---- watching a logged value -------------------------------------------------------
class _Monitor:
    """A value of the logs to watch, the way it should go (``mode``) and by how much (``min_delta``).

    ``mode="auto"``: down for names ending in ``loss``, up for names holding ``acc``
    (``val_`` prefix or not); any other name needs ``mode="min"`` or ``"max"``.
    """

    def __init__(self, owner, monitor, mode, min_delta=0.0):
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"{owner}: monitor must be the name of a logged value such as 'val_loss', "
                            f"got {monitor!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"{owner}: mode must be 'auto', 'min' or 'max', got {mode!r}")
        if mode == "auto":
            name = monitor.removeprefix("val_")
            mode = "min" if name.endswith("loss") else "max" if "acc" in name else None
            if mode is None:
                raise ValueError(f"{owner}: mode='auto' cannot tell whether {monitor!r} should go down or "
                                 f"up; pass mode='min' or mode='max'")
        self.owner, self.name, self.mode = owner, monitor, mode
        self.min_delta = _non_negative("min_delta", min_delta, owner)

    def worst(self) -> float:
        return math.inf if self.mode == "min" else -math.inf

    def improves(self, value, reference) -> bool:
        """``value`` beats ``reference`` by more than ``min_delta`` (never for NaN)."""
        if self.mode == "min":
            return value < reference - self.min_delta
        return value > reference + self.min_delta

    def value(self, logs) -> float:
        logs = logs or {}
        if self.name not in logs:
            hint = "; pass validation_data=(X_val, y_val) to fit" if self.name.startswith("val_") else ""
            raise ValueError(f"{self.owner}: monitor={self.name!r} is not in fit's logs, which hold "
                             f"{', '.join(sorted(logs)) or 'nothing'}{hint}")
        return float(logs[self.name])


def _say(verbose, text):
    if verbose:
        print(text, file=sys.stderr)  # where fit(verbose=1) prints its epoch lines


def _host_weights(model):
    """Host copies of every Dense layer's ``(W, b)``: they survive the next epoch's in-place updates."""
    to_numpy = model.backend.to_numpy
    return [(np.array(to_numpy(d.W), copy=True), np.array(to_numpy(d.b), copy=True))
            for d in model.dense_layers]


def _set_weights(model, weights):
    for layer, (W, b) in zip(model.dense_layers, weights):
        layer.W, layer.b = W, b  # the setters move them to the layer's backend and dtype


# ---- stopping and saving -----------------------------------------------------------
class EarlyStopping(Callback):
    """Stop training when ``monitor`` has not improved for ``patience`` epochs (Keras 3's semantics).

    >>> stop = EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
    >>> net.fit(X, y, epochs=100, validation_data=(X_val, y_val), callbacks=[stop])
    >>> stop.stopped_epoch, stop.best_epoch      # 1-based, as fit counts; 0: did not stop

    An improvement beats the best so far by more than ``min_delta``, in the direction ``mode``
    says: "min", "max" or "auto" (down for names ending in ``loss``, up for names holding
    ``acc``; other names need "min" or "max"). Epochs up to
    ``start_from_epoch`` are not watched (a warm-up). With ``baseline``, the patience count
    restarts only on epochs that also beat it. ``restore_best_weights=True`` puts back the best
    epoch's weights when training ends, whether this callback stopped it or the epochs ran out
    (Keras 3 does both; tf.keras 2 only the first). The state (``wait``, ``best``, ...) restarts
    with every fit.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = False, start_from_epoch: int = 0,
                 baseline: float | None = None, verbose: int = 0) -> None:
        self.monitor = _Monitor("EarlyStopping", monitor, mode, min_delta)
        self.patience = count("EarlyStopping: patience", patience, minimum=0)
        self.start_from_epoch = count("EarlyStopping: start_from_epoch", start_from_epoch, minimum=0)
        if baseline is not None and not _number(baseline):
            raise TypeError(f"EarlyStopping: baseline must be a number or None, got {baseline!r}")
        self.baseline, self.restore_best_weights, self.verbose = baseline, bool(restore_best_weights), verbose
        self.on_train_begin()

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.wait = self.stopped_epoch = self.best_epoch = 0
        self.best = self.monitor.worst()
        self.best_weights = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        current = self.monitor.value(logs)
        if epoch <= self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights, self.best_epoch = _host_weights(self.model), epoch  # never improved: these
        self.wait += 1
        if self.monitor.improves(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = _host_weights(self.model)
            if self.baseline is None or self.monitor.improves(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 1:  # Keras never stops after the first epoch
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.stopped_epoch:
            _say(self.verbose, f"EarlyStopping: stopped after epoch {self.stopped_epoch}")
        if self.restore_best_weights and self.best_weights is not None:
            _say(self.verbose, f"EarlyStopping: restoring the weights of epoch {self.best_epoch}")
            _set_weights(self.model, self.best_weights)


class ModelCheckpoint(Callback):
    """Save the model (``model.save(path)``, atomic) after every epoch, or only on improvement.

    >>> net.fit(X, y, epochs=20, validation_data=(X_val, y_val),
    ...         callbacks=[ModelCheckpoint("ckpt-{epoch:02d}-{val_loss:.3f}.npz", save_best_only=True)])

    ``path`` is formatted like Keras's: ``path.format(epoch=epoch, **logs)`` (epoch from 1).
    ``save_best_only=True`` saves only when ``monitor`` beats the best seen by this callback,
    across fits too (as Keras keeps it: the file on disk is the best so far). For resuming an
    interrupted run use ``fit(checkpoint=...)``, which also keeps the optimizer and batch order.
    """

    def __init__(self, path: str | os.PathLike[str], monitor: str = "val_loss", save_best_only: bool = False,
                 mode: str = "auto", verbose: int = 0) -> None:
        try:
            self.path = os.fspath(path)
        except TypeError:
            raise TypeError(f"ModelCheckpoint: path must be a str or path, got {type(path).__name__}") from None
        self.monitor = _Monitor("ModelCheckpoint", monitor, mode)
        self.save_best_only, self.verbose = bool(save_best_only), verbose
        self.best = self.monitor.worst()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        if self.save_best_only:
            current = self.monitor.value(logs)
            if not self.monitor.improves(current, self.best):
                return
            self.best = current
        path = self._filename(epoch, logs)
        _say(self.verbose, f"ModelCheckpoint: epoch {epoch}: saving the model to {path}")
        self.model.save(path)

    def _filename(self, epoch, logs):
        try:
            return self.path.format(epoch=epoch, **logs)
        except (KeyError, IndexError) as exc:
            raise ValueError(f"ModelCheckpoint: path {self.path!r} names {exc}, which fit's logs do not hold "
                             f"(they hold epoch, {', '.join(sorted(logs))})") from None


# ---- the learning rate -------------------------------------------------------------
class LearningRateScheduler(Callback):
    """Set the optimizer's ``lr`` before every epoch to ``schedule(epoch, lr)``, as Keras does.

    ``schedule`` gets the epoch's 0-based index (Keras's convention: fit's epoch number minus 1)
    and the current rate, and returns the new one, a positive number. Ready-made schedules
    live in :mod:`fastnn.schedules`:

    >>> from fastnn.schedules import StepDecay
    >>> net.fit(X, y, epochs=30, lr=0.1, callbacks=[LearningRateScheduler(StepDecay(0.1, drop=0.5, every=10))])
    >>> net.fit(X, y, epochs=30, lr=0.1, callbacks=[LearningRateScheduler(lambda epoch, lr: lr * 0.95)])
    """

    def __init__(self, schedule: Callable[[int, float], float], verbose: int = 0) -> None:
        if not callable(schedule):
            raise TypeError(f"LearningRateScheduler: schedule must be callable (epoch, lr) -> lr, "
                            f"got {type(schedule).__name__}")
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        optimizer = self.model.optimizer
        lr = self.schedule(epoch - 1, float(optimizer.lr))
        if not _number(lr) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"LearningRateScheduler: the schedule gave {lr!r} for epoch {epoch} "
                             f"(index {epoch - 1}); the rate must be a positive number")
        optimizer.lr = float(lr)
        _say(self.verbose, f"LearningRateScheduler: epoch {epoch}: lr {optimizer.lr:.6g}")


class ReduceLROnPlateau(Callback):
    """Multiply the rate by ``factor`` when ``monitor`` has not improved for ``patience`` epochs.

    >>> net.fit(X, y, epochs=100, validation_data=(X_val, y_val),
    ...         callbacks=[ReduceLROnPlateau(factor=0.5, patience=3, min_lr=1e-4)])

    Keras's semantics: an improvement beats the best by more than ``min_delta``; after a
    reduction, ``cooldown`` epochs pass before the count of epochs without improvement resumes;
    the rate never goes below ``min_lr`` (a rate already at or below it stays). ``mode`` as
    :class:`EarlyStopping`'s. The state restarts with every fit.
    """

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10,
                 min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0, mode: str = "auto",
                 verbose: int = 0) -> None:
        self.monitor = _Monitor("ReduceLROnPlateau", monitor, mode, min_delta)
        if not _number(factor) or not 0 < factor < 1:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor!r}")
        self.factor = float(factor)
        self.patience = count("ReduceLROnPlateau: patience", patience, minimum=0)
        self.cooldown = count("ReduceLROnPlateau: cooldown", cooldown, minimum=0)
        self.min_lr, self.verbose = _non_negative("min_lr", min_lr, "ReduceLROnPlateau"), verbose
        self.on_train_begin()

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.wait = self.cooldown_counter = 0
        self.best = self.monitor.worst()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        current = self.monitor.value(logs)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self.monitor.improves(current, self.best):
            self.best, self.wait = current, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            optimizer = self.model.optimizer
            if self.wait >= self.patience and optimizer.lr > self.min_lr:
                optimizer.lr = max(optimizer.lr * self.factor, self.min_lr)
                _say(self.verbose, f"ReduceLROnPlateau: epoch {epoch}: lr reduced to {optimizer.lr:.6g}")
                self.cooldown_counter, self.wait = self.cooldown, 0
