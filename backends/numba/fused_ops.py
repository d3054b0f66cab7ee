"""The fused ops of the numba backend's layer-by-layer path: bias + activation, activation backward
(``layer_ops``: generated from the op tables), the losses, the optimizer steps and the bias
gradient (``kernels``), each one pass over its arrays. A kernel runs where it takes the operands
as they are (``operands``) and its dtype's kernels are ready (``kernel_op``); the reference
everywhere else.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fastnn.backend import Array, Backend, _check_act

from . import layer_ops
from .deferral import kernel_op
from .operands import same, settings, usable

if TYPE_CHECKING:
    from fastnn.ops.optimizers import UpdateRule


class FusedOps(Backend):
    """The ops above, for ``NumbaBackend``, which provides ``_kernel_dtypes`` (the dtypes whose
    kernels are ready) and ``_kernel_module`` (kernels.py)."""

    _kernel_dtypes: set[np.dtype[Any]]
    _kernel_module: Any

    @kernel_op
    def sum_rows(self, X: Array) -> Array:
        if not usable(X, 2):
            return super().sum_rows(X)
        out = np.empty(X.shape[1], X.dtype)
        self._kernel_module.sum_rows(X, out)
        return out

    # ---- activations (generated from fastnn.ops.activations: layer_ops.py) --
    @kernel_op
    def bias_act(self, Z: Array, b: Array | None, act: str, params: Sequence[float] = ()) -> Array:
        rule = _check_act(act, params)
        fits = usable(Z, 2) and (b is None or (usable(b, 1) and b.dtype is Z.dtype and b.shape[0] == Z.shape[1]))
        if not fits:
            return super().bias_act(Z, b, act, params)
        if b is None and act == "identity":
            return Z  # as the reference: nothing to do
        Y = np.empty_like(Z)
        layer_ops.load().bias_act(Z.reshape(-1), Z[0] if b is None else b, Z.shape[1], b is not None, rule.code,
                                  settings(params), Y.reshape(-1))
        return Y

    @kernel_op
    def act_backward(self, V: Array, dY: Array, act: str, params: Sequence[float] = ()) -> Array:
        rule = _check_act(act, params)
        if act == "identity":
            return dY  # as the reference
        if not (usable(V, 2) and usable(dY, 2) and dY.dtype is V.dtype and dY.shape == V.shape):
            return super().act_backward(V, dY, act, params)
        dZ = np.empty_like(V)
        layer_ops.load().act_backward(V.reshape(-1), dY.reshape(-1), rule.code, settings(params), dZ.reshape(-1))
        return dZ

    # ---- losses --------------------------------------------------------
    def _loss_operands_fit(self, Z, T):
        return usable(Z, 2) and usable(T, 2) and T.dtype is Z.dtype and T.shape == Z.shape

    @kernel_op
    def softmax_xent(self, Z: Array, T: Array) -> tuple[Array, Array]:
        if not self._loss_operands_fit(Z, T):
            return super().softmax_xent(Z, T)
        dZ = np.empty_like(Z)
        loss = self._kernel_module.softmax_xent(Z, T, dZ)
        return Z.dtype.type(loss), dZ

    @kernel_op
    def sigmoid_xent(self, Z: Array, T: Array) -> tuple[Array, Array]:
        if not self._loss_operands_fit(Z, T):
            return super().sigmoid_xent(Z, T)
        dZ = np.empty_like(Z)
        loss = self._kernel_module.sigmoid_xent(Z.reshape(-1), T.reshape(-1), dZ.reshape(-1), Z.shape[0])
        return Z.dtype.type(loss), dZ

    # ---- optimizer steps (generated from fastnn.ops.optimizers: layer_ops.py) --
    def update(self, rule: UpdateRule, W: Array, dW: Array, slots: dict[str, Array],
               hyper: Mapping[str, float]) -> tuple[Array, dict[str, Array]]:
        arrays = [slots[name] for name in rule.slots]
        if not (type(W) is np.ndarray and W.dtype in self._kernel_dtypes  # (see kernel_op: W comes second)
                and usable(W, W.ndim) and all(same(W, A) for A in [dW, *arrays])):
            return super().update(rule, W, dW, slots, hyper)
        arrays += [W] * (2 - len(arrays))  # unused slots: never read
        kernel = getattr(layer_ops.load(), f"update_{rule.name}")
        kernel(W.reshape(-1), dW.reshape(-1), arrays[0].reshape(-1), arrays[1].reshape(-1),
               np.array([hyper[name] for name in rule.inputs]))
        return W, slots
