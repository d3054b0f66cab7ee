"""Callbacks: code that ``fit`` runs between epochs, in Keras's sense.

>>> class StopAt(fastnn.Callback):
...     def on_epoch_end(self, epoch, logs):
...         if logs["loss"] < 0.05:
...             self.model.stop_training = True     # ends fit after this epoch
>>> net.fit(X, y, epochs=100, callbacks=[StopAt()])

``fit`` calls ``set_model(net)``, then ``on_train_begin(logs)``, ``on_epoch_end(epoch, logs)``
after every completed epoch (epochs count from 1; ``logs`` holds that epoch's ``loss``,
``accuracy``, ``seconds`` and, with validation data, ``val_loss``/``val_accuracy``), and
``on_train_end(logs)`` once training stops. Between epochs a callback may change the
optimizer's hyper-parameters (``self.model.optimizer.lr``): the next epoch uses them, on
every backend and in the compiled epoch.
"""
from __future__ import annotations


class Callback:
    """The hooks ``fit`` calls; each does nothing here. ``self.model``: the model in training."""

    model = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass


class LambdaCallback(Callback):
    """A callback from plain functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``.

    ``fit(on_epoch_end=f)`` is ``fit(callbacks=[LambdaCallback(on_epoch_end=f)])``.
    """

    def __init__(self, on_train_begin=None, on_epoch_end=None, on_train_end=None):
        for name, function in (("on_train_begin", on_train_begin), ("on_epoch_end", on_epoch_end),
                               ("on_train_end", on_train_end)):
            if function is not None:
                if not callable(function):
                    raise TypeError(f"LambdaCallback: {name} must be callable, got {type(function).__name__}")
                setattr(self, name, function)


def checked(callbacks, on_epoch_end=None):
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
