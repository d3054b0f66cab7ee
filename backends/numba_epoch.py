"""The compiled whole epoch of the numba backend: one native call trains a run of batches.

``make_epoch_trainer(backend, net, loss, optimizer)`` returns the callable of
:meth:`fastnn.backend.Backend.epoch_trainer` for a plain stack of Dense layers
with identity/sigmoid/relu/tanh activations, loss ``mse``, ``cross_entropy`` or
``binary_cross_entropy``, optimizer SGD (momentum, Nesterov, weight decay) or
Adam, in float32 or float64; anything else gets None (``fit`` then runs layer
by layer). The kernels (``numba_epoch_template.py``) serve every shape: they
compile once per dtype and are cached on disk, so ``warmup()`` once per machine
makes every later process start at once::

    from fastnn.backends.numba_epoch import warmup
    warmup()                      # compiles (or loads) the kernels; returns seconds

Threads: up to the backend's ``num_threads`` when a batch carries enough work to
share (``WORK_PER_THREAD``), else one; the threads meet at spin barriers that a
Python-side abort flag can always release, so an error cannot leave one waiting.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from fastnn.layers import Activation, Dense
from fastnn.losses import MSE, BinaryCrossEntropy, CrossEntropy
from fastnn.optim import SGD, Adam

from . import numba_epoch_codegen as codegen
from . import numba_epoch_simd as simd

_ACTS = {"identity": 0, "sigmoid": 1, "relu": 2, "tanh": 3}
_LOSSES = {MSE: 0, CrossEntropy: 1, BinaryCrossEntropy: 2}
#: Multiply-adds per batch (forward) each thread needs to pay for its barriers: measured on
#: 2 cores, 100-32-10 at batch 10 (35k) gains from a second thread, 30-30-10 (12k) loses.
WORK_PER_THREAD = 15_000
#: Multiply-adds per compiled call: Ctrl-C is noticed between calls (~20 ms apart).
CHUNK_WORK = 2e9


def make_epoch_trainer(backend, net, loss, optimizer):
    """The compiled trainer for ``net`` (see the module docstring), or None."""
    plan = _plan(net, loss, optimizer)
    return None if plan is None else EpochTrainer(backend, net, optimizer, *plan)


def unsupported_reason(net, loss, optimizer):
    """Why ``net`` trains layer by layer (None when the compiled epoch supports it)."""
    try:
        _plan(net, loss, optimizer, explain=True)
    except _Unsupported as exc:
        return str(exc)
    return None


class _Unsupported(Exception):
    pass


def _plan(net, loss, optimizer, explain=False):
    """``(dims, acts, loss_code)`` or None (raises _Unsupported with the reason when explain)."""
    try:
        if net.dtype not in ("float32", "float64"):
            raise _Unsupported(f"dtype {net.dtype}")
        if type(loss) not in _LOSSES:
            raise _Unsupported(f"loss {loss!r}")
        if type(optimizer) not in (SGD, Adam):
            raise _Unsupported(f"optimizer {type(optimizer).__name__}")
        dims, acts, previous = [], [], None
        for layer in net._training_layers(loss):
            if _plain(layer, Dense):
                if not (isinstance(layer.W, np.ndarray) and isinstance(layer.b, np.ndarray)):
                    raise _Unsupported("parameters that are not NumPy arrays")
                dims += [layer.n_in, layer.n_out] if not dims else [layer.n_out]
                acts.append(_ACTS["identity"])
            elif _plain(layer, Activation) and layer.act in _ACTS and isinstance(previous, Dense):
                acts[-1] = _ACTS[layer.act]
            else:
                raise _Unsupported(f"layer {layer!r} (only Dense, each followed by at most one "
                                   f"{'/'.join(_ACTS)} activation)")
            previous = layer
        if not dims:
            raise _Unsupported("no Dense layer")
        return dims, acts, _LOSSES[type(loss)]
    except _Unsupported:
        if explain:
            raise
        return None


def _plain(layer, cls):
    """``layer`` is a ``cls`` whose forward/backward are the library's own (no user override)."""
    kind = type(layer)
    return isinstance(layer, cls) and kind.forward is cls.forward and kind.backward is cls.backward


class EpochTrainer:
    """``run(X, T, labels, order, batch_size) -> (loss_sum, n_correct, bad_batch)``."""

    def __init__(self, backend, net, optimizer, dims, acts, loss_code):
        self.backend, self.net, self.optimizer = backend, net, optimizer
        self.dims, self.acts, self.loss_code = dims, acts, loss_code
        self.dtype = np.dtype(net.dtype)
        self.vw = simd.width(self.dtype)
        self.threads = _available_threads(backend)
        self.description = (f"compiled whole epoch ({simd.VECTOR_BITS}-bit SIMD kernels, "
                            f"{'1 thread' if self.threads == 1 else f'up to {self.threads} threads'} "
                            f"by the work per batch)")
        self._key = None
        self.last_threads = None

    # ---- the call -------------------------------------------------------------
    def __call__(self, X, T, labels, order, batch_size):
        X, T, labels, order = self._checked(X, T, labels, order)
        n, bs = X.shape[0], int(batch_size)
        kern = codegen.load()
        nbatch = -(-n // bs)
        per_call = max(1, int(CHUNK_WORK / max(1.0, bs * self._macs_per_row)))
        args = (X.reshape(-1), T.reshape(-1), labels, order)
        total, correct, bad, done = 0.0, 0, -1, 0
        P = self._threads_for(bs)
        while True:
            self._prepare(n, bs, P)
            self._copy_in()
            self.last_threads = P
            chunks = [(first, min(per_call, nbatch - first)) for first in range(done, nbatch, per_call)]
            loss, hits, bad, applied, contended = self._run_threads(kern, args, bs, chunks, P)
            self._copy_out(applied)
            total, correct, done = total + loss, correct + hits, done + applied
            if not contended:
                return total, correct, bad
            P = 1  # another process takes a core: the rest of this epoch on one thread

    def _checked(self, X, T, labels, order):
        n = X.shape[0]
        X = np.ascontiguousarray(X, dtype=self.dtype)
        T = np.ascontiguousarray(T, dtype=self.dtype)
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        order = np.ascontiguousarray(order, dtype=np.int64)
        if X.shape != (n, self.dims[0]) or T.shape != (n, self.dims[-1]) or labels.shape != (n,) \
                or order.shape != (n,):
            raise ValueError(f"compiled epoch: inconsistent shapes X {X.shape}, T {T.shape}, "
                             f"labels {labels.shape}, order {order.shape}")
        if n and (order.min() < 0 or order.max() >= n):
            raise ValueError("compiled epoch: order must index the rows of X")
        return X, T, labels, order

    def _run_threads(self, kern, args, bs, chunks, P):
        """Run the chunks on P threads: (loss, hits, bad batch, batches applied, contended)."""
        total, correct, bad, applied, status = 0.0, 0, -1, 0, kern.STATUS_DONE
        errors, workers = [], []
        self.sync[:] = 0
        self.out[:] = 0

        def call(tid, first, count):
            kern.epoch(*args, first, count, bs, self.params, self.S1, self.S2, self.work, self.iwork,
                       self.lay, self.h[tid], self.sync, self.out[tid], tid, P)
            return self.out[tid]

        def worker(tid):
            try:
                for first, count in chunks:
                    o = call(tid, first, count)
                    if o[kern.OUT_STATUS] != kern.STATUS_DONE or o[kern.OUT_BAD] >= 0:
                        break
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)
                self.sync[8 * P] = 1  # releases the other threads' barriers

        if P > 1:
            call(0, 0, 0)  # compile (or load) in this thread before anyone waits at a barrier
            workers = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(1, P)]
            for w in workers:
                w.start()
        try:
            for first, count in chunks:
                o = call(0, first, count)
                total += o[kern.OUT_LOSS]
                correct += int(o[kern.OUT_CORRECT])
                applied += int(o[kern.OUT_APPLIED])
                status, bad = int(o[kern.OUT_STATUS]), int(o[kern.OUT_BAD])
                if status != kern.STATUS_DONE or bad >= 0:
                    break
        except BaseException:
            self.sync[8 * P] = 1
            raise
        finally:
            _join(workers, self.sync, P)
        if errors or status == kern.STATUS_ABORTED:
            raise RuntimeError(f"compiled epoch: a worker thread failed: {errors[0] if errors else 'aborted'}")
        return total, correct, bad, applied, status == kern.STATUS_CONTENDED

    # ---- threads --------------------------------------------------------------
    @property
    def _macs_per_row(self):
        return float(sum(a * b for a, b in zip(self.dims[:-1], self.dims[1:])))

    def _threads_for(self, bs):
        """As many threads as the work per batch pays for, each owning at least one vector of
        the layer they split (the first layer's units; its inputs for a one-layer model)."""
        split = -(-self.dims[1] // self.vw) if len(self.dims) > 2 else self.dims[0] // 4
        return max(1, min(self.threads, split, int(bs * self._macs_per_row // WORK_PER_THREAD)))

    # ---- buffers and the layout table -------------------------------------------
    def _prepare(self, n, bs, P):
        key = (n, bs, P)
        if key == self._key:
            return
        kern = codegen.load()
        dims, vw, mr = self.dims, self.vw, kern.MR
        L = len(dims) - 1
        align = 64 // self.dtype.itemsize
        up = lambda x, m: -(-x // m) * m  # noqa: E731
        bsp = up(min(bs, n), mr)
        npo = [up(d, vw) for d in dims[1:]]
        lay = np.zeros(kern.REC0 + kern.REC * L + P, dtype=np.int64)
        lay[[kern.H_L, kern.H_NI, kern.H_NO, kern.H_N, kern.H_LOSS, kern.H_BSP]] = \
            [L, dims[0], dims[-1], n, self.loss_code, bsp]
        lay[kern.H_OPT] = _opt_kind(self.optimizer)
        p_off, w_off = 0, 0

        def take(size, counter):
            return counter, counter + up(size, align)

        self._params_at = []
        w_off = up(max(npo), align)  # the zero region: [0, max npo)
        lay[kern.H_ZERO] = 0
        for i in range(L):
            rec = kern.REC0 + kern.REC * i
            rows = dims[0] if i == 0 else npo[i - 1]
            if i == 0 and L > 1:
                # The first layer's columns are split between the threads: each thread's block
                # is stored apart (writes to the two halves of one row-major W cost 1.7x).
                blocks = []
                for t in range(P):
                    u0, u1 = npo[0] // vw * t // P, npo[0] // vw * (t + 1) // P
                    at, p_off = take(rows * (u1 - u0) * vw, p_off)
                    blocks.append((at, u0 * vw, (u1 - u0) * vw))
                lay[kern.REC0 + kern.REC * L: kern.REC0 + kern.REC * L + P] = [at for at, _, _ in blocks]
                at_W = blocks[0][0]
            else:
                at_W, p_off = take(rows * npo[i], p_off)
                blocks = [(at_W, 0, npo[i])]
            at_b, p_off = take(npo[i], p_off)
            self._params_at.append((blocks, rows, at_b))
            lay[rec + kern.F_NOUT], lay[rec + kern.F_NPO], lay[rec + kern.F_NV] = dims[i + 1], npo[i], npo[i] // vw
            lay[rec + kern.F_ACT], lay[rec + kern.F_W], lay[rec + kern.F_B] = self.acts[i], at_W, at_b
            lay[rec + kern.F_MASK], w_off = take(npo[i], w_off)
            if i < L - 1:
                lay[rec + kern.F_Y], w_off = take(bsp * npo[i], w_off)
                lay[rec + kern.F_DZ], w_off = take(bsp * npo[i], w_off)
                lay[rec + kern.F_DS], w_off = take(bsp * npo[i], w_off)  # −lr·dZ (plain SGD)
            if i > 0 or L == 1:
                lay[rec + kern.F_PSIZE] = up(bsp * npo[i], align)
                lay[rec + kern.F_PART], w_off = take(2 * P * lay[rec + kern.F_PSIZE], w_off)
        lay[kern.H_NINF], w_off = take(npo[-1], w_off)
        # per-thread private region: the last layer's Y and dZ, and the batch's target rows
        last = kern.REC0 + kern.REC * (L - 1)
        w_off = up(w_off, align)
        block = up(bsp * npo[-1], align)
        lay[last + kern.F_Y], lay[last + kern.F_DZ], lay[kern.H_TP] = w_off, w_off + block, w_off + 2 * block
        lay[kern.H_G] = w_off + 3 * block  # scratch: a gradient tile, or one layer's bias gradient
        private = 3 * block + up(kern.MK * max(npo), align)
        lay[kern.H_PRIV] = private
        w_off += P * private
        lay[kern.H_IOTA], lay[kern.H_ROWS], lay[kern.H_W0T] = 0, bsp, kern.REC0 + kern.REC * L

        self.params = _aligned(p_off, self.dtype)
        self.S1 = _aligned(p_off if lay[kern.H_OPT] else 1, self.dtype)
        self.S2 = _aligned(p_off if lay[kern.H_OPT] == kern.OPT_ADAM else 1, self.dtype)
        self.work = _aligned(w_off, self.dtype)
        for i in range(L):
            rec = kern.REC0 + kern.REC * i
            self.work[lay[rec + kern.F_MASK]: lay[rec + kern.F_MASK] + dims[i + 1]] = 1
        ninf = self.work[lay[kern.H_NINF]: lay[kern.H_NINF] + npo[-1]]
        ninf[dims[-1]:] = -np.inf
        self.iwork = np.zeros(bsp * (1 + P), dtype=np.int64)
        self.iwork[:bsp] = np.arange(bsp)
        self.lay = lay
        self.h = np.zeros((P, 16))
        self.out = np.zeros((P, 8))
        self.sync = np.zeros(8 * (P + 2), dtype=np.int64)  # see the template: counts, abort, stop
        self._npo = npo
        self._key = key

    # ---- parameters in and out ----------------------------------------------------
    def _pieces(self, flat):
        """Per layer ``([(view, columns), ...] of W, view of b)``: where the real (unpadded)
        parameters are inside a flat buffer (W in column blocks where threads split it)."""
        pieces = []
        for i, (blocks, rows, at_b) in enumerate(self._params_at):
            n_in, n_out = self.dims[i], self.dims[i + 1]
            W = []
            for at, c0, width in blocks:
                real = max(0, min(width, n_out - c0))
                if real:
                    W.append((flat[at: at + rows * width].reshape(rows, width)[:n_in, :real], slice(c0, c0 + real)))
            pieces.append((W, flat[at_b: at_b + n_out]))
        return pieces

    def _copy_in(self):
        opt, h = self.optimizer, self.h
        for layer, (W, b) in zip(self.net.dense_layers, self._pieces(self.params)):
            for view, cols in W:
                view[...] = layer.W[:, cols]
            b[...] = layer.b
        for slot, flat in zip(_state_slots(opt), (self.S1, self.S2)):
            for i, (W, b) in enumerate(self._pieces(flat)):
                value = opt.state.get(f"{i}.W", {}).get(slot)
                for view, cols in W:
                    view[...] = 0 if value is None else value[:, cols]
                value = opt.state.get(f"{i}.b", {}).get(slot)
                b[...] = 0 if value is None else value
        h[:] = 0
        h[:, 0] = _opt_kind(opt)
        h[:, 1] = opt.lr
        h[:, 4] = opt.weight_decay
        if isinstance(opt, SGD):
            h[:, 2], h[:, 3] = opt.momentum, float(opt.nesterov)
        else:
            h[:, 5], h[:, 6] = opt.betas
            h[:, 7], h[:, 8] = opt.eps, opt.t

    def _copy_out(self, applied):
        opt = self.optimizer
        for layer, (W, b) in zip(self.net.dense_layers, self._pieces(self.params)):
            layer._W = _store(layer._W, W, (layer.n_in, layer.n_out), self.dtype)
            layer._b = _store(layer._b, [(b, slice(None))], (layer.n_out,), self.dtype)
        if applied == 0:  # no step taken: the optimizer state stays as it was (maybe absent)
            return
        for slot, flat in zip(_state_slots(opt), (self.S1, self.S2)):
            for i, (W, b) in enumerate(self._pieces(flat)):
                for name, parts, shape in (("W", W, W[0][0].shape[:1] + (self.dims[i + 1],)),
                                           ("b", [(b, slice(None))], b.shape)):
                    entry = opt.state.setdefault(f"{i}.{name}", {})
                    entry[slot] = _store(entry.get(slot), parts, shape, self.dtype)
        if isinstance(opt, Adam):
            opt.t += applied


def _store(target, parts, shape, dtype):
    """``target`` (in place when it is a writeable array of that shape) filled from the pieces."""
    if not (isinstance(target, np.ndarray) and target.shape == shape and target.dtype == dtype
            and target.flags.writeable):
        target = np.empty(shape, dtype=dtype)
    for view, cols in parts:
        target[..., cols] = view
    return target


def _state_slots(opt):
    """The optimizer's state slots, as SGD.step / Adam.step name them."""
    if isinstance(opt, Adam):
        return ("M", "V")
    return ("V",) if opt.momentum else ()


def _opt_kind(opt):
    if isinstance(opt, Adam):
        return 2
    return 1 if opt.momentum else 0


def _aligned(n, dtype):
    """A zeroed 1-D array of n elements starting on a 64-byte boundary."""
    raw = np.zeros(n + 64 // np.dtype(dtype).itemsize, dtype=dtype)
    skip = (-raw.ctypes.data % 64) // raw.itemsize
    return raw[skip: skip + n]


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
        kern.epoch(flat, flat, ints, ints, 0, 0, 1, flat, flat, flat, flat, ints,
                   np.zeros(kern.REC0 + kern.REC, dtype=np.int64), np.zeros(16), np.zeros(16, dtype=np.int64),
                   np.zeros(8), 0, 1)
    return time.perf_counter() - started
