"""The backend contract, its reference implementation, and backend selection.

A backend is an object carrying ``xp`` (an array-API namespace) and a small
vocabulary of ops. :class:`Backend` *is* that vocabulary, implemented once on
``self.xp`` with functions of the Python array API standard only; it is the
specification every other backend is tested against. A faster backend
subclasses it and overrides only the ops it makes faster.

Shapes: batches are rows. ``X (B, nI) @ W (nI, nO) -> Z (B, nO)``.

Selection::

    fastnn.get_backend("numba")          # an instance, created on first use
    fastnn.set_backend("numba")          # the default for this context
    with fastnn.use_backend("cupy"):     # a scoped default
        ...
    fastnn.available_backends()          # {"numpy": (True, ""), "cupy": (False, "why")}
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import os
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
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
            A = xp.matrix_transpose(A)
        if trans_b:
            B = xp.matrix_transpose(B)
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


# ---- the registry ----------------------------------------------------------

#: name -> "module:Class", imported on first use.
_BUILTIN: dict[str, str | type[Backend]] = {
    "numpy": "fastnn.backends.numpy_backend:NumpyBackend",
    "numba": "fastnn.backends.numba.backend:NumbaBackend",
    "cupy": "fastnn.backends.cupy.backend:CupyBackend",
}
#: What to install when a backend's package is missing.
_INSTALL_HINTS = {
    "numba": "pip install 'fastnn[numba]'",
    "cupy": "pip install 'fastnn[cuda12]' (or 'fastnn[cuda13]', matching your CUDA)",
}
_ENTRY_POINT_GROUP = "fastnn.backends"
_instances: dict[tuple[str, tuple[tuple[str, Any], ...]], Backend] = {}
_current: contextvars.ContextVar[str | Backend | None] = contextvars.ContextVar("fastnn_backend", default=None)


def register_backend(name: str, target: str | type[Backend]) -> None:
    """Register ``"module:Class"`` (or a class) as backend ``name``."""
    _BUILTIN[name] = target
    for key in [key for key in _instances if key[0] == "auto"]:
        del _instances[key]  # "auto" may resolve to it now


def _known():
    known = dict(_BUILTIN)
    try:
        for ep in metadata.entry_points(group=_ENTRY_POINT_GROUP):
            known.setdefault(ep.name, ep.value)
    except Exception:  # a broken third-party distribution must not break fastnn
        pass
    return known


def backend_names() -> list[str]:
    """The names ``get_backend`` knows (built in, registered, from entry points), and ``"auto"``;
    imports no backend."""
    return sorted(_known()) + ["auto"]


def _split(name):
    """``"cupy:1"`` -> ``("cupy", {"device": 1})``."""
    base, _, device = str(name).partition(":")
    options = {}
    if device:
        if not device.isdigit():
            raise ValueError(f"backend {name!r}: the part after ':' must be a device number")
        options["device"] = int(device)
    return base.strip().lower(), options


def _load_class(base):
    known = _known()
    if base not in known:
        raise ValueError(f"unknown backend {base!r}; known backends: {', '.join(backend_names())}")
    target = known[base]
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        reason = _with_hint(base, str(exc)) if base in _INSTALL_HINTS else \
            f"{exc}; install the package that provides it"
        raise BackendUnavailable(f"backend {base!r} is unavailable: {reason}", reason) from exc
    return getattr(module, attr)


def _default_name():
    return _current.get() or os.environ.get("FASTNN_BACKEND") or "auto"


def _auto_choice():
    """``(name, why)`` of ``"auto"``: numba where it is usable, else numpy. Never cupy: a small job
    on a GPU pays compile and launch latency it cannot win back, so the GPU is used when named."""
    try:
        reason = _unavailable_reason("numba", _load_class("numba"))
    except BackendUnavailable as exc:
        reason = exc.reason
    if reason:
        return "numpy", f"numba is unavailable ({reason})"
    return "numba", "numba is installed (the GPU backend, cupy, is used only when named)"


def default_backend() -> tuple[str, str]:
    """``(name, why)``: the backend an unspecified ``backend=`` resolves to here, and why.

    The scoped default (``use_backend``/``set_backend``) wins, then ``FASTNN_BACKEND``, then
    ``"auto"``: numba where it is usable, else numpy. Every entry point (``Sequential``,
    ``fastnn.load``, the estimators, the ``fastnn`` command) follows this one rule.
    """
    scoped = _current.get()
    if scoped is not None:
        name = scoped if isinstance(scoped, str) else scoped.name
        source = "set by set_backend/use_backend"
    elif os.environ.get("FASTNN_BACKEND"):
        name, source = os.environ["FASTNN_BACKEND"], "set by FASTNN_BACKEND"
    else:
        name, why = _auto_choice()
        return name, f"auto: {why}"
    if _split(name)[0] == "auto":
        resolved, why = _auto_choice()
        return resolved, f"auto ({source}): {why}"
    return name, source


def get_backend(name: BackendLike = None, **options: Any) -> Backend:
    """The backend ``name`` (default: the current one), created on first use.

    ``name`` may be a :class:`Backend` instance (returned as is), a registered
    name, ``"auto"`` (numba if usable, else numpy; see :func:`default_backend`) or
    ``"cupy:N"``. None: the default of :func:`default_backend`.
    Keyword options (e.g. ``num_threads=2`` for numba) go to the constructor.
    Raises ``ValueError`` for an unknown name and :class:`BackendUnavailable`
    when the backend is known but cannot run here.
    """
    if name is None:
        name = _default_name()
        if _current.get() is None and os.environ.get("FASTNN_BACKEND"):
            # the name came from the environment: say so when it is wrong
            try:
                return get_backend(name, **options)
            except (ValueError, BackendUnavailable) as exc:
                raise type(exc)(f"FASTNN_BACKEND={name!r}: {exc}") from None
    if isinstance(name, Backend):
        return name
    if not isinstance(name, str):
        raise TypeError(f"backend must be a name or a Backend, got {type(name).__name__}")
    base, parsed = _split(name)
    options = {**parsed, **options}
    key = (base, tuple(sorted(options.items())))
    if key in _instances:  # "auto" too, once resolved: every Sequential() asks (entry points are slow)
        return _instances[key]
    resolved = _auto_choice()[0] if base == "auto" else base
    resolved_key = (resolved, key[1])
    if resolved_key not in _instances:
        cls = _load_class(resolved)
        reason = _unavailable_reason(resolved, cls)
        if reason:
            raise BackendUnavailable(f"backend {resolved!r} is unavailable: {reason}", reason)
        _instances[resolved_key] = cls(**options)
    _instances[key] = _instances[resolved_key]
    return _instances[key]


def _with_hint(base, reason):
    hint = _INSTALL_HINTS.get(base)
    return reason + (f"; {hint}" if hint else "")


def _unavailable_reason(base, cls):
    """Why backend ``base`` cannot run here, with what to install; None when it can."""
    check = getattr(cls, "unavailable_reason", None)
    reason = check() if check is not None else None
    return _with_hint(base, reason) if reason else None


def set_backend(name: str | Backend) -> Backend:
    """Make ``name`` the default backend of this context; returns the backend."""
    backend = get_backend(name)
    _current.set(name if isinstance(name, str) else backend)
    return backend


@contextlib.contextmanager
def use_backend(name: str | Backend) -> Iterator[Backend]:
    """``with use_backend("numba"):`` scopes the default backend; nests."""
    backend = get_backend(name)
    token = _current.set(name if isinstance(name, str) else backend)
    try:
        yield backend
    finally:
        _current.reset(token)


def available_backends() -> dict[str, tuple[bool, str]]:
    """``{name: (available, reason)}`` for every known backend; imports nothing heavy."""
    status = {}
    for base in sorted(_known()):
        try:
            reason = _unavailable_reason(base, _load_class(base))
        except BackendUnavailable as exc:
            reason = exc.reason
        status[base] = (not reason, reason or "")
    return status
