"""The cupy backend's whole-epoch trainer: one training step, captured once as a CUDA graph,
replayed for every batch.

``make_graph_trainer(backend, net, loss, optimizer)`` returns the callable of
:meth:`fastnn.backend.Backend.epoch_trainer` for a plain stack of Dense layers,
each followed by at most one identity/sigmoid/relu/tanh activation, with loss
``mse``, ``cross_entropy`` or ``binary_cross_entropy`` and any update rule of
``fastnn.ops.optimizers``, in float32 or float64; anything else
gets None (``fit`` then runs layer by layer).

Why: at small batches a step is a dozen tiny kernels and the time goes to
launching them from Python. Replaying a captured graph launches them all at
once. Everything a step touches has a fixed address: the data set (``fit``
moved it to the GPU once), the epoch's order (uploaded once per epoch) and a
device counter ``offset`` that says where in the order the batch starts; the
last kernel of a step advances it. So a batch costs one ``Graph.launch`` and no
host copy; the loss sum and the number of right guesses accumulate on the GPU
and come back once per epoch. A batch whose loss is NaN/inf sets a flag on the
GPU that every later kernel of the epoch reads: that batch and the rest are not
applied, and the epoch reports the batch (``fit`` raises TrainingDiverged).

The step uses the kernels of ``kernels.py`` only (CuPy refuses cuBLAS
calls on a capturing stream). Batches above ``GRAPH_BATCH_MAX`` rows run layer
by layer on cuBLAS, where launches no longer dominate.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fastnn.backend import Array
from fastnn.trainer import Trainer, give_params, plain_stack, train_layer_by_layer
from fastnn.losses import CODES as LOSS_CODES
from fastnn.ops import activations
from fastnn.optim import is_plain as is_plain_optimizer

from . import kernels as kern

#: Batches up to this many rows replay the graph; larger ones run layer by layer.
GRAPH_BATCH_MAX = 256


def make_graph_trainer(backend, net, loss, optimizer):
    """The graph trainer for ``net`` (see the module docstring), or None."""
    try:
        dims, acts = _plan(net, loss, optimizer)
    except ValueError:
        return None
    return GraphTrainer(backend, net, loss, optimizer, dims, acts)


def unsupported_reason(net, loss, optimizer):
    """Why ``net`` trains layer by layer on the GPU (None when the graph trainer takes it)."""
    try:
        _plan(net, loss, optimizer)
    except ValueError as exc:
        return str(exc)
    return None


def _plan(net, loss, optimizer):
    """``(dims, acts)``: the layer widths and each Dense layer's activation; ValueError: why not."""
    if net.dtype not in ("float32", "float64"):
        raise ValueError(f"dtype {net.dtype}")
    if getattr(loss, "name", None) not in LOSS_CODES or type(loss).__module__ != "fastnn.losses":
        raise ValueError(f"loss {loss!r}")
    if not is_plain_optimizer(optimizer):  # a step replaced on the instance must run: the graph skips it
        raise ValueError(f"optimizer {type(optimizer).__name__} (one of fastnn's, stepping as theirs)")
    dims, acts = plain_stack(net, loss)
    for name, params in acts:  # the graph's products apply activations from Y, with no setting
        rule = activations.BY_NAME[name]
        if rule.needs != "Y" or params:
            raise ValueError(f"activation {name} (the graph step keeps no Z and takes no setting: "
                             "such models train layer by layer, on the same generated kernels)")
    return dims, [name for name, _ in acts]


class GraphTrainer(Trainer):
    """``run(X, T, labels, order, batch_size) -> (loss_sum, n_correct, bad_batch)``.

    After a call, ``last_path`` says what ran (``"graph"`` or ``"layers"``) and
    ``captures`` counts the graphs captured so far.
    """

    def __init__(self, backend, net, loss, optimizer, dims, acts):
        self.backend, self.net, self.loss, self.optimizer = backend, net, loss, optimizer
        self.dims, self.acts = dims, acts
        self.kind = loss.name
        self.logits = loss.output_activation is not None  # how _n_correct thresholds one output
        self.dtype = np.dtype(net.dtype)
        self.last_path, self.captures, self.failure = None, 0, None
        self._key = None
        cp = backend._cp
        with backend.device:
            self.stream = cp.cuda.Stream(non_blocking=True)  # capture needs a stream of its own
            self.pool = cp.cuda.MemoryPool()  # whatever a capture allocates stays the graph's

    def describe(self, batch_size: int, rows: int | None = None) -> str:
        """The path, for ``fit(verbose=1)`` (``rows``: the training rows, unused here)."""
        if int(batch_size) > GRAPH_BATCH_MAX:
            return (f"layer by layer on cuBLAS (batch {batch_size} is above the CUDA graph's "
                    f"{GRAPH_BATCH_MAX} rows)")
        return f"CUDA graph: one training step captured once, replayed for each batch of {batch_size}"

    # ---- the call ---------------------------------------------------------
    def __call__(self, X: Array, T: Array, labels: Array, order: NDArray[Any],
                 batch_size: int, weights: NDArray[Any] | None = None) -> tuple[float, int, int]:
        if weights is not None:  # takes_weights is False: fit trains a weighted job layer by layer
            raise ValueError("graph epoch: takes no sample weights")
        n, bs = X.shape[0], int(batch_size)
        order = np.ascontiguousarray(order, dtype=np.int64)
        if order.shape != (n,) or (n and (order.min() < 0 or order.max() >= n)):
            raise ValueError(f"graph epoch: order must be {n} row numbers of X, got shape {order.shape}")
        if bs > GRAPH_BATCH_MAX or self.failure:
            return self._layers(X, T, labels, order, bs)
        with self.backend.device:
            try:
                self._prepare(X, T, labels, n, bs)
            except Exception as exc:  # noqa: BLE001 - a CuPy/CUDA that cannot capture: say so, go on
                self.failure = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"cupy backend: capturing the training step as a CUDA graph failed "
                              f"({self.failure}); fit runs layer by layer", RuntimeWarning, stacklevel=3)
                return self._layers(X, T, labels, order, bs)
            return self._replay(order, n, bs)

    def _layers(self, X, T, labels, order, bs):
        self.last_path = "layers"
        loss_sum, correct = train_layer_by_layer(self.net, X, T, labels, order, bs, self.loss)
        return loss_sum, correct, -1

    def _replay(self, order, n, bs):
        cp, opt = self.backend._cp, self.optimizer
        self._adopt()
        self.order.set(order)  # the epoch's one host -> device copy
        self.offset.fill(0)
        self.acc.fill(0)
        self.stop.fill(-1)
        if opt.counts_steps:
            self.step_s[:1].fill(float(opt.t))
        stream = cp.cuda.get_current_stream()  # after fit's own work on it, in order
        full, rest = divmod(n, bs)
        for _ in range(full):
            self.graphs[bs].launch(stream)
        if rest:
            self.graphs[rest].launch(stream)
        loss_sum, correct, stop = self.acc.get()  # the epoch's one device -> host copy (and sync)
        bad = int(stop) if stop >= 0 else -1
        if opt.counts_steps:
            opt.t += bad if bad >= 0 else full + (1 if rest else 0)  # the steps applied
        self.last_path = "graph"
        return float(loss_sum), int(correct), bad

    # ---- buffers and graphs ---------------------------------------------------
    def _hyper(self):
        opt = self.optimizer
        return (opt.rule.name, *opt.hyper().values())

    def _prepare(self, X, T, labels, n, bs):
        """Buffers and graphs for this data and batch size (kept while neither changes)."""
        cp = self.backend._cp
        compact = X.dtype == np.uint8  # kept as uint8 by CupyBackend.training_set: converted per batch
        X = cp.ascontiguousarray(X) if compact else cp.ascontiguousarray(X, dtype=self.dtype)
        T = cp.ascontiguousarray(T, dtype=self.dtype)
        labels = cp.ascontiguousarray(labels, dtype=np.int64)
        key = (X.data.ptr, T.data.ptr, labels.data.ptr, n, bs, self._hyper())
        if key == self._key:
            return
        self._key = None
        self.X, self.T, self.labels = X, T, labels  # held: the graphs read them where they are
        rows = min(bs, n)
        zeros = lambda *shape, dtype=self.dtype: cp.zeros(shape, dtype=dtype)  # noqa: E731
        dims = self.dims
        self.W = [zeros(a, b) for a, b in zip(dims, dims[1:])]
        self.b = [zeros(b) for b in dims[1:]]
        self.Xb = zeros(rows, dims[0]) if compact else None  # the batch's rows as floats (uint8 data)
        self.Y = [zeros(rows, b) for b in dims[1:]]   # each layer's output (the last: the network's)
        self.dZ = [zeros(rows, b) for b in dims[1:]]  # each layer's gradient before its activation
        self.dW = [zeros(a, b) for a, b in zip(dims, dims[1:])]
        self.db = [zeros(b) for b in dims[1:]]
        self.slots = {(f"{i}.{name}", slot): zeros(*P.shape)
                      for i in range(len(self.W)) for name, P in (("W", self.W[i]), ("b", self.b[i]))
                      for slot in self.optimizer.rule.slots}
        self.order = zeros(n, dtype=np.int64)  # zeros: valid rows for the warm-up step
        self.offset = zeros(1, dtype=np.int64)
        self.acc = zeros(3, dtype=np.float64)  # loss sum, right guesses, stop flag
        self.stop = self.acc[2:]  # -1, or the first batch with a NaN/inf loss: nothing more applied
        self.bs = bs
        self.step_s = zeros(3, dtype=np.float64)  # the step t, then the rule's per-step scalars
        self.graphs = {rows: self._capture(rows)}
        if n % bs and n > bs:
            self.graphs[n % bs] = self._capture(n % bs)  # the last, partial batch
        self._key = key

    def _state(self):
        return [*self.W, *self.b, *self.slots.values()]

    def _capture(self, rows):
        """The step for ``rows`` rows as a graph. A warm-up step runs first (it compiles the
        kernels outside the capture); its changes to the weights are undone."""
        cp = self.backend._cp
        saved = [P.copy() for P in self._state()]
        cp.cuda.get_current_stream().synchronize()  # the copies done before the warm-up writes
        try:
            with cp.cuda.using_allocator(self.pool.malloc), self.stream:
                self.offset.fill(0)
                self.stop.fill(-1)
                self._step(rows)
                self.stream.begin_capture()
                try:
                    self._step(rows)
                finally:
                    graph = self.stream.end_capture()
        finally:
            self.stream.synchronize()
            for P, old in zip(self._state(), saved):
                P[...] = old
        self.captures += 1
        return graph

    def _adopt(self):
        """The layers' parameters and the optimizer's state move into the graph's buffers
        (device copies, only when they are elsewhere: after a restore, or at the first call)."""
        for layer, W, b in zip(self.net.dense_layers, self.W, self.b):
            if layer.W is not W:
                W[...] = layer.W
                give_params(layer, W=W)
            if layer.b is not b:
                b[...] = layer.b
                give_params(layer, b=b)
        state = self.optimizer.state
        for (key, slot), buf in self.slots.items():
            entry = state.setdefault(key, {})
            if entry.get(slot) is not buf:
                if entry.get(slot) is None:
                    buf.fill(0)
                else:
                    buf[...] = entry[slot]
                entry[slot] = buf

    # ---- one training step (what the graph holds) --------------------------------
    def _step(self, r):
        """Forward, loss, backward and update for the batch of ``r`` rows at ``offset``."""
        dims, acts, L = self.dims, self.acts, len(self.dims) - 1
        if self.Xb is None:  # layer 0 reads the batch's rows from X where they are
            X0, rows0 = self.X, (self.order, self.offset)
        else:  # uint8 data: the batch's rows, converted, first
            kern.gather_u8(self.X, self.order, self.offset, r, self.Xb[:r], self.stop)
            X0, rows0 = self.Xb[:r], None
        for i in range(L):  # Y_i = act_i(Y_{i-1} @ W_i + b_i)
            A, rows_of = (X0, rows0) if i == 0 else (self.Y[i - 1][:r], None)
            kern.gemm(A, self.W[i], self.Y[i][:r], r, dims[i + 1], dims[i], self.stop,
                      bias=self.b[i], act=acts[i], gather=rows_of)
        kern.loss_epoch(self.kind, self.Y[L - 1][:r], self.T, self.labels, self.order, self.offset, r,
                        self.bs, acts[L - 1], self.logits, self.dZ[L - 1][:r], self.acc)
        if self.optimizer.rule.step_scalars:
            kern.tick(self.optimizer.rule, self.step_s, self.optimizer.hyper(), self.dtype)
        for i in reversed(range(L)):
            dZ = self.dZ[i][:r]
            if i > 0:  # (r, nO) @ (nO, nI) -> (r, nI), through act' of the layer below; W_i before its update
                kern.gemm(dZ, self.W[i], self.dZ[i - 1][:r], r, dims[i], dims[i + 1], self.stop, trans_b=True,
                          Y=self.Y[i - 1][:r], dact=acts[i - 1])
            A, rows_of = (X0, rows0) if i == 0 else (self.Y[i - 1][:r], None)
            self._update(i, A, rows_of, dZ, r)
        kern.advance(self.offset, r, self.dtype)

    def _update(self, i, A, rows_of, dZ, r):
        """Layer i's W and b from ``dW = Aᵀ @ dZ`` ((nI, r) @ (r, nO)) and ``db = Σ_rows dZ``."""
        opt, nI, nO = self.optimizer, self.dims[i], self.dims[i + 1]
        W, b, lr, stop = self.W[i], self.b[i], opt.lr, self.stop
        plain = opt.rule.name == "sgd"
        if plain and not opt.weight_decay:  # W ← W − lr·Aᵀ@dZ: one product, no temporary
            kern.gemm(A, dZ, W, nI, nO, r, stop, trans_a=True, alpha=-lr, beta=1.0, gather=rows_of)
        else:
            kern.gemm(A, dZ, self.dW[i], nI, nO, r, stop, trans_a=True, gather=rows_of)
        if plain:  # biases take no weight decay: b ← b − lr·Σ dZ
            kern.bias_grad(dZ, b, r, nO, stop, alpha=-lr, beta=1.0)
        else:
            kern.bias_grad(dZ, self.db[i], r, nO, stop)
        rule = opt.rule
        settings = opt.hyper()  # the rule's inputs but its per-step scalars (those: self.step_s)
        for name, P, G, decay in (("W", W, self.dW[i], opt.weight_decay), ("b", b, self.db[i], 0.0)):
            if plain and (name == "b" or not decay):
                continue  # done above by the products themselves
            values = [float(value) for value in dict(settings, weight_decay=decay).values()]
            kern.update(rule, in_graph=True)(G, *values, self.step_s, stop,
                                             P, *[self.slots[f"{i}.{name}", slot] for slot in rule.slots])
