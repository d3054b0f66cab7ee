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
import functools
import math
import sys
import threading
import time

import numpy as np

from . import notices
from .backend import get_backend
from .callbacks import checked as checked_callbacks
from .history import History
from .layers import Activation, Dense, Dropout, Layer, Softmax
from .ops import dropout as _dropout
from .losses import get_loss
from . import validation as check


#: ``History.path`` of a weighted fit: the compiled trainers (numba's epoch, CuPy's graph) take no weights
WEIGHTED_PATH = "layer by layer (sample weights: the compiled epoch takes none yet)"


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or inf during ``fit``; the weights were restored."""


def _in_backend_scope(method):
    """Run ``method`` inside ``self.backend.scope(self)``: on a GPU backend, its own device, so
    every array the model makes lands where the parameters are (``"cupy:1"`` beside ``"cupy:0"``)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self.backend.scope(self):
            return method(self, *args, **kwargs)
    return run


def _one_thread_at_a_time(method):
    """Refuse ``method`` (fit, backprop) while another thread runs either on the same model: both
    would update the same weights, gradients and optimizer state, and lose or mix updates. The
    thread already training may call them again (a callback's backprop); nobody waits."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        if not self._training.acquire(blocking=False):
            raise RuntimeError(f"{method.__name__}: this model ({self!r}) is being trained by another "
                               f"thread ({self._training_thread}); a model trains in one thread at a time: "
                               f"wait for that one, or give this thread its own model")
        try:
            self._training_thread = threading.current_thread().name
            return method(self, *args, **kwargs)
        finally:
            self._training.release()
    return run


class Sequential:
    """``Sequential(*layers, backend=None, seed=None, dtype="float32")``.

    ``backend`` is a name (``"numpy"``, ``"numba"``, ``"cupy"``, ``"auto"``), a
    backend object, or None for the current default. ``seed`` fixes the initial
    weights and the batch order: the same seed gives the same numbers on every
    backend (both are drawn on the host with NumPy, then moved).
    """

    def __init__(self, *layers, backend=None, seed=None, dtype="float32"):
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
        self.layers = list(layers)
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
        self.loss = None  # the loss of the last fit/backprop, kept for predict_proba and save
        self.optimizer = None
        self.stop_training = False  # a callback sets it to end fit after the current epoch
        self._training = threading.RLock()  # held by the thread in fit or backprop
        self._training_thread = None

    # ---- shape -----------------------------------------------------------
    @property
    def dense_layers(self):
        return [layer for layer in self.layers if isinstance(layer, Dense)]

    @property
    def n_in(self):
        return self.dense_layers[0].n_in

    @property
    def n_out(self):
        return self.dense_layers[-1].n_out

    def __repr__(self):
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Sequential({inner}, backend={self.backend.name!r}, dtype={self.dtype!r})"

    def summary(self, print_fn=print):
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
    def to(self, backend):
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
        """Forward through ``layers``; a Dense followed by an activation runs fused."""
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
    def forward(self, X):
        """The network's output for ``X (B, n_in)``, as a backend array ``(B, n_out)``."""
        return self._run(self.layers, check.batch(self, X))

    __call__ = forward

    @_in_backend_scope
    def predict_proba(self, X):
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

    def predict(self, X):
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
    def training_layers(self, loss):
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
        for layer in reversed(layers):
            dY = layer.backward(dY)
        return value, Y

    @_one_thread_at_a_time
    @_in_backend_scope
    def backprop(self, X, y, loss="mse"):
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
    def evaluate(self, X, y, loss=None, batch_size=4096, metrics=None, sample_weight=None):
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
        return xp.sum(xp.astype(guess == labels, xp.int64))

    @_one_thread_at_a_time
    @_in_backend_scope
    def fit(self, X, y, epochs=1, batch_size=32, loss=None, optimizer=None, lr=None,
            shuffle=True, validation_data=None, validation_split=0.0, verbose=0, checkpoint=None,
            resume=False, on_epoch_end=None, callbacks=None, sample_weight=None, class_weight=None):
        """Train by mini-batch gradient descent; returns a :class:`History`.

        - ``loss``: ``"mse"``, ``"cross_entropy"``, ``"binary_cross_entropy"`` or a Loss
          (default: the model's last loss, else ``"cross_entropy"``).
        - ``optimizer`` (an SGD/Adam object) *or* ``lr`` (plain SGD at that rate);
          neither: the optimizer of the last fit, else ``SGD(lr=0.1)``.
        - Batches: a permutation per epoch from the model's seeded host generator,
          the last partial batch kept. ``shuffle=False`` keeps the data order.
        - ``validation_data=(X_val, y_val)`` adds ``val_loss``/``val_accuracy``;
          ``validation_split=0.2`` holds out the *last* 20% of the rows instead (before any
          shuffling, as Keras does; ``validation_data``, when given, is used instead).
        - ``sample_weight``: one weight >= 0 per row of X (finite, not all zero); ``class_weight``:
          ``{class: weight}`` (classes absent weigh 1) or ``"balanced"`` (scikit-learn's
          ``n_rows / (n_classes · rows of the class)``, over the training rows), multiplying
          ``sample_weight``; a class is a label of 1-D ``y`` or the column of a one-hot row. Each
          batch's loss is ``Σ wᵢ·lossᵢ / Σ wᵢ`` over its rows, so its step follows the weighted
          mean gradient (weight decay as the optimizer's rule, unweighted); a batch whose weights
          are all zero makes no step (the optimizer's step count stays). The History's ``loss`` is
          the weighted mean over the epoch; ``accuracy`` and the validation scores stay unweighted
          (``validation_split`` drops the weights of the rows it holds out). Weighted, fit trains layer
          by layer: the compiled epochs take no weights yet (``History.path`` says so).
          ``fit(X, y, sample_weight=w)``
        - ``checkpoint="ckpt.npz"`` saves after every epoch; ``resume=True``
          continues from it (same final weights as an uninterrupted run): the
          checkpoint's weights, optimizer (settings and state), batch order and
          history replace this model's; a missing file starts from epoch 1. The
          whole checkpoint is checked first: one that is damaged or crafted
          (:class:`~fastnn.ModelFileError`) or trained with other settings (``ValueError``)
          is refused with this model's weights, loss, optimizer and batch order untouched.
        - ``callbacks=[...]``: :class:`fastnn.Callback` objects run after every epoch (one
          may stop training: ``self.model.stop_training = True``); ``on_epoch_end=f``
          calls ``f(epoch, logs)`` after every epoch, after the callbacks.
        - ``verbose=1`` prints which path trains (and why), a notice while kernels compile,
          and a line per epoch. ``History.path`` keeps the path in words.
        - Ctrl-C stops training and keeps the last completed epoch: the epoch in
          progress is rolled back (weights, optimizer state, batch order), the History
          has ``interrupted=True`` and, with ``verbose``, a line on stderr says so.
        - A NaN/inf loss raises :class:`TrainingDiverged` naming the epoch (and batch),
          with finite weights restored.
        - A model trains in one thread at a time: ``fit`` or ``backprop`` while another
          thread's runs raises ``RuntimeError`` at once (a callback may call ``backprop``).
        """
        from . import io
        from .metrics import sample_weights

        epochs = check.count("epochs", epochs, minimum=0)
        batch_size = check.count("batch_size", batch_size, minimum=1)
        loss = get_loss(loss or self.loss or "cross_entropy")
        chosen_optimizer = optimizer is not None or lr is not None
        optimizer = check.optimizer(optimizer, lr, self.optimizer)
        if resume and not checkpoint:
            raise ValueError("fit: resume=True needs checkpoint='path.npz'")
        callbacks = checked_callbacks(callbacks, on_epoch_end)
        X = check.training_set(self, X, check_finite=False)
        T, labels = check.targets(self, y, X.shape[0])
        weights = sample_weights(sample_weight, X.shape[0], self.backend.to_numpy)
        if validation_split and validation_data is None:
            keep = check.split_point(validation_split, X.shape[0])
            validation_data = (X[keep:, ...], T[keep:, ...])  # target rows: any kind of y
            X, T, labels = X[:keep, ...], T[:keep, ...], labels[:keep]
            weights = None if weights is None else weights[:keep]
        weights = _training_weights(self, weights, class_weight, T, labels)
        total_weight = X.shape[0] if weights is None else float(weights.sum())
        if validation_data is not None:
            validation_data = check.validation_pair(self, validation_data)
        n = X.shape[0]
        trainer = path = None
        if not resume:  # a resume changes the model first: its trainer is chosen below
            trainer, path = self._training_plan(loss, optimizer, n, epochs, batch_size, verbose,
                                                weights is not None)
        # A compiled epoch that stops at a NaN/inf in X spares the pass over the whole set.
        x_checked_by_trainer = getattr(trainer, "checks_finite_x", False)
        if not x_checked_by_trainer:
            check.placed_finite(self.backend, X)
        resumed = None
        if resume:  # the whole checkpoint is checked here; nothing of it is applied yet
            settings = {"loss": loss.name or None, "batch_size": batch_size, "shuffle": bool(shuffle),
                        "optimizer": optimizer.config() if chosen_optimizer else None}
            resumed = io.read_checkpoint(self, checkpoint, settings, verbose)
        previous = self.loss, self.optimizer
        self.loss, self.optimizer = loss, optimizer  # only now: a refused call changes nothing

        history = History()
        first_epoch = 0
        if resume:
            if resumed is not None:
                first_epoch, history = io.apply_checkpoint(self, resumed, verbose)
            trainer, path = self._training_plan(loss, self.optimizer, n, epochs - first_epoch, batch_size, verbose,
                                                weights is not None)
        history.path = path

        self.stop_training = False
        for callback in callbacks:
            callback.set_model(self)
            callback.on_train_begin({})
        for epoch in range(first_epoch, epochs):
            for callback in callbacks:
                callback.on_epoch_begin(epoch + 1, {})  # a schedule sets this epoch's rate here
            rng_state = self.batch_rng.bit_generator.state
            saved = self._snapshot()
            started = time.perf_counter()
            try:
                order = self.batch_rng.permutation(n) if shuffle else np.arange(n)
                if trainer is not None:
                    result = self._epoch_compiled(trainer, X, T, labels, order, batch_size, epoch, saved,
                                                  x_checked_by_trainer)
                    if result is None:  # X holds a NaN/inf: refused, as the check before training does
                        self.batch_rng.bit_generator.state = rng_state
                        self.loss, self.optimizer = previous
                        check.finite(X)  # raises, naming the first such row
                    loss_sum, correct = result
                else:
                    loss_sum, correct = self._epoch_layers(X, T, labels, order, batch_size, loss, epoch, saved,
                                                           weights)
                mean_loss = loss_sum / total_weight
                if not math.isfinite(mean_loss):
                    self._restore(saved)
                    raise TrainingDiverged(f"fit: the loss became {mean_loss} in epoch {epoch + 1}; "
                                           f"weights restored to the end of epoch {epoch}")
                logs = {"loss": mean_loss, "accuracy": correct / n, "lr": float(self.optimizer.lr)}
                if validation_data is not None:
                    scores = self.evaluate(*validation_data, loss=loss)
                    logs["val_loss"] = scores["loss"]
                    if "accuracy" in scores:  # a regression (mse, no output activation, float rows) has none
                        logs["val_accuracy"] = scores["accuracy"]
            except KeyboardInterrupt:
                # Back to the end of the last completed epoch, batch generator included,
                # so a later fit (or the checkpoint) continues as if never interrupted.
                self._restore(saved)
                self.batch_rng.bit_generator.state = rng_state
                if verbose:
                    print(f"fit: interrupted (Ctrl-C) in epoch {epoch + 1}; stopped and kept the weights "
                          f"of the last completed epoch ({epoch})", file=sys.stderr)
                history.interrupted = True
                break
            logs["seconds"] = time.perf_counter() - started
            self.epochs_trained += 1
            history.append(epoch + 1, logs)
            if checkpoint:
                io.save_checkpoint(self, checkpoint, epoch + 1, history, batch_size, shuffle)
            if verbose:
                print(history.line(-1, n), file=sys.stderr)
            for callback in callbacks:
                callback.on_epoch_end(epoch + 1, dict(logs))
            if self.stop_training:
                break
        for callback in callbacks:
            callback.on_train_end({"epochs": len(history), "interrupted": history.interrupted})
        return history

    def _training_plan(self, loss, optimizer, n, epochs, batch_size, verbose, weighted=False):
        """The backend's ``(trainer, path)`` for this job; with ``verbose``, its notices and the path."""
        with notices.shown(verbose):
            if weighted:  # asked before the backend, which might compile a trainer for nothing
                trainer, path = None, WEIGHTED_PATH
            else:
                trainer, path = self.backend.training_plan(self, loss, optimizer, n, epochs, batch_size)
            notices.logger.info(f"fit: backend {self.backend.name}, {path}")
        return trainer, path

    def _epoch_layers(self, X, T, labels, order, batch_size, loss, epoch, saved, weights=None):
        """One epoch, batch by batch, with the backend's ops: ``(loss_sum, n_correct)``, the loss
        summed over rows, each row's times its weight (``weights``: host float64, one per row, or None)."""
        backend, xp = self.backend, self.backend.xp
        layers = self.training_layers(loss)
        dense = self.dense_layers
        host_order, order = order, backend.asarray(order)
        loss_sum, correct = 0.0, 0
        n = X.shape[0]
        with self._dropout_batches(layers, self.epochs_trained) as set_rows:
            for batch, start in enumerate(range(0, n, batch_size)):
                stop = min(start + batch_size, n)
                idx = order[start:stop]
                set_rows(idx)
                scale, batch_weight = self._batch_weights(weights, host_order[start:stop])
                if batch_weight == 0:  # every row weighs zero: no step (nor a step count); outputs for accuracy
                    Y = self._run(layers, self._batch_rows(X, T, idx)[0])
                else:
                    value, Y = self._batch_step(layers, X, T, idx, loss, epoch, batch, saved, scale)
                    loss_sum = loss_sum + value * batch_weight
                correct = correct + self._n_correct(Y, xp.take(labels, idx, axis=0), loss)
                if batch_weight != 0:
                    self.optimizer.step(backend, dense)
        return float(loss_sum), int(correct)

    def _batch_weights(self, weights, rows):
        """``(scale, Σw)`` of the batch of ``rows`` (host indices): ``scale`` the backend's (B,)
        ``wᵢ·B / Σw`` for :meth:`_forward_backward`, or None where the plain mean is the weighted
        one (no weights, or all alike: then the numbers are the unweighted ones, bit for bit);
        ``Σw`` the row count when unweighted, a Python number either way (it keeps the loss's dtype)."""
        if weights is None:
            return None, len(rows)
        w = weights[rows]
        total = float(w.sum())
        if total == 0 or np.all(w == w[0]):
            return None, total
        return self.backend.asarray(w * (len(w) / total), dtype=self.dtype), total

    def _batch_rows(self, X, T, idx):
        """The rows ``idx`` of X and T, X in T's dtype."""
        xp = self.backend.xp
        Xb, Tb = xp.take(X, idx, axis=0), xp.take(T, idx, axis=0)
        if Xb.dtype != Tb.dtype:  # a data set kept as uint8 (Backend.training_set)
            Xb = xp.astype(Xb, Tb.dtype)
        return Xb, Tb

    def _batch_step(self, layers, X, T, idx, loss, epoch, batch, saved, scale=None):
        """Forward and backward on the rows ``idx`` (weighted by ``scale``, see :meth:`_forward_backward`):
        ``(loss, output)``; raises at a NaN/inf loss."""
        backend = self.backend
        Xb, Tb = self._batch_rows(X, T, idx)
        value, Y = self._forward_backward(layers, Xb, Tb, loss, scale)
        if backend.check_every_batch and not math.isfinite(float(value)):
            self._restore_if_not_finite(saved)
            raise TrainingDiverged(f"fit: the loss became {float(value)} in epoch {epoch + 1}, "
                                   f"batch {batch + 1}; training stopped before that update")
        return value, Y

    def _epoch_compiled(self, trainer, X, T, labels, order, batch_size, epoch, saved, x_unchecked=False):
        """One epoch as one call of a backend's compiled trainer: ``(loss_sum, correct)``, or None
        when it stopped at a NaN/inf in X, which fit left to it (``x_unchecked``): then the
        epoch is undone."""
        loss_sum, correct, bad_batch = trainer(X, T, labels, order, batch_size)
        if bad_batch >= 0 and x_unchecked and not check.all_finite(X):
            self._restore(saved)
            return None
        if bad_batch >= 0:
            # with X finite, a trainer that checks X stops on sums that overflowed too
            what = "the loss or a first-layer sum" if x_unchecked else "the loss"
            self._restore_if_not_finite(saved)
            raise TrainingDiverged(f"fit: {what} became NaN or inf in epoch {epoch + 1}, "
                                   f"batch {bad_batch + 1}; training stopped before that update")
        return float(loss_sum), int(correct)

    # ---- snapshots: the last good weights --------------------------------
    def _snapshot(self):
        xp = self.backend.xp
        params = [(xp.asarray(d.W, copy=True), xp.asarray(d.b, copy=True)) for d in self.dense_layers]
        state = {key: {slot: xp.asarray(v, copy=True) for slot, v in entry.items()}
                 for key, entry in self.optimizer.state.items()} if self.optimizer else {}
        counters = dict(self.optimizer._counters()) if self.optimizer else {}
        return params, state, counters

    def _restore(self, saved):
        params, state, counters = saved
        for layer, (W, b) in zip(self.dense_layers, params):
            layer._W, layer._b = W, b
        if self.optimizer is not None:
            self.optimizer.state = state
            for name, value in counters.items():
                setattr(self.optimizer, name, value)

    def _restore_if_not_finite(self, saved):
        xp = self.backend.xp
        finite = all(bool(xp.all(xp.isfinite(p))) for d in self.dense_layers for p in (d.W, d.b))
        if not finite:
            self._restore(saved)

    # ---- files -----------------------------------------------------------
    def save(self, path):
        """Write the model to ``path`` (atomic, no pickle): a ``.safetensors`` path as safetensors
        (weights + the description as metadata), any other as .npz + JSON description.

        The path is used as given (no ``.npz`` appended); ``fastnn.load(path)`` reads it back.
        """
        from . import io
        io.save(self, path)

    def export_onnx(self, path, opset=None):
        """Write an ONNX graph computing ``predict_proba`` (``pip install 'fastnn[onnx]'``):
        input ``"input"`` ``(batch, n_in)`` in the model's dtype, output ``"output"``.

        >>> net.export_onnx("net.onnx")
        >>> onnxruntime.InferenceSession("net.onnx").run(None, {"input": X.astype(net.dtype)})[0]
        """
        from .onnx_export import export_onnx
        export_onnx(self, path, opset)


# ---- fit's weights: sample_weight × class_weight -----------------------------
def _training_weights(net, weights, class_weight, T, labels):
    """The weight of each training row (host float64), or None: ``weights`` (checked
    ``sample_weight``, or None) times the ``class_weight`` of each row's class."""
    if class_weight is not None:
        per_row = _class_weight_rows(class_weight, net.backend.to_numpy(T), net.backend.to_numpy(labels), net.n_out)
        weights = per_row if weights is None else weights * per_row
    if weights is not None and not np.any(weights > 0):
        raise ValueError("fit: every training row weighs zero (sample_weight × class_weight, after "
                         "validation_split); nothing to train on")
    return weights


def _class_weight_rows(class_weight, T, labels, n_out):
    """``class_weight`` (``{class: weight}`` or ``"balanced"``) as one weight per row."""
    if not np.all((T == 0) | (T == 1)) or (n_out > 1 and not np.all(T.sum(axis=1) == 1)):
        raise ValueError("class_weight: needs class labels (1-D y) or one-hot target rows; y here has "
                         "target rows that are not one-hot")
    n_classes = 2 if n_out == 1 else n_out
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight: expected a dict {{class: weight}} or 'balanced', got {class_weight!r}")
        present, counts = np.unique(labels, return_counts=True)
        per_class = np.zeros(n_classes)
        per_class[present] = len(labels) / (len(present) * counts)  # scikit-learn's "balanced"
    elif isinstance(class_weight, dict):
        per_class = np.ones(n_classes)
        for label, weight in class_weight.items():
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < n_classes:
                raise ValueError(f"class_weight: {label!r} is not a class of this model (classes 0..{n_classes - 1})")
            if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(weight) or weight < 0:
                raise ValueError(f"class_weight: the weight of class {label} must be a finite number >= 0, "
                                 f"got {weight!r}")
            per_class[label] = weight
    else:
        raise TypeError(f"class_weight: expected a dict {{class: weight}} or 'balanced', got "
                        f"{type(class_weight).__name__}")
    return per_class[labels]
