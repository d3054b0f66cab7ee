"""The compiled whole epoch of the numba backend: one native call trains a run of batches.

``make_epoch_trainer(backend, net, loss, optimizer)`` returns the callable of
:meth:`fastnn.backend.Backend.epoch_trainer` for a plain stack of Dense layers
with any activation of one setting at most, loss ``mse``, ``cross_entropy`` or
``binary_cross_entropy``, optimizer SGD (momentum, Nesterov, weight decay) or
the activations and update rules of fastnn.ops, in float32 or float64; anything else gets None (``fit`` then runs layer
by layer). The kernels (``epoch_template.py``) serve every shape: they
compile once per dtype and are cached on disk, so ``warmup()`` once per machine
makes every later process start at once::

    from fastnn.backends.numba.epoch import warmup
    warmup()                      # compiles (or loads) the kernels; returns seconds

Threads: up to the backend's ``num_threads`` when a batch carries enough work to
share (``WORK_PER_THREAD``), else one; the threads meet at spin barriers that a
Python-side abort flag can always release, so an error cannot leave one waiting.
"""
from __future__ import annotations

import re
import threading
import time
import warnings
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fastnn.backend import Array
from fastnn.trainer import Trainer, plain_stack
from fastnn.losses import CODES as LOSS_CODES
from fastnn.ops import activations
from fastnn.optim import is_plain as is_plain_optimizer

from . import cache as numba_cache
from . import epoch_codegen as codegen
from . import simd
from .epoch_layout import Layout

#: Multiply-adds per batch (forward) each thread needs to pay for its barriers: measured on
#: 2 cores, 100-32-10 at batch 10 (35k) gains from a second thread, 30-30-10 (12k) loses.
WORK_PER_THREAD = 15_000
#: ...and a whole epoch this many times that: below, starting a second thread for the epoch
#: and its barriers cost what it saves (1,198 rows of 64-64-10, 5.7M multiply-adds: no faster
#: on 2 threads than on 1, 2 cores, measured in turns).
EPOCH_WORK_FACTOR = 1000
#: Rows gathered and converted at a time where X is stored in another dtype or scaled (a uint8
#: memmap under Rescale(1/255)): 16 MB of float32 MNIST rows, not the whole set.
STAGE_ROWS = 4096
#: Multiply-adds per compiled call: Ctrl-C is noticed between calls (~20 ms apart).
CHUNK_WORK = 2e9
#: A barrier wait this long (cycles, ~2 ms) means the partner thread was off its core: when such
#: waits take a quarter of the time, another process shares the cores and one thread goes on.
LONG_WAIT_CYCLES = 5_000_000


#: dtype -> why its kernels failed to build in this process (fit then runs layer by layer)
_build_failures: dict[str, str] = {}
_built: set[str] = set()


def make_epoch_trainer(backend, net, loss, optimizer):
    """The compiled trainer for ``net`` (see the module docstring), or None."""
    plan = _plan(net, loss, optimizer)
    if plan is None or not _builds(net.dtype):
        return None
    return EpochTrainer(backend, net, optimizer, *plan)


def unsupported_reason(net, loss, optimizer):
    """Why ``net`` trains layer by layer (None when the compiled epoch supports it)."""
    try:
        _plan(net, loss, optimizer, explain=True)
    except _Unsupported as exc:
        return str(exc)
    if net.dtype in _build_failures:
        return f"the compiled epoch failed to build ({_build_failures[net.dtype]})"
    return None


def _builds(dtype):
    """Compile (or load) the kernels for ``dtype`` once per process, before the first epoch.

    A failure (a numba or LLVM that cannot compile them, a cache folder that cannot be
    written) is not fatal: it warns once with the reason and ``fit`` runs layer by layer.
    """
    if dtype in _built:
        return True
    if dtype not in _build_failures:
        try:
            warmup((dtype,))
        except Exception as exc:  # noqa: BLE001 - any failure: say why, train the other way
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # numba colours its messages
            first_line = (text.strip().splitlines() or [""])[0]
            _build_failures[dtype] = f"{type(exc).__name__}: {first_line}"
            warnings.warn(f"numba backend: the compiled epoch could not be built for {dtype} "
                          f"({_build_failures[dtype]}); fit runs layer by layer", RuntimeWarning,
                          stacklevel=4)
    return dtype in _built


def is_built(dtype):
    """True once this process compiled or loaded the kernels of ``dtype``."""
    return dtype in _built


class _Unsupported(Exception):
    pass


def _plan(net, loss, optimizer, explain=False):
    """``(dims, acts, loss_code, drops, scale)`` or None (raises _Unsupported with the reason when explain)."""
    try:
        if net.dtype not in ("float32", "float64"):
            raise _Unsupported(f"dtype {net.dtype}")
        if LOSS_CODES.get(getattr(loss, "name", None)) is None or type(loss).__module__ != "fastnn.losses":
            raise _Unsupported(f"loss {loss!r}")
        if not is_plain_optimizer(optimizer):
            raise _Unsupported(f"optimizer {type(optimizer).__name__} (one of fastnn's, stepping as theirs)")
        try:
            dims, acts, drops, scale = plain_stack(net, loss, dropout=True)
        except ValueError as exc:
            raise _Unsupported(str(exc)) from None
        if any(len(params) > 1 for _, params in acts):
            raise _Unsupported("an activation with more than one setting")
        if not all(isinstance(p, np.ndarray) for d in net.dense_layers for p in (d.W, d.b)):
            raise _Unsupported("parameters that are not NumPy arrays")
        return (dims, [(activations.CODES[name], params) for name, params in acts], LOSS_CODES[loss.name], drops,
                scale)
    except _Unsupported:
        if explain:
            raise
        return None


class EpochTrainer(Trainer):
    """``run(X, T, labels, order, batch_size) -> (loss_sum, n_correct, bad_batch)``."""

    #: It stops at a batch whose rows of X hold a NaN/inf (all their first-layer sums are then
    #: NaN/inf), so fit leaves that check to it: a pass over the whole set less per fit
    #: (~7 ms of memory traffic for 60,000 MNIST rows).
    checks_finite_x = True
    takes_weights = True

    def __init__(self, backend, net, optimizer, dims, acts, loss_code, drops=None, scale=None):
        self.backend, self.net, self.optimizer = backend, net, optimizer
        self.dims, self.acts, self.loss_code, self.drops, self.scale = dims, acts, loss_code, drops, scale
        self._ids = np.empty(0, dtype=np.int64)  # 0, 1, 2, ...: the rows' indices in X (Dropout's hash)
        self.dtype = np.dtype(net.dtype)
        self.vw = simd.width(self.dtype)
        self.threads = _available_threads(backend)
        self._key, self.layout, self._kern = None, None, None
        self.last_threads = None
        #: multiply-adds per row (forward), fixed by the model's widths
        self._macs_per_row = float(sum(a * b for a, b in zip(dims[:-1], dims[1:])))
        self._splits = {}  # (batch size, rows) -> (batches per compiled call, threads): see _split
        self._inputs = None  # (X, T, labels) of the last call, and what _checked made of them

    def describe(self, batch_size: int, rows: int | None = None) -> str:
        """The path, for ``fit(verbose=1)``."""
        P = self._threads_for(int(batch_size), rows)
        of = "" if self.threads == 1 else f" of {self.threads} (as many as the work pays for)"
        return (f"compiled whole epoch (one native call per epoch, {simd.VECTOR_BITS}-bit vectors; {P} thread"
                f"{'s' if P > 1 else ''}{of} at batch {batch_size})")

    # ---- the call -------------------------------------------------------------
    def __call__(self, X: Array, T: Array, labels: Array, order: NDArray[Any],
                 batch_size: int, weights: NDArray[Any] | None = None) -> tuple[float, int, int]:
        X, T, labels, order, staged = self._checked(X, T, labels, order)
        wts = _NO_WEIGHTS if weights is None else _read_only(np.ascontiguousarray(weights, dtype=np.float64))
        n, bs = X.shape[0], int(batch_size)
        kern = self._kern = self._kern or codegen.load()
        per_call, P = self._split(bs, n)
        self._start(kern, n, bs, P)
        total, correct, bad, applied = 0.0, 0, -1, 0
        for Xp, Tp, Lp, Op, ids, Wp, b0 in self._parts(X, T, labels, order, wts, bs, staged):
            self.layout.set_rows(Op.shape[0])
            args, nbatch, done = (Xp.reshape(-1), Tp.reshape(-1), Lp, Op, ids, Wp), -(-Op.shape[0] // bs), 0
            while True:
                chunks = [(first, min(per_call, nbatch - first)) for first in range(done, nbatch, per_call)]
                loss, hits, bad, done_now, steps, contended = self._run_threads(kern, args, bs, chunks, P)
                total, correct, done, applied = total + loss, correct + hits, done + done_now, applied + steps
                if bad >= 0 or not contended:
                    break
                self.layout.copy_out(self.net.dense_layers, self.optimizer, applied)
                applied, P = 0, 1  # another process takes a core: the rest of this epoch on one thread
                self._start(kern, n, bs, P)
                self.layout.set_rows(Op.shape[0])
            if bad >= 0:
                bad += b0
                break
        self.layout.copy_out(self.net.dense_layers, self.optimizer, applied)
        return total, correct, bad

    def _start(self, kern, n, bs, P):
        """The buffers for (n rows, batch bs, P threads), holding the model's state and this epoch's
        Dropout hash bases."""
        if self._key != (n, bs, P):
            self.layout, self._key = Layout(kern, self.dims, self.acts, self.loss_code, self.optimizer,
                                            self.dtype, n, bs, P, LONG_WAIT_CYCLES, self.drops), (n, bs, P)
        self.layout.copy_in(self.net.dense_layers, self.optimizer)
        self.layout.set_dropout_epoch(self.net.dropout_key, self.net.epochs_trained)
        self.last_threads = P

    def _parts(self, X, T, labels, order, wts, bs, staged):
        """``(X, T, labels, order, ids, weights, first batch)`` per kernel run: the whole set at once, or,
        staged, the rows of STAGE_ROWS at a time gathered in batch order and converted to the
        model's dtype (and scaled, under a Rescale) as the layer path converts each batch;
        ``ids`` are their row indices in X (Dropout's masks follow them)."""
        n = X.shape[0]
        if not staged:
            yield X, T, labels, order, self._ids_for(n), wts, 0
            return
        step = max(1, STAGE_ROWS // bs) * bs
        for start in range(0, n, step):
            yield *self._staged(X, T, labels, wts, np.asarray(order[start:start + step])), start // bs

    def _staged(self, X, T, labels, wts, idx):
        """``(X, T, labels, order, ids, weights)`` of the rows ``idx`` alone, X's converted to the
        model's dtype (and scaled, under a Rescale) as the layer path converts each batch; ``ids``
        are their row indices in X (Dropout's masks follow them)."""
        Xs = np.asarray(X[idx]).astype(self.dtype)  # (rows, nI): only these rows, in memory
        if self.scale is not None:
            Xs *= self.dtype.type(self.scale)
        local = _read_only(np.arange(idx.shape[0], dtype=np.int64))
        Ws = _read_only(wts[idx]) if wts.shape[0] else wts
        return _read_only(Xs), _read_only(T[idx]), _read_only(labels[idx]), local, _read_only(idx), Ws

    def _ids_for(self, n):
        """0, 1, ..., n - 1: the rows' indices in X, where X is passed whole."""
        if self._ids.shape[0] != n:
            self._ids = _read_only(np.arange(n, dtype=np.int64))
        return self._ids

    def data_parallel(self, X: Array, T: Array, labels: Array, weights: NDArray[Any] | None, batch_size: int,
                      threads: int):
        """The steps of a data-parallel fit (``fastnn.distributed``): see ``epoch_shared``."""
        from .epoch_shared import DataParallelSteps
        return DataParallelSteps(self, X, T, labels, weights, batch_size, threads)

    def _checked(self, X, T, labels, order):
        """The arrays as the kernel takes them (read-only views), and whether X needs staging:
        stored in another dtype (uint8 pixels, a memmap), or scaled by a Rescale."""
        X, T, labels, staged = self._checked_inputs(X, T, labels)
        n = X.shape[0]
        order = np.ascontiguousarray(order, dtype=np.int64)
        if order.shape != (n,):
            raise ValueError(f"compiled epoch: inconsistent shapes X {X.shape}, T {T.shape}, "
                             f"labels {labels.shape}, order {order.shape}")
        if n and (order.min() < 0 or order.max() >= n):
            raise ValueError("compiled epoch: order must index the rows of X")
        return X, T, labels, _read_only(order), staged

    def _checked_inputs(self, X, T, labels):
        """``(X, T, labels, staged)`` of :meth:`_checked`, kept for the next call with the same three
        arrays (every epoch of a fit) where they are views of them: a conversion's copy is made anew."""
        last = self._inputs
        if last is not None and last[0] is X and last[1] is T and last[2] is labels:
            return last[3]
        n = X.shape[0]
        staged = self.scale is not None or X.dtype != self.dtype or not X.flags.c_contiguous
        Xk = X if staged else _read_only(X)
        Tk = np.ascontiguousarray(T, dtype=self.dtype)
        Lk = np.ascontiguousarray(labels, dtype=np.int64)
        if Xk.shape != (n, self.dims[0]) or Tk.shape != (n, self.dims[-1]) or Lk.shape != (n,):
            raise ValueError(f"compiled epoch: inconsistent shapes X {Xk.shape}, T {Tk.shape}, "
                             f"labels {Lk.shape}")
        checked = Xk, _read_only(Tk), _read_only(Lk), staged
        self._inputs = (X, T, labels, checked) if Tk is T and Lk is labels else None
        return checked

    def _run_threads(self, kern, args, bs, chunks, P, state=None):
        """Run the chunks on P threads: (loss, hits, bad batch, batches done, steps taken, contended).
        ``state``: the optimizer's (S1, S2, h) to use instead of the layout's."""
        total, correct, bad, done, applied, status = 0.0, 0, -1, 0, 0, kern.STATUS_DONE
        errors, workers, buf = [], [], self.layout
        S1, S2, h = state or (buf.S1, buf.S2, buf.h)
        buf.sync[:] = 0
        buf.out[:] = 0

        def call(tid, first, count):
            kern.epoch(*args, first, count, bs, buf.params, S1, S2, buf.work, buf.iwork, buf.lay,
                       h[tid], buf.sync, buf.out[tid], tid, P)
            return buf.out[tid]

        def worker(tid):
            try:
                for first, count in chunks:
                    o = call(tid, first, count)
                    if o[kern.OUT_STATUS] != kern.STATUS_DONE or o[kern.OUT_BAD] >= 0:
                        break
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)
                buf.sync[8 * P] = 1  # releases the other threads' barriers

        if P > 1:
            call(0, 0, 0)  # compile (or load) in this thread before anyone waits at a barrier
        try:
            # started inside the try: a Ctrl-C between two starts still releases the started ones
            for tid in range(1, P):
                w = threading.Thread(target=worker, args=(tid,), daemon=True)
                w.start()
                workers.append(w)
            for first, count in chunks:
                o = call(0, first, count)
                total += o[kern.OUT_LOSS]
                correct += int(o[kern.OUT_CORRECT])
                done += int(o[kern.OUT_DONE])
                applied += int(o[kern.OUT_APPLIED])
                status, bad = int(o[kern.OUT_STATUS]), int(o[kern.OUT_BAD])
                if status != kern.STATUS_DONE or bad >= 0:
                    break
        except BaseException:
            buf.sync[8 * P] = 1
            raise
        finally:
            _join(workers, buf.sync, P)
        if errors or status == kern.STATUS_ABORTED:
            raise RuntimeError(f"compiled epoch: a worker thread failed: {errors[0] if errors else 'aborted'}")
        return total, correct, bad, done, applied, status == kern.STATUS_CONTENDED

    # ---- threads --------------------------------------------------------------
    def _split(self, bs, n):
        """``(batches per compiled call, threads)`` for batch ``bs`` of ``n`` rows, worked out once
        (every epoch of a fit asks the same)."""
        split = self._splits.get((bs, n))
        if split is None:
            per_call = max(1, int(CHUNK_WORK / max(1.0, bs * self._macs_per_row)))
            split = self._splits[bs, n] = per_call, self._threads_for(bs, n)
        return split

    def _threads_for(self, bs, rows=None):
        """As many threads as the work per batch pays for, each owning at least one vector of
        the layer they split (the first layer's units; its inputs for a one-layer model); one
        for an epoch too short to pay for starting a second (``EPOCH_WORK_FACTOR``)."""
        if rows is not None and rows * self._macs_per_row < EPOCH_WORK_FACTOR * WORK_PER_THREAD:
            return 1
        split = -(-self.dims[1] // self.vw) if len(self.dims) > 2 else self.dims[0] // 4
        return max(1, min(self.threads, split, int(bs * self._macs_per_row // WORK_PER_THREAD)))

def _read_only(a):
    """A read-only view of ``a``: numba compiles a kernel once per writeable flag of its arguments,
    and inputs arrive both ways (NumPy marks DLPack exports of JAX read-only): one kind, one compile
    (the kernel only reads them)."""
    view = a.view()
    view.flags.writeable = False
    return view


#: The weights of an unweighted fit, as the kernel takes them (no row weighs anything)
_NO_WEIGHTS = _read_only(np.zeros(0))


def _available_threads(backend):
    threads = getattr(backend, "num_threads", None)
    if not threads:
        import numba
        threads = numba.get_num_threads()
    return max(1, int(threads))


def _join(workers, sync, P):
    """Join the worker threads even through Ctrl-C (then re-raised): none may outlive the call."""
    pending = None
    for w in workers:
        while True:
            try:
                w.join()
                break
            except KeyboardInterrupt as exc:
                pending = exc
                sync[8 * P] = 1
    if pending is not None:
        raise pending


def warmup(dtypes=("float32", "float64")):
    """Compile (or load from the disk cache) the epoch kernels; returns the seconds it took."""
    started = time.perf_counter()
    kern = codegen.load()
    for dtype in dtypes:
        dtype = np.dtype(dtype)
        flat = np.zeros(1, dtype=dtype)
        ints = np.zeros(1, dtype=np.int64)
        data, rows = _read_only(flat), _read_only(ints)  # X, T and labels, order: as _checked passes them
        weights = _read_only(np.zeros(0))
        kern.epoch(data, data, rows, rows, rows, weights, 0, 0, 1, flat, flat, flat, flat, ints,
                   np.zeros(kern.REC0 + kern.REC, dtype=np.int64), np.zeros(16), np.zeros(16, dtype=np.int64),
                   np.zeros(8), 0, 1)
        _built.add(dtype.name)  # loaded in this process, and kept on disk for later ones
        numba_cache.mark_cached("epoch", dtype.name)
    return time.perf_counter() - started
