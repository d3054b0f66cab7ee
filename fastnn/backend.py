"""The backend contract and its reference implementation.

A backend is an object carrying ``xp`` (an array-API namespace) and a small
vocabulary of ops. :class:`Backend` *is* that vocabulary, implemented once on
``self.xp`` with functions of the Python array API standard only; it is the
specification every other backend is tested against. A faster backend
subclasses it and overrides only the ops it makes faster.

Shapes: batches are rows. ``X (B, nI) @ W (nI, nO) -> Z (B, nO)``.

Selection (``get_backend``, ``set_backend``, ``use_backend``, ``available_backends``) is in
``fastnn/selection.py``; its names are importable from here too.
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np
from numpy.typing import NDArray

from .ops import ArrayMath
from .ops import activations as _activations

if TYPE_CHECKING:
    from .losses import Loss
    from .model import Sequential
    from .ops.optimizers import UpdateRule
    from .optim import Optimizer
    from .trainer import Trainer

#: A backend's array: a NumPy array, a CuPy array, ... (each backend has its own type).
Array = Any
#: What names a backend: a registered name (``"numba"``, ``"cupy:1"``, ``"auto"``), an instance, or
#: None for the default (a string alias, so it works at run time on Python 3.10 too).
BackendLike = Union[str, "Backend", None]

#: The closed set of activation names (``fastnn.ops.activations``); kernels take their codes.
ACTIVATIONS = tuple(_activations.BY_NAME)


class BackendUnavailable(RuntimeError):
    """A known backend cannot be used here (package missing, no GPU, ...).

    ``reason``: why, with what to install, without the backend's name in front.
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


def _check_act(act, params=()):
    """The table entry of ``act``, after checking its settings; ValueError naming the problem."""
    rule = _activations.rule(act)
    if len(params) != len(rule.params):
        raise ValueError(f"activation {act!r} takes the settings {rule.params or 'none'}, got {tuple(params)!r}")
    return rule


class Backend:
    """The op contract and the reference implementation, on ``self.xp``."""

    name: str = "numpy"
    #: Check the loss for NaN/inf after every batch (cheap on the host; a sync on a GPU).
    check_every_batch: bool = True

    def __init__(self, xp: Any = None) -> None:
        self.xp: Any = numpy_namespace() if xp is None else xp

    def __repr__(self) -> str:
        return f"<fastnn backend {self.name!r}>"

    # ---- data movement -------------------------------------------------
    def dtype(self, name: str) -> Any:
        """The namespace's dtype object for ``"float32"`` / ``"float64"``."""
        return getattr(self.xp, str(name))

    def asarray(self, a: Any, dtype: Any = None) -> Array:
        """``a`` (array-like, host or device) as this backend's array, C-ordered."""
        if dtype is not None and isinstance(dtype, str):
            dtype = self.dtype(dtype)
        if isinstance(a, np.ndarray) and not a.flags.c_contiguous:
            # xp.asarray keeps a NumPy array's strides; the contract promises C order
            a = np.ascontiguousarray(a)
        return self.xp.asarray(a, dtype=dtype)

    def training_set(self, X: NDArray[Any], dtype: Any) -> Array:
        """``fit``'s training rows on this backend, moved once: ``X`` is the checked host array,
        floats or the integers the caller gave. The reference makes them ``dtype``; a backend
        short of memory may keep uint8 pixels as they are, and ``fit`` then converts each batch
        (``xp.astype``: the same numbers). A ``np.memmap`` stays on disk (batches read its rows)."""
        if isinstance(X, np.memmap) and self.xp is np:
            return X
        return self.asarray(X, dtype=dtype)

    def to_numpy(self, a: Any) -> NDArray[Any]:
        """``a`` as a host NumPy array (a copy for device arrays)."""
        try:
            return np.asarray(a)
        except (TypeError, ValueError, RuntimeError):
            return np.from_dlpack(a)

    def synchronize(self) -> None:
        """Wait until queued work is done (a no-op on the CPU); timings call it."""

    def scope(self, net: Sequential | None = None) -> contextlib.AbstractContextManager[Any]:
        """The context a model's work runs in (``with backend.scope(net):``, once per call of
        ``fit``, ``predict``, ...): a GPU backend's own device, so arrays made inside land beside
        its parameters; nothing on the CPU's reference."""
        return contextlib.nullcontext()

    # ---- dense algebra -------------------------------------------------
    def gemm(self, A: Array, B: Array, trans_a: bool = False, trans_b: bool = False, alpha: float = 1.0,
             beta: float = 0.0, C: Array | None = None) -> Array:
        """``alpha·op(A) @ op(B) + beta·C``, ``op`` transposing when asked.

        Without ``C`` it returns a new array; with ``C`` it accumulates into
        ``C`` (in place where the backend allows) and returns it, so a scaled
        update is one product: ``W = gemm(X, dZ, trans_a=True, alpha=-lr, beta=1, C=W)``.
        With ``beta=0`` the old contents of ``C`` are not read (as in BLAS), so
        ``C`` may be an uninitialised buffer.
        The three products of a Dense layer::

            Z  = gemm(X, W)                 # (B, nI) @ (nI, nO)   -> (B, nO)
            dW = gemm(X, dZ, trans_a=True)  # (nI, B) @ (B, nO)    -> (nI, nO)
            dX = gemm(dZ, W, trans_b=True)  # (B, nO) @ (nO, nI)   -> (B, nI)
        """
        xp = self.xp
        if trans_a:
            A = A.T if A.ndim == 2 else xp.matrix_transpose(A)  # .T: the standard's, for matrices
        if trans_b:
            B = B.T if B.ndim == 2 else xp.matrix_transpose(B)
        product = xp.matmul(A, B)
        if alpha != 1.0:
            product = alpha * product
        if C is None:
            return product
        if beta == 0.0:
            C[...] = product  # not 0·C: NaN/inf in an unset buffer must not leak in
            return C
        if beta != 1.0:
            C *= beta
        C += product
        return C

    def sum_rows(self, X: Array) -> Array:
        """Sum over the batch: ``(B, n) -> (n,)`` (the bias gradient)."""
        return self.xp.sum(X, axis=0)

    # ---- activations (their formulas: fastnn.ops.activations) ------------
    def bias_act(self, Z: Array, b: Array | None, act: str, params: Sequence[float] = ()) -> Array:
        """``act(Z + b)``, fused: ``Z (B, n)``, ``b (n,)`` or None -> ``Y (B, n)``; ``params``: the
        activation's settings (LeakyReLU's alpha), in the order of its table entry."""
        rule = _check_act(act, params)
        if b is not None:
            Z = Z + b
        return rule.forward(ArrayMath(self.xp, Z), Z, *params)

    def act_backward(self, V: Array, dY: Array, act: str, params: Sequence[float] = ()) -> Array:
        """``dZ`` from ``dY`` and ``V``, both ``(B, n)``: the activation's output ``Y``, or its input
        ``Z`` for one whose entry ``needs`` Z (GELU, SiLU, ...)."""
        rule = _check_act(act, params)
        slope = rule.derivative(ArrayMath(self.xp, V), V, *params)
        return dY if isinstance(slope, float) and slope == 1.0 else dY * slope

    # ---- losses on logits (summed over outputs, averaged over the batch) -
    def softmax_xent(self, Z: Array, T: Array) -> tuple[Array, Array]:
        """Softmax cross-entropy on logits ``Z (B, n)`` vs targets ``T (B, n)``.

        Returns ``(loss, dZ)``: ``loss`` a 0-d array, ``dZ = (softmax(Z) - T) / B``
        (for target rows that sum to one). Stable for large logits.
        """
        xp = self.xp
        B = Z.shape[0]
        M = xp.max(Z, axis=1, keepdims=True)
        E = xp.exp(Z - M)
        S = xp.sum(E, axis=1, keepdims=True)
        logsumexp = M + xp.log(S)  # (B, 1)
        loss = xp.sum(T * (logsumexp - Z)) / B
        P = E / S
        dZ = (P * xp.sum(T, axis=1, keepdims=True) - T) / B
        return loss, dZ

    def sigmoid_xent(self, Z: Array, T: Array) -> tuple[Array, Array]:
        """Sigmoid (binary) cross-entropy on logits: ``-Σ[T ln σ(Z) + (1-T) ln(1-σ(Z))]``.

        Returns ``(loss, dZ)`` with ``dZ = (σ(Z) - T) / B``; stable for large |Z|.
        """
        xp = self.xp
        B = Z.shape[0]
        # softplus(Z) - T*Z, with softplus(Z) = max(Z, 0) + log1p(exp(-|Z|))
        softplus = xp.maximum(Z, xp.zeros_like(Z)) + xp.log1p(xp.exp(-xp.abs(Z)))
        loss = xp.sum(softplus - T * Z) / B
        dZ = (_sigmoid(xp, Z) - T) / B
        return loss, dZ

    # ---- optimizer steps (their formulas: fastnn.ops.optimizers) --------
    def update(self, rule: UpdateRule, W: Array, dW: Array, slots: dict[str, Array],
               hyper: Mapping[str, float]) -> tuple[Array, dict[str, Array]]:
        """One step of update rule ``rule`` (an entry of ``fastnn.ops.optimizers``) on parameter
        ``W`` with gradient ``dW``: ``slots`` ({name: array like W}) its state, ``hyper`` ({name:
        float}) every input the rule reads (``rule.inputs``). Updates W and the slots in place and
        returns ``(W, slots)``."""
        new_W, new_slots = rule.update(ArrayMath(self.xp, W), W, dW, slots, hyper)
        for name, value in new_slots.items():
            slots[name][...] = value
        W[...] = new_W
        return W, slots

    # ---- whole-epoch training ------------------------------------------
    def epoch_trainer(self, net: Sequential, loss: Loss, optimizer: Optimizer) -> Trainer | None:
        """A callable that trains one whole epoch in one call, or None.

        None (the reference) means: ``fit`` runs layer by layer with the ops above.
        A backend that compiles epochs returns a callable
        ``run(X, T, labels, order, batch_size) -> (loss_sum, n_correct, bad_batch)``:
        X (N, nI), T (N, nO) and labels (N,) are the backend arrays ``fit`` made,
        ``order`` the host permutation of this epoch; it updates the Dense layers'
        W, b and the optimizer's state in place, sums ``loss × batch rows`` and
        the correct predictions (from each batch's output before its update,
        as ``Sequential._epoch_layers`` does), and returns the index of the first
        batch whose loss was NaN/inf (that batch not applied), else -1. Its
        ``describe(batch_size, rows)`` names the path for ``verbose``. A trainer whose
        ``checks_finite_x`` is True also stops at a batch whose rows of X hold a NaN/inf;
        ``fit`` then leaves that check of the whole set to it.
        """
        return None

    def training_plan(self, net: Sequential, loss: Loss, optimizer: Optimizer, rows: int, epochs: int,
                      batch_size: int) -> tuple[Trainer | None, str]:
        """``(trainer, path)`` for a ``fit`` of ``epochs`` over ``rows`` rows: the
        :meth:`epoch_trainer` (None: layer by layer) and, in words, the path that trains.

        A backend that compiles decides here, knowing the size of the job, whether a
        compile pays (and tells the user through :mod:`fastnn.notices`) or the job runs
        at once on a path that is ready.
        """
        trainer = self.epoch_trainer(net, loss, optimizer)
        if trainer is not None:
            return trainer, trainer.describe(batch_size, rows)
        reason = self.layer_path_reason(net, loss, optimizer)
        return None, "layer by layer" + (f" ({reason})" if reason else "")

    def layer_path_reason(self, net: Sequential, loss: Loss, optimizer: Optimizer) -> str | None:
        """Why ``fit`` trains ``net`` layer by layer here, for ``verbose``; None: nothing to say.

        A backend with an :meth:`epoch_trainer` says why it returned None (an option
        that turns it off, a layer or loss it cannot compile, a failed build).
        """
        return None

    def info(self) -> dict[str, Any]:
        """A dict describing this backend for ``fastnn info``."""
        return {"namespace": getattr(self.xp, "__name__", str(self.xp))}


def numpy_namespace() -> Any:
    """NumPy's array-API namespace: NumPy itself from 2.1 on (its main namespace implements the
    2023.12 standard), else ``array_api_compat.numpy``. Not the wrapper where NumPy needs none:
    importing it star-imports NumPy's lazy submodules (f2py, testing, ...), 0.15 s of every
    process's start."""
    if getattr(np, "__array_api_version__", "") >= "2023.12":
        return np
    import array_api_compat.numpy
    return array_api_compat.numpy


def _sigmoid(xp, Z):
    # From e^-|Z|, which never overflows: 1 / (1 + e^-Z) would warn "overflow in
    # exp" for Z below about -88 in float32 (a saturated unit, not a problem).
    E = xp.exp(-xp.abs(Z))
    return xp.where(Z >= 0, 1 / (1 + E), E / (1 + E))


# selection (get_backend, set_backend, ...) lives in fastnn/selection.py; its names stay importable here
from .selection import (available_backends, backend_names, default_backend, get_backend,  # noqa: E402,F401
                        register_backend, set_backend, use_backend)
