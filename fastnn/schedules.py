"""Learning-rate schedules: the rate for an epoch, as a formula of the epoch's index.

Each is a ``schedule(epoch, lr) -> new lr`` for :class:`fastnn.callbacks.LearningRateScheduler`,
which calls it before every epoch with the epoch's 0-based index (Keras's convention, so
Keras schedules work unchanged) and the optimizer's current rate, which these ignore:

>>> from fastnn.callbacks import LearningRateScheduler
>>> from fastnn.schedules import CosineDecay
>>> net.fit(X, y, epochs=30, lr=0.1, callbacks=[LearningRateScheduler(CosineDecay(0.1, epochs=30))])

They are per epoch, not per batch (Keras's ``optimizers.schedules`` count batches).
"""
from __future__ import annotations

import math

from .optim import _non_negative, _positive
from .validation import count


class Schedule:
    """A formula of the epoch index; ``schedule(epoch)`` or ``schedule(epoch, lr)`` gives the rate."""

    def __call__(self, epoch: int, lr: float | None = None) -> float:
        return self.lr_at(count(f"{type(self).__name__}: epoch", epoch, minimum=0))

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    def __repr__(self):
        settings = ", ".join(f"{name}={value!r}" for name, value in vars(self).items())
        return f"{type(self).__name__}({settings})"


class StepDecay(Schedule):
    """``initial_lr · drop ** floor(epoch / every)``: the rate times ``drop`` every ``every`` epochs.

    >>> [StepDecay(0.1, drop=0.5, every=2)(e) for e in range(5)]
    [0.1, 0.1, 0.05, 0.05, 0.025]
    """

    def __init__(self, initial_lr: float, drop: float = 0.5, every: int = 10):
        self.initial_lr = _positive("initial_lr", initial_lr, "StepDecay")
        self.drop = _positive("drop", drop, "StepDecay")
        self.every = count("StepDecay: every", every, minimum=1)

    def lr_at(self, epoch):
        return self.initial_lr * self.drop ** (epoch // self.every)


class ExponentialDecay(Schedule):
    """``initial_lr · rate ** epoch``: the rate times ``rate`` after every epoch."""

    def __init__(self, initial_lr: float, rate: float):
        self.initial_lr = _positive("initial_lr", initial_lr, "ExponentialDecay")
        self.rate = _positive("rate", rate, "ExponentialDecay")

    def lr_at(self, epoch):
        return self.initial_lr * self.rate ** epoch


class CosineDecay(Schedule):
    """Half a cosine from ``initial_lr`` (epoch 0) down to ``min_lr`` (epoch ``epochs`` and after):
    ``min_lr + (initial_lr − min_lr) · (1 + cos(π · min(epoch, epochs) / epochs)) / 2``.

    The last of ``fit(epochs=epochs)``'s epochs (index ``epochs − 1``) still trains at a rate
    above ``min_lr``; with ``min_lr=0`` an epoch past ``epochs`` would get rate 0, which
    fastnn's optimizers refuse (LearningRateScheduler says so).
    """

    def __init__(self, initial_lr: float, epochs: int, min_lr: float = 0.0):
        self.initial_lr = _positive("initial_lr", initial_lr, "CosineDecay")
        self.epochs = count("CosineDecay: epochs", epochs, minimum=1)
        self.min_lr = _non_negative("min_lr", min_lr, "CosineDecay")
        if self.min_lr > self.initial_lr:
            raise ValueError(f"CosineDecay: min_lr ({min_lr!r}) is above initial_lr ({initial_lr!r})")

    def lr_at(self, epoch):
        progress = min(epoch, self.epochs) / self.epochs
        return self.min_lr + (self.initial_lr - self.min_lr) * (1 + math.cos(math.pi * progress)) / 2
