"""``fit``'s arguments checked and placed on the model's backend, for both of its loops: one
process (``Training.fit``) and data parallel over MPI (``fastnn.distributed``). Nothing of the
model changes here: a refused call leaves it as it was."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import validation as check
from .callbacks import checked as checked_callbacks
from .losses import get_loss
from .metrics import is_regression, sample_weights
from .row_weights import training_weights

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from .callbacks import Callback
    from .losses import Loss
    from .optim import Optimizer


@dataclass
class FitArguments:
    """What :func:`checked` returns (see there)."""

    epochs: int
    batch_size: int
    loss: Loss
    optimizer: Optimizer
    callbacks: list[Callback]
    X: Any
    T: Any
    labels: Any
    regression: bool
    weights: NDArray[Any] | None
    validation_data: tuple[Any, Any] | None
    resume_settings: dict[str, Any]


def checked(net, X, y, *, epochs, batch_size, loss, optimizer, lr, shuffle, validation_data, validation_split,
            checkpoint, resume, on_epoch_end, callbacks, sample_weight, class_weight) -> FitArguments:
    """The arguments as training takes them: ``epochs``, ``batch_size``, ``loss``, ``optimizer``,
    ``callbacks``, ``X``, ``T``, ``labels``, ``regression`` (no accuracy to log), ``weights`` (host,
    sample × class weights, or None), ``validation_data`` (split off X where asked) and
    ``resume_settings`` (what a checkpoint must have been saved with). X is not checked for
    NaN/inf here: a compiled epoch may do it as it trains."""
    epochs = check.count("epochs", epochs, minimum=0)
    batch_size = check.count("batch_size", batch_size, minimum=1)
    loss = get_loss(loss or net.loss or "cross_entropy")
    chosen_optimizer = optimizer is not None or lr is not None
    optimizer = check.optimizer(optimizer, lr, net.optimizer)
    if resume and not checkpoint:
        raise ValueError("fit: resume=True needs checkpoint='path.npz'")
    callbacks = checked_callbacks(callbacks, on_epoch_end)
    X = check.training_set(net, X, check_finite=False)
    T, labels = check.targets(net, y, X.shape[0])
    regression = is_regression(net, loss, y)
    weights = sample_weights(sample_weight, X.shape[0], net.backend.to_numpy)
    if validation_split and validation_data is None:
        keep = check.split_point(validation_split, X.shape[0])
        validation_data = (X[keep:, ...], T[keep:, ...])  # target rows: any kind of y
        X, T, labels = X[:keep, ...], T[:keep, ...], labels[:keep]
        weights = None if weights is None else weights[:keep]
    weights = training_weights(net, weights, class_weight, T, labels)
    if validation_data is not None:
        validation_data = check.validation_pair(net, validation_data)
    resume_settings = {"loss": loss.name or None, "batch_size": batch_size, "shuffle": bool(shuffle),
                       "optimizer": optimizer.config() if chosen_optimizer else None}
    return FitArguments(epochs=epochs, batch_size=batch_size, loss=loss, optimizer=optimizer, callbacks=callbacks,
                        X=X, T=T, labels=labels, regression=regression, weights=weights,
                        validation_data=validation_data, resume_settings=resume_settings)
