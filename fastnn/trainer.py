"""The contract between ``Sequential.fit`` and a backend's compiled trainer.

A backend's ``training_plan(net, loss, optimizer, rows, epochs, batch_size)`` returns
``(trainer, path)``: ``trainer`` None means fit trains layer by layer on the backend's ops
(``path`` says why, in words); otherwise it is a :class:`Trainer`, and each epoch of fit is
one call of it. A trainer reaches the model only through the functions here, never through
the model's private attributes:

- :func:`plain_stack`: the layers it must train, as widths and activations (or why not);
- a Dense layer's ``W``/``b`` (read), :func:`give_params` (write: the trainer's own arrays,
  adopted as they are), ``optimizer.state`` (the per-layer slots, ``"<i>.W"``/``"<i>.b"``);
- :func:`train_layer_by_layer`: an epoch on the layer path, for a trainer that falls back.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .layers import dense_stack

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from .backend import Array
    from .layers import Dense
    from .losses import Loss
    from .model import Sequential


class Trainer:
    """What fit calls, once per epoch. The numba backend's compiled epoch
    (``fastnn.backends.numba.epoch.EpochTrainer``) and the CuPy backend's CUDA graph
    (``fastnn.backends.cupy.graph.GraphTrainer``) are the two implementations."""

    #: True when the trainer stops at a batch whose rows of X hold a NaN/inf (their first-layer
    #: sums are then NaN/inf), so fit skips its own pass over X before training
    checks_finite_x: bool = False
    #: True when the trainer takes ``weights`` (else a weighted fit trains layer by layer)
    takes_weights: bool = False

    def __call__(self, X: Array, T: Array, labels: Array, order: NDArray[Any],
                 batch_size: int, weights: NDArray[Any] | None = None) -> tuple[float, int, int]:
        """One epoch: the batches ``order[k·batch_size : (k+1)·batch_size]`` of the rows of X
        (targets T, labels for accuracy), each a step of the model's optimizer. Returns
        ``(loss_sum, n_correct, bad_batch)``: the loss summed over rows (each row's times its
        weight, with ``weights``: host float64, one per row; a batch's loss is then the
        weighted mean, and a batch weighing zero makes no step), the rows classified right,
        and -1, or the index of a batch whose loss was NaN/inf (not applied: the epoch stops
        before it). The model's parameters and optimizer state hold the result."""
        raise NotImplementedError

    def describe(self, batch_size: int, rows: int | None = None) -> str:
        """The path in words, for ``fit(verbose=1)`` and ``History.path``."""
        raise NotImplementedError


def plain_stack(net: Sequential, loss: Loss, dropout: bool = False) -> tuple[Any, ...]:
    """``(dims, acts)`` of the layers ``fit`` trains with ``loss`` (``dropout=True``: ``(dims, acts,
    drops, scale)``; see ``layers.dense_stack``); ValueError naming the layer a trainer cannot take."""
    return dense_stack(net.training_layers(loss), dropout)


def give_params(layer: Dense, W: Array | None = None, b: Array | None = None) -> None:
    """Make ``W``/``b`` (arrays of the layer's backend, dtype and shape: a trainer's own) the Dense
    layer's parameters as they are: without the copy and checks of the ``W``/``b`` setters."""
    if W is not None:
        layer._W = W
    if b is not None:
        layer._b = b


def train_layer_by_layer(net: Sequential, X: Array, T: Array, labels: Array, order: NDArray[Any],
                         batch_size: int, loss: Loss) -> tuple[float, int]:
    """One epoch on the layer path (the backend's ops): ``(loss_sum, n_correct)``."""
    return net._epoch_layers(X, T, labels, order, batch_size, loss, 0, None)
