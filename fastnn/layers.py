"""Layers: ``forward(X) -> Y`` and ``backward(dY) -> dX``, batches as rows.

A :class:`Dense` layer holds ``W (n_in, n_out)`` and ``b (n_out,)`` and, after
a backward pass, ``dW`` and ``db``. Activation layers hold no parameters; they
keep their output ``Y``, from which most derivatives are cheapest (σ' = Y(1−Y),
tanh' = 1−Y², relu' = [Y>0]), or their input ``Z`` where the formula needs it
(GELU, SiLU, Softplus, LeakyReLU): each activation's formulas are one entry of
``fastnn.ops.activations``.

Layers run on a backend's ops (``gemm``, ``bias_act``, ``act_backward``,
``sum_rows``) and on ``backend.xp`` with array-API functions only.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from .backend import ACTIVATIONS, Array, get_backend
from .initializers import INITIALIZERS, Init
from .ops import activations as _activations
from .ops import dropout as _dropout

if TYPE_CHECKING:
    from .backend import Backend
    from .ops.activations import ActivationRule


class Layer:
    """Base class: a layer is bound to a backend and a dtype by ``initialize``."""

    backend: Backend | None = None
    dtype: str = "float32"

    def initialize(self, backend: Backend, dtype: str, rng: np.random.Generator) -> None:
        """Bind to ``backend``/``dtype``; draw parameters from ``rng`` (host)."""
        self.backend = backend
        self.dtype = dtype

    def _bound(self):
        if self.backend is None:
            self.initialize(get_backend(), "float32", np.random.default_rng())
        return self.backend

    def config(self) -> dict[str, Any]:
        """A JSON-able description (saved in model files)."""
        return {"type": type(self).__name__}

    def forward(self, X: Array) -> Array:
        raise NotImplementedError

    def backward(self, dY: Array) -> Array:
        raise NotImplementedError


class Dense(Layer):
    """A fully connected layer: ``Y = X @ W + b``.

    >>> layer = Dense(784, 30, init="normal")   # W (784, 30), b (30,)
    """

    #: after a forward in training: its input; after a backward: the gradients (backend arrays)
    X: Array | None
    dW: Array | None
    db: Array | None

    def __init__(self, n_in: int, n_out: int, init: Init = "glorot_uniform") -> None:
        for name, value in (("n_in", n_in), ("n_out", n_out)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"Dense: {name} must be a positive integer, got {value!r}")
        if init not in INITIALIZERS:
            raise ValueError(f"Dense: unknown init {init!r}; expected one of {', '.join(INITIALIZERS)}")
        self.n_in, self.n_out, self.init = int(n_in), int(n_out), init
        self._W = self._b = None
        self.dW = self.db = None
        self.X = None

    def __repr__(self) -> str:
        return f"Dense({self.n_in}, {self.n_out}, init={self.init!r})"

    def config(self) -> dict[str, Any]:
        return {"type": "Dense", "n_in": self.n_in, "n_out": self.n_out, "init": self.init}

    def initialize(self, backend: Backend, dtype: str, rng: np.random.Generator) -> None:
        super().initialize(backend, dtype, rng)
        W, b = INITIALIZERS[self.init](rng, self.n_in, self.n_out)
        self.W, self.b = W, b

    # W and b are plain to read and to assign; assignment checks the shape and
    # converts to the layer's backend and dtype, so weights trained elsewhere work.
    @property
    def W(self) -> Array:
        return self._W

    @W.setter
    def W(self, value: ArrayLike) -> None:
        self._W = self._param("W", value, (self.n_in, self.n_out))

    @property
    def b(self) -> Array:
        return self._b

    @b.setter
    def b(self, value: ArrayLike) -> None:
        self._b = self._param("b", value, (self.n_out,))

    def _param(self, name, value, shape):
        backend = self._bound()
        if not hasattr(value, "shape"):  # a list of lists, say
            try:
                value = np.asarray(value)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"{self!r}.{name}: expected an array, got {type(value).__name__} ({exc})") from None
        if isinstance(value, np.ndarray) and value.dtype.kind not in "biuf":
            raise TypeError(f"{self!r}.{name}: expected an array of numbers, got dtype {value.dtype}")
        if tuple(value.shape) != shape:
            raise ValueError(f"{self!r}.{name}: expected shape {shape}, got {tuple(value.shape)}")
        host = value if isinstance(value, np.ndarray) else None
        if host is not None and not np.all(np.isfinite(host)):
            raise ValueError(f"{self!r}.{name}: contains NaN or inf")
        P = backend.asarray(value if host is None else np.ascontiguousarray(host), dtype=self.dtype)
        if P is value or (host is not None and isinstance(P, np.ndarray) and np.shares_memory(P, host)):
            P = backend.xp.asarray(P, copy=True)  # training updates P in place: never the caller's array
        return P

    def forward(self, X: Array, act: str = "identity", params: Sequence[float] = ()) -> Array:
        """``act(X @ W + b)``: ``X (B, n_in) -> (B, n_out)``; keeps X for backward."""
        backend = self._bound()
        self.X = X
        Z = backend.gemm(X, self._W)  # (B, n_in) @ (n_in, n_out) -> (B, n_out)
        return backend.bias_act(Z, self._b, act, params)

    def backward(self, dZ: Array, input_grad: bool = True) -> Array | None:
        """From ``dZ (B, n_out)``: sets ``dW``, ``db``; returns ``dX (B, n_in)``, or None with
        ``input_grad=False`` (a model's first Dense: nothing below it learns)."""
        backend = self._bound()
        self.dW = backend.gemm(self.X, dZ, trans_a=True)  # (n_in, B) @ (B, n_out)
        self.db = backend.sum_rows(dZ)  # (n_out,)
        if not input_grad:
            return None
        return backend.gemm(dZ, self._W, trans_b=True)  # (B, n_out) @ (n_out, n_in)


def is_plain(layer: Layer, cls: type[Layer]) -> bool:
    """``layer`` is a ``cls`` that computes with the library's own ``forward``/``backward``.

    A subclass or an instance that overrides either is a user's layer: compiled
    trainers, which replace these methods with kernels, must leave it to ``fit``'s
    layer-by-layer path.
    """
    kind = type(layer)
    return (isinstance(layer, cls) and kind.forward is cls.forward and kind.backward is cls.backward
            and not {"forward", "backward"} & vars(layer).keys())


class Activation(Layer):
    """An element-wise activation; ``act`` names its entry in ``fastnn.ops.activations``."""

    act: str = "identity"
    #: the output and (for an entry that ``needs`` it) the input of the last forward
    Y: Array | None
    Z: Array | None

    def __init__(self) -> None:
        self.Y = self.Z = None

    @property
    def params(self) -> tuple[float, ...]:
        """The entry's settings, in its order (LeakyReLU: ``(alpha,)``)."""
        return tuple(float(getattr(self, name)) for name in self.rule.params)

    @property
    def rule(self) -> ActivationRule:
        return _activations.BY_NAME[self.act]

    def __repr__(self) -> str:
        settings = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.rule.params)
        return f"{type(self).__name__}({settings})"

    def config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, **{name: getattr(self, name) for name in self.rule.params}}

    def forward(self, X: Array) -> Array:
        self.Z = X if self.rule.needs == "Z" else None
        self.Y = self._bound().bias_act(X, None, self.act, self.params)
        return self.Y

    def backward(self, dY: Array) -> Array:
        V = self.Z if self.rule.needs == "Z" else self.Y
        return self._bound().act_backward(V, dY, self.act, self.params)


class Sigmoid(Activation):
    """σ(z) = 1 / (1 + e^−z)."""

    act = "sigmoid"


class ReLU(Activation):
    """max(z, 0)."""

    act = "relu"


class Tanh(Activation):
    """tanh(z)."""

    act = "tanh"


class Identity(Activation):
    """z (useful to make a linear output explicit)."""

    act = "identity"


class LeakyReLU(Activation):
    """z for z > 0, else alpha·z (PyTorch's LeakyReLU, ``negative_slope=alpha``)."""

    act = "leaky_relu"

    def __init__(self, alpha: float = 0.01) -> None:
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)) \
                or not math.isfinite(alpha):
            raise ValueError(f"LeakyReLU: alpha must be a finite number, got {alpha!r}")
        self.alpha = float(alpha)


class GELU(Activation):
    """GELU in its tanh form: ½z(1 + tanh(√(2/π)(z + 0.044715 z³))) (PyTorch's ``approximate="tanh"``)."""

    act = "gelu"


class SiLU(Activation):
    """z·σ(z) (also called swish)."""

    act = "silu"


class Softplus(Activation):
    """ln(1 + e^z), computed stably (PyTorch's Softplus with beta 1)."""

    act = "softplus"


class Softmax(Layer):
    """Row-wise softmax, for inference output.

    Train with ``loss="cross_entropy"``, which applies softmax to logits inside
    the loss (stable, gradient ŷ−y); a final Softmax layer is then folded into
    the loss, so the same model serves training and inference.
    """

    Y: Array | None  # the output of the last forward

    def __init__(self) -> None:
        self.Y = None

    def __repr__(self) -> str:
        return "Softmax()"

    def forward(self, X: Array) -> Array:
        xp = self._bound().xp
        E = xp.exp(X - xp.max(X, axis=1, keepdims=True))
        self.Y = E / xp.sum(E, axis=1, keepdims=True)
        return self.Y

    def backward(self, dY: Array) -> Array:
        xp = self._bound().xp
        # Jacobian-vector product of softmax: Y ⊙ (dY − Σ_j dY_j Y_j)
        return self.Y * (dY - xp.sum(dY * self.Y, axis=1, keepdims=True))


class Dropout(Layer):
    """Inverted dropout: while ``fit`` trains, each unit of each row is zeroed with probability
    ``p`` and the kept ones are scaled by ``1 / (1 - p)``; outside training (predict, evaluate)
    the layer passes its input through.

    >>> net = fastnn.Sequential(fastnn.Dense(784, 128), fastnn.ReLU(), fastnn.Dropout(0.2),
    ...                         fastnn.Dense(128, 10), seed=0)

    A mask is a hash of (the model's seed, its epoch counter, this layer's position, the row's
    index in X, the unit) (``fastnn.ops.dropout``): the same seed gives the same masks on every
    backend and path (the compiled numba epoch computes the same hash), however the rows are
    batched, and a resumed fit continues the sequence.
    """

    p: float
    batch: tuple[int, Array] | None  # (hash base, row indices), while fit trains
    M: Array | None

    def __init__(self, p: float = 0.5) -> None:
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be a probability in [0, 1), got {p!r}")
        self.p = float(p)
        self.batch = None  # (hash base, row indices) of the batch in training, set by the model
        self.M = None  # the mask of the last forward in training (B, n)

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"

    def config(self) -> dict[str, Any]:
        return {"type": "Dropout", "p": self.p}

    def forward(self, X: Array) -> Array:
        if self.batch is None or self.p == 0.0:  # not training: the identity
            self.M = None
            return X
        base, rows = self.batch
        self.M = _dropout.mask(self._bound().xp, base, rows, X.shape[1], self.p, X.dtype)  # (B, n)
        return X * self.M

    def backward(self, dY: Array) -> Array:
        return dY if self.M is None else dY * self.M


class Rescale(Layer):
    """``X * factor``, in the model's dtype: an input layer (Keras's Rescaling) that lets the
    data stay as it is stored, e.g. uint8 pixels (a ``np.memmap`` larger than memory included)
    trained scaled to [0, 1] by ``Rescale(1 / 255)``; rows are converted batch by batch.

    >>> net = fastnn.Sequential(fastnn.Rescale(1 / 255), fastnn.Dense(784, 128), fastnn.ReLU(),
    ...                         fastnn.Dense(128, 10))
    >>> net.fit(np.load("pixels.npy", mmap_mode="r"), y)    # uint8, never converted whole
    """

    def __init__(self, factor: float) -> None:
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not math.isfinite(factor) \
                or factor == 0:
            raise ValueError(f"Rescale: factor must be a finite number other than 0, got {factor!r}")
        self.factor: float = float(factor)

    def __repr__(self) -> str:
        return f"Rescale(factor={self.factor!r})"

    def config(self) -> dict[str, Any]:
        return {"type": "Rescale", "factor": self.factor}

    def forward(self, X: Array) -> Array:
        backend = self._bound()
        if X.dtype != backend.dtype(self.dtype):  # stored pixels: to the model's dtype, then scaled
            X = backend.xp.astype(X, backend.dtype(self.dtype))
        return X * self.factor

    def backward(self, dY: Array) -> Array:
        return dY * self.factor


_ACTIVATION_CLASSES = (Sigmoid, ReLU, Tanh, Identity, LeakyReLU, GELU, SiLU, Softplus)
LAYER_TYPES = {cls.__name__: cls for cls in (Dense, Softmax, Dropout, Rescale) + _ACTIVATION_CLASSES}
ACTIVATION_LAYERS = {cls.act: cls for cls in _ACTIVATION_CLASSES}
assert set(ACTIVATION_LAYERS) == set(ACTIVATIONS), "every entry of fastnn.ops.activations needs its layer class"


def layer_from_config(config):
    """Rebuild a layer from :meth:`Layer.config` (model files)."""
    kind = config.get("type")
    if kind not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {kind!r} in model description")
    if kind == "Dense":
        return Dense(config["n_in"], config["n_out"], init=config.get("init", "glorot_uniform"))
    cls = LAYER_TYPES[kind]
    settings = {name: value for name, value in config.items() if name != "type"}
    if cls in (Dropout, Rescale):
        expected = {"p"} if cls is Dropout else {"factor"}
    else:
        expected = set(_activations.BY_NAME[cls.act].params) if issubclass(cls, Activation) else set()
    if set(settings) != expected:
        raise ValueError(f"layer {kind}: expected the settings {sorted(expected) or 'none'}, got {sorted(settings)}")
    return cls(**settings)
