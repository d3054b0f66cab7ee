"""``Sequential``: a stack of layers that trains by backpropagation and mini-batch SGD.

>>> net = Sequential(Dense(784, 30, init="normal"), Sigmoid(),
...                  Dense(30, 10, init="normal"), Sigmoid(), seed=0)
>>> history = net.fit(X, y, epochs=30, batch_size=10, loss="mse", lr=3.0)
>>> net.predict(X_test)          # class indices

Everything here is written once against a backend (``self.backend``); the data
crosses to the backend once, at the boundary (``fit``, ``predict``, ...).
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .backend import get_backend
from .layers import LAYER_TYPES, Activation, Dense, Dropout, Layer, Rescale, Softmax
from .ops import dropout as _dropout
from .losses import Loss, LossName, get_loss
from . import validation as check
# TrainingDiverged and WEIGHTED_PATH stay importable from here
from .training import WEIGHTED_PATH, Training, TrainingDiverged, _in_backend_scope, _one_thread_at_a_time  # noqa: F401

if TYPE_CHECKING:
    import os

    from .backend import Array, Backend, BackendLike
    from .optim import Optimizer


#: Rows converted at a time where the input is stored in another dtype (forward of a memmap)
CONVERT_ROWS = 2048
#: Dense's own backward, to tell it from one replaced on the class (a test's patch) or a subclass
_DENSE_BACKWARD = Dense.backward


class Sequential(Training):
    """``Sequential(*layers, backend=None, seed=None, dtype="float32")``.

    ``backend`` is a name (``"numpy"``, ``"numba"``, ``"cupy"``, ``"auto"``), a
    backend object, or None for the current default. ``seed`` fixes the initial
    weights and the batch order: the same seed gives the same numbers on every
    backend (both are drawn on the host with NumPy, then moved).
    """

    def __init__(self, *layers: Layer | Sequence[Layer], backend: BackendLike = None, seed: int | None = None,
                 dtype: Literal["float32", "float64"] = "float32") -> None:
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Sequential: give at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: layer {i} is {type(layer).__name__}, not a fastnn layer")
        if dtype not in ("float32", "float64"):
            raise ValueError(f"Sequential: dtype must be 'float32' or 'float64', got {dtype!r}")
        dense = [layer for layer in layers if isinstance(layer, Dense)]
        if not dense:
            raise ValueError("Sequential: the model needs at least one Dense layer")
        check.layers_chain(layers)
        self.layers: list[Layer] = list(layers)  # type: ignore[arg-type]  # each checked above
        self.dtype = dtype
        self.backend = get_backend(backend)
        self.seed = seed
        try:
            init_seed, batch_seed, dropout_seed = np.random.SeedSequence(seed).spawn(3)
        except (TypeError, ValueError):
            raise TypeError(f"Sequential: seed must be None or a non-negative integer, got {seed!r}") from None
        self.batch_rng = np.random.default_rng(batch_seed)
        #: the key of every Dropout mask (``fastnn.ops.dropout``), and the epochs trained so far
        #: (across fit calls; a resumed fit restores both): masks depend on nothing else
        self.dropout_key = int(dropout_seed.generate_state(1, np.uint64)[0])
        self.epochs_trained = 0
        init_rng = np.random.default_rng(init_seed)
        for layer in self.layers:
            layer.initialize(self.backend, dtype, init_rng)
        self.loss: Loss | None = None  # the loss of the last fit/backprop, kept for predict_proba and save
        self.optimizer: Optimizer | None = None
        self.stop_training = False  # a callback sets it to end fit after the current epoch
        self._training = threading.RLock()  # held by the thread in fit or backprop
        self._training_thread = None

    # ---- shape -----------------------------------------------------------
    @property
    def dense_layers(self) -> list[Dense]:
        return [layer for layer in self.layers if isinstance(layer, Dense)]

    @property
    def input_scale(self) -> float:
        """The factor of a leading :class:`~fastnn.Rescale` layer (what the input checks judge), else 1."""
        return self.layers[0].factor if isinstance(self.layers[0], Rescale) else 1.0

    @property
    def n_in(self) -> int:
        return self.dense_layers[0].n_in

    @property
    def n_out(self) -> int:
        return self.dense_layers[-1].n_out

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Sequential({inner}, backend={self.backend.name!r}, dtype={self.dtype!r})"

    def summary(self, print_fn: Callable[[str], Any] = print) -> None:
        """Print a table of layers, output shapes and parameter counts, a line per call of
        ``print_fn`` (Keras's rule: ``summary(print_fn=lines.append)`` collects the text).
        Returns None, so ``print(net.summary())`` does not show the table twice."""
        print_fn(f"Sequential on backend {self.backend.name!r}, {self.dtype}")
        print_fn(f"{'layer':<40}{'output':>12}{'params':>12}")
        width, total = self.n_in, 0
        for layer in self.layers:
            params = 0
            if isinstance(layer, Dense):
                width, params = layer.n_out, layer.n_in * layer.n_out + layer.n_out
            total += params
            print_fn(f"{layer!r:<40}{f'(B, {width})':>12}{params:>12,}")
        print_fn(f"{'total':<40}{'':>12}{total:>12,}")

    # ---- moving between backends -----------------------------------------
    def to(self, backend: BackendLike) -> Sequential:
        """Move the parameters (and optimizer state) to ``backend``; returns self."""
        target = get_backend(backend)
        if target is self.backend:
            return self
        source = self.backend
        for layer in self.layers:
            layer.backend = target
            if isinstance(layer, Dense):
                layer._W = target.asarray(source.to_numpy(layer.W), dtype=self.dtype)
                layer._b = target.asarray(source.to_numpy(layer.b), dtype=self.dtype)
                layer.dW = layer.db = layer.X = None
        if self.optimizer is not None:
            arrays, counters = self.optimizer.state_arrays(source)
            self.optimizer.load_state_arrays(target, arrays, counters, self.dtype)
        self.backend = target
        return self

    # ---- inference -------------------------------------------------------
    def _run(self, layers, X):
        """Forward through ``layers``; a Dense followed by an activation runs fused. Rows stored
        in another dtype (uint8 pixels, a memmap) are converted here, batch by batch."""
        dtype = self.backend.dtype(self.dtype)
        if X.dtype != dtype:
            X = self.backend.xp.astype(X, dtype)
        i = 0
        while i < len(layers):
            layer = layers[i]
            following = layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(layer, Dense) and isinstance(following, Activation) and following.rule.needs == "Y":
                X = layer.forward(X, act=following.act, params=following.params)
                following.Y = X
                i += 2
            else:
                X = layer.forward(X)
                i += 1
        return X

    @_in_backend_scope
    def forward(self, X: ArrayLike) -> Array:
        """The network's output for ``X (B, n_in)``, as a backend array ``(B, n_out)``."""
        X = check.batch(self, X)
        if X.dtype == self.backend.dtype(self.dtype):
            return self._run(self.layers, X)
        # rows stored in another dtype (a memmap of pixels): converted a block at a time, not whole
        blocks = [self._run(self.layers, X[i:i + CONVERT_ROWS, ...]) for i in range(0, X.shape[0], CONVERT_ROWS)]
        return self.backend.xp.concat(blocks, axis=0)

    __call__ = forward

    @_in_backend_scope
    def predict_proba(self, X: ArrayLike) -> NDArray[Any]:
        """Probabilities (host NumPy): the output activation of the loss applied.

        After training with ``cross_entropy`` that is the softmax of the logits;
        with ``binary_cross_entropy`` the sigmoid; with ``mse`` the output itself.
        A model whose last layer already applies it is not applied twice.
        """
        Y = self.forward(X)
        head = self.loss.output_activation if self.loss is not None else None
        if head and self._last_activation() != head:
            Y = self._apply_head(head, Y)
        return self.backend.to_numpy(Y)

    def predict(self, X: ArrayLike) -> NDArray[np.int64]:
        """Class indices (host NumPy, int64): argmax of the output (threshold 0.5 for one output)."""
        P = self.predict_proba(X)
        if P.shape[1] == 1:
            return (P[:, 0] > 0.5).astype(np.int64)
        return np.argmax(P, axis=1).astype(np.int64)

    def _last_activation(self):
        last = self.layers[-1]
        if isinstance(last, Softmax):
            return "softmax"
        return last.act if isinstance(last, Activation) else None

    def _apply_head(self, head, Z):
        xp = self.backend.xp
        if head == "sigmoid":
            return self.backend.bias_act(Z, None, "sigmoid")
        E = xp.exp(Z - xp.max(Z, axis=1, keepdims=True))
        return E / xp.sum(E, axis=1, keepdims=True)

    # ---- training --------------------------------------------------------
    def training_layers(self, loss: Loss) -> list[Layer]:
        """The layers fit runs: a last layer equal to the loss's activation is folded in."""
        head = loss.output_activation
        if head and self._last_activation() == head:
            return self.layers[:-1]
        return self.layers

    def _forward_backward(self, layers, X, T, loss, scale=None):
        """Forward, loss, backward: gradients left on the layers; returns the 0-d loss and output.

        ``scale`` (B,) on the backend, ``wᵢ·B / Σw``: the loss becomes the weighted mean
        ``Σ wᵢ·lossᵢ / Σ wᵢ`` and its gradient the weighted mean too (the loss op's dY rows,
        each ``∂lossᵢ / B``, times ``scale``), for every backend's loss ops alike."""
        Y = self._run(layers, X)
        value, dY = loss(self.backend, Y, T)
        if scale is not None:
            xp = self.backend.xp
            value = xp.sum(scale * loss.rows(self.backend, Y, T)) / Y.shape[0]
            dY = dY * xp.reshape(scale, (-1, 1))
        _backward_through(layers, dY)
        return value, Y

    @_one_thread_at_a_time
    @_in_backend_scope
    def backprop(self, X: ArrayLike, y: ArrayLike, loss: LossName | Loss = "mse") -> float:
        """Backpropagation as one call: forward, loss, backward.

        Leaves ``dW``, ``db`` on every Dense layer, updates nothing, returns the
        loss (a float, averaged over the batch).
        """
        loss = get_loss(loss)
        X = check.batch(self, X)
        T, _ = check.targets(self, y, X.shape[0])
        self.loss = loss
        layers = self.training_layers(loss)
        with self._dropout_batches(layers, self.epochs_trained) as set_rows:
            set_rows(self.backend.xp.arange(X.shape[0]))  # the batch's rows are rows 0..B-1
            value, _ = self._forward_backward(layers, X, T, loss)
        return float(value)

    @contextlib.contextmanager
    def _dropout_batches(self, layers, epoch):
        """Dropout layers in training for this block: yields ``set_rows(rows)``, which tells them
        the row indices (in X) of the next batch; back to inference (identity) afterwards."""
        bases = [(layer, _dropout.layer_base(self.dropout_key, epoch, position))
                 for position, layer in enumerate(self.layers) if isinstance(layer, Dropout) and layer in layers]

        def set_rows(rows):
            for layer, base in bases:
                layer.batch = (base, rows)
        try:
            yield set_rows
        finally:
            for layer, _ in bases:
                layer.batch = layer.M = None

    @_in_backend_scope
    def evaluate(self, X: ArrayLike, y: ArrayLike, loss: LossName | Loss | None = None, batch_size: int = 4096,
                 metrics: Sequence[str] | None = None, sample_weight: ArrayLike | None = None) -> dict[str, Any]:
        """Scores on ``(X, y)``, in batches: ``{name: value}`` for the names in ``metrics``.

        >>> net.evaluate(X_test, y_test)                       # {"loss": ..., "accuracy": ...}
        >>> net.evaluate(X_test, y_test, metrics=["accuracy", "top_3_accuracy", "macro_f1"])
        >>> reg.evaluate(X_test, Y_test, metrics=["mae", "r2"], sample_weight=w)

        - ``metrics``: classification ``"loss"``, ``"accuracy"``, ``"top_<k>_accuracy"``,
          ``"precision"``, ``"recall"``, ``"f1"`` (lists, one per class), ``"macro_f1"``;
          regression ``"loss"``, ``"mae"``, ``"rmse"``, ``"r2"`` (averaged over the outputs).
          Default: loss and accuracy; for a regression (mse loss, no output activation,
          float target rows, not one-hot) loss, mae, rmse and r2. Details: :mod:`fastnn.metrics`.
        - ``loss``: the loss to score (default: the model's last loss, else ``"mse"``).
        - ``sample_weight``: one weight >= 0 per row; the loss becomes ``Σ wᵢ·lossᵢ / Σ wᵢ``
          and every metric is weighted as scikit-learn weights it.
        """
        from . import metrics as scoring

        loss = get_loss(loss or self.loss or "mse")
        batch_size = check.count("batch_size", batch_size, minimum=1)
        X = check.batch(self, X)
        n = X.shape[0]
        T, labels = check.targets(self, y, n)
        kind, why = scoring.task(loss, self._last_activation(), y, self.backend.to_numpy)
        names = scoring.checked_names(metrics, kind, why, self.n_out)
        weights = scoring.sample_weights(sample_weight, n, self.backend.to_numpy)
        scores = scoring.Scores(names, kind, self.n_out, loss, weighted=weights is not None)
        layers, host = self.training_layers(loss), self.backend.to_numpy
        for start in range(0, n, batch_size):
            rows = slice(start, min(start + batch_size, n))  # the array API has no out-of-range slices
            Y, Tb = self._run(layers, X[rows, ...]), T[rows, ...]
            mean_loss = float(loss(self.backend, Y, Tb)[0]) if scores.wants_mean_loss else None
            scores.add(host(Y), host(Tb), host(labels[rows]), None if weights is None else weights[rows], mean_loss)
        return scores.result()

    def _n_correct(self, Y, labels, loss):
        """How many rows of ``Y``, the output of ``training_layers(loss)``, pick ``labels`` (a backend int array)."""
        xp = self.backend.xp
        if Y.shape[1] == 1:
            # logits where the loss applies an activation (its layer folded in), else outputs
            logits = loss.output_activation is not None
            guess = xp.astype(Y[:, 0] > 0 if logits else Y[:, 0] > 0.5, labels.dtype)
        else:
            guess = xp.argmax(Y, axis=1)
        return xp.count_nonzero(guess == labels)

    # ---- files -----------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model to ``path`` (atomic, no pickle): a ``.safetensors`` path as safetensors
        (weights + the description as metadata), any other as .npz + JSON description.

        The path is used as given (no ``.npz`` appended); ``fastnn.load(path)`` reads it back.
        """
        from . import io
        io.save(self, path)

    def export_onnx(self, path: str | os.PathLike[str], opset: int | None = None) -> None:
        """Write an ONNX graph computing ``predict_proba`` (``pip install 'fastnn[onnx]'``):
        input ``"input"`` ``(batch, n_in)`` in the model's dtype, output ``"output"``.

        >>> net.export_onnx("net.onnx")
        >>> onnxruntime.InferenceSession("net.onnx").run(None, {"input": X.astype(net.dtype)})[0]
        """
        from .onnx_export import export_onnx
        export_onnx(self, path, opset)


def _backward_through(layers, dY):
    """Backward through a model's ``layers`` from the loss's ``dY``, leaving ``dW``, ``db`` on the
    Dense layers. Where only the library's own layers precede the first Dense (nothing there learns),
    the pass stops at that Dense, without its input gradient: a product saved per batch."""
    stop = -1
    for i, layer in enumerate(layers):
        if isinstance(layer, Dense):
            stop = i
            break
        if type(layer) not in LAYER_TYPES.values() or "backward" in vars(layer):
            break  # a user's layer may want its input gradient: backward through every layer
    for layer in reversed(layers[stop + 1:] if stop >= 0 else layers):
        dY = layer.backward(dY)
    if stop >= 0:
        first = layers[stop]
        if type(first).backward is _DENSE_BACKWARD and "backward" not in vars(first):
            first.backward(dY, input_grad=False)
        else:
            first.backward(dY)
