"""``gradcheck``: backpropagation checked against central finite differences."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from .losses import Loss, LossName, get_loss
from . import validation as check

if TYPE_CHECKING:
    from .model import Sequential


def gradcheck(net: Sequential, X: ArrayLike, y: ArrayLike, loss: LossName | Loss = "mse", eps: float = 1e-6) -> float:
    """The largest relative error between backprop and finite differences.

    Every parameter of every Dense layer is perturbed by ±eps and the loss
    re-evaluated: ``(L(w+eps) − L(w−eps)) / 2eps`` against ``dW``/``db`` from
    ``net.backprop``. The error of one parameter array (a W or a b) is
    ``‖analytic − numeric‖ / (‖analytic‖ + ‖numeric‖)``: measured against the
    whole array's gradient, because an element whose gradient is itself near
    zero is only known to the differences' rounding noise (about 1e-10), and
    element by element that noise would read as a large relative error. The
    result is the largest over all arrays. Needs a float64 model
    (``dtype="float64"``): in float32 the differences drown in rounding. Use a
    few rows of X: the cost is two forward passes per parameter. The weights are
    left as they were.

    >>> net = Sequential(Dense(5, 4), Tanh(), Dense(4, 3), dtype="float64", seed=0)
    >>> gradcheck(net, X[:6], y[:6], loss="cross_entropy") < 1e-6
    True
    """
    if net.dtype != "float64":
        raise ValueError("gradcheck: needs a float64 model, Sequential(..., dtype='float64')")
    loss = get_loss(loss)
    backend = net.backend
    Xd = check.batch(net, X)
    T, _ = check.targets(net, y, Xd.shape[0])
    layers = net.training_layers(loss)

    def loss_at():
        value, _ = loss(backend, net._run(layers, Xd), T)
        return float(value)

    net.loss = loss
    with net._dropout_batches(layers, net.epochs_trained) as set_rows:  # Dropout as in training: its
        set_rows(backend.xp.arange(Xd.shape[0]))  # masks are fixed by (epoch, row), so L is smooth
        net._forward_backward(layers, Xd, T, loss)
        return _worst_error(net, backend, loss_at, eps)


def _worst_error(net, backend, loss_at, eps):
    worst = 0.0
    for layer in net.dense_layers:
        for name in ("W", "b"):
            analytic = backend.to_numpy(getattr(layer, "d" + name)).ravel()
            values = backend.to_numpy(getattr(layer, name)).copy()
            flat = values.ravel()
            numeric = np.empty_like(flat)
            for k in range(flat.size):
                original = flat[k]
                flat[k] = original + eps
                setattr(layer, name, values)
                up = loss_at()
                flat[k] = original - eps
                setattr(layer, name, values)
                down = loss_at()
                flat[k] = original
                numeric[k] = (up - down) / (2 * eps)
            setattr(layer, name, values)
            scale = max(float(np.linalg.norm(analytic) + np.linalg.norm(numeric)), 1e-8)
            worst = max(worst, float(np.linalg.norm(analytic - numeric)) / scale)
    return worst
