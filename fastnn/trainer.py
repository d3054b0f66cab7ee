"""The contract between ``Sequential.fit`` and a backend's compiled trainer.

A backend's ``training_plan(net, loss, optimizer, rows, epochs, batch_size)`` returns
``(trainer, path)``: ``trainer`` None means fit trains layer by layer on the backend's ops
(``path`` says why, in words); otherwise it is a :class:`Trainer`, and each epoch of fit is
one call of it. A trainer reaches the model only through the functions here, never through
the model's private attributes:

- :func:`plain_stack` (:func:`dense_stack`): the layers it must train, as widths and activations
  (or why not);
- a Dense layer's ``W``/``b`` (read), :func:`give_params` (write: the trainer's own arrays,
  adopted as they are), ``optimizer.state`` (the per-layer slots, ``"<i>.W"``/``"<i>.b"``);
- :func:`train_layer_by_layer`: an epoch on the layer path, for a trainer that falls back.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .backend import ACTIVATIONS
from .layers import Activation, Dense, Dropout, Rescale, is_plain

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from .backend import Array
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

    def data_parallel(self, X: Array, T: Array, labels: Array, weights: NDArray[Any] | None, batch_size: int,
                      threads: int) -> Any:
        """The steps of a data-parallel fit over processes (``fastnn.distributed``), or None: that fit
        then trains layer by layer. The steps object has ``begin_epoch()``, ``gradients(rows,
        global_rows, global_weight, wscale) -> (loss_sum, correct, not_finite)`` (this process's
        share of a global batch into its ``sums`` buffer, which then holds two spare slots at the
        end), ``step()`` (the optimizer's step from ``sums`` once summed over the processes) and
        ``end_epoch()`` (the parameters back to the model); ``threads``: the most it may use."""
        return None


def plain_stack(net: Sequential, loss: Loss, dropout: bool = False) -> tuple[Any, ...]:
    """``(dims, acts)`` of the layers ``fit`` trains with ``loss`` (``dropout=True``: ``(dims, acts,
    drops, scale)``; see :func:`dense_stack`); ValueError naming the layer a trainer cannot take."""
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


def dense_stack(layers, dropout=False):
    """``(dims, acts)`` when ``layers`` are a plain stack a compiled trainer can take.

    A plain stack is Dense layers, each followed by at most one activation layer:
    ``dims`` are the widths, input to output, and ``acts[i]`` the ``(name, params)``
    of the activation after Dense ``i`` (``("identity", ())`` for none). Anything else
    (a user's layer, Softmax inside, two activations in a row) raises ValueError naming it.

    ``dropout=True`` (a trainer that applies masks and scales its input) also takes one Dropout
    after a hidden layer's activation and a leading Rescale, and returns ``(dims, acts, drops,
    scale)``: ``drops[i]`` is ``(p, position in layers)`` of the Dropout after Dense ``i``, or
    None; ``scale`` the Rescale's factor, or None.
    """
    dims, acts, drops, previous, scale = [], [], [], None, None
    for position, layer in enumerate(layers):
        if dropout and position == 0 and is_plain(layer, Rescale):
            scale = layer.factor
        elif is_plain(layer, Dense):
            dims += [layer.n_in, layer.n_out] if not dims else [layer.n_out]
            acts.append(("identity", ()))
            drops.append(None)
        elif is_plain(layer, Activation) and isinstance(previous, Dense):
            acts[-1] = (layer.act, layer.params)
        elif dropout and is_plain(layer, Dropout) and isinstance(previous, (Dense, Activation)):
            drops[-1] = (layer.p, position) if layer.p > 0 else None
        else:
            allowed = "one activation" + (" then one Dropout, after a leading Rescale" if dropout else "")
            raise ValueError(f"layer {layer!r} (only Dense, each followed by at most {allowed}: "
                             f"{', '.join(ACTIVATIONS)})")
        previous = layer
    if not dims:
        raise ValueError("no Dense layer")
    if dropout and drops[-1] is not None:
        raise ValueError(f"{layers[drops[-1][1]]!r} after the output layer (a compiled epoch drops hidden units only)")
    return (dims, acts, drops, scale) if dropout else (dims, acts)
