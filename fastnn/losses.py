"""Losses: each is summed over the outputs and averaged over the batch.

A loss maps the network's raw output ``Y (B, n)`` and targets ``T (B, n)`` to
``(loss, dY)``: the loss as a 0-d array (kept on the device) and its gradient.

- ``"mse"``: the quadratic cost of Nielsen's book, ``½‖ŷ − y‖²`` per sample, so
  ``lr=3.0`` means what η = 3.0 means in ``network.py``.
- ``"cross_entropy"``: softmax cross-entropy on *logits*, fused and stable.
- ``"binary_cross_entropy"``: sigmoid cross-entropy on *logits* (Nielsen's
  ``network2`` cost −Σ[y ln a + (1−y) ln(1−a)]).

``loss.rows(backend, Y, T)`` gives each row's loss ``(B,)`` (its mean is the loss above):
``fit(sample_weight=...)`` weighs the rows with it.

The two cross-entropies name the activation they apply (``output_activation``):
``predict_proba`` applies it, and a model whose last layer *is* that activation
folds the layer into the loss for training.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .backend import Array, Backend

#: The names :func:`get_loss` takes.
LossName = Literal["mse", "cross_entropy", "binary_cross_entropy"]


class Loss:
    name: str = ""
    #: The activation that turns raw outputs into probabilities (None: outputs already are).
    output_activation: str | None = None

    def __call__(self, backend: Backend, Y: Array, T: Array) -> tuple[Array, Array]:
        raise NotImplementedError

    def rows(self, backend: Backend, Y: Array, T: Array) -> Array:
        """Each row's loss ``(B,)``, summed over the outputs, as a backend array."""
        raise NotImplementedError(f"{type(self).__name__} gives no per-row losses (Loss.rows), which "
                                  f"fit(sample_weight=...) needs")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MSE(Loss):
    """``Σ_j ½(Y_j − T_j)²`` averaged over the batch; ``dY = (Y − T) / B``."""

    name = "mse"

    def __call__(self, backend: Backend, Y: Array, T: Array) -> tuple[Array, Array]:
        xp = backend.xp
        B = Y.shape[0]
        D = Y - T
        return xp.sum(D * D) / (2 * B), D / B

    def rows(self, backend: Backend, Y: Array, T: Array) -> Array:
        D = Y - T
        return backend.xp.sum(D * D, axis=1) / 2


class CrossEntropy(Loss):
    """Softmax cross-entropy on logits; ``dZ = (softmax(Z) − T) / B``."""

    name = "cross_entropy"
    output_activation = "softmax"

    def __call__(self, backend: Backend, Z: Array, T: Array) -> tuple[Array, Array]:
        return backend.softmax_xent(Z, T)

    def rows(self, backend: Backend, Z: Array, T: Array) -> Array:
        xp = backend.xp
        M = xp.max(Z, axis=1, keepdims=True)
        logsumexp = M + xp.log(xp.sum(xp.exp(Z - M), axis=1, keepdims=True))  # (B, 1)
        return xp.sum(T * (logsumexp - Z), axis=1)


class BinaryCrossEntropy(Loss):
    """Sigmoid cross-entropy on logits, per output; ``dZ = (σ(Z) − T) / B``."""

    name = "binary_cross_entropy"
    output_activation = "sigmoid"

    def __call__(self, backend: Backend, Z: Array, T: Array) -> tuple[Array, Array]:
        return backend.sigmoid_xent(Z, T)

    def rows(self, backend: Backend, Z: Array, T: Array) -> Array:
        xp = backend.xp
        softplus = xp.maximum(Z, xp.zeros_like(Z)) + xp.log1p(xp.exp(-xp.abs(Z)))  # stable for large |Z|
        return xp.sum(softplus - T * Z, axis=1)


LOSSES = {cls.name: cls for cls in (MSE, CrossEntropy, BinaryCrossEntropy)}
#: The code of each loss in every kernel (its position here): one place.
CODES = {name: code for code, name in enumerate(LOSSES)}


def get_loss(loss: LossName | Loss) -> Loss:
    """A :class:`Loss` from a name (``"mse"``, ``"cross_entropy"``, ...) or an instance."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss in LOSSES:
        return LOSSES[loss]()
    raise ValueError(f"loss: unknown loss {loss!r}; expected one of {', '.join(LOSSES)} or a Loss")
