"""Buffers of the compiled epoch: where every layer's pieces live, and the copies in and out.

The kernels (``epoch_template.py``) see flat, 64-byte aligned arrays and an int64
table ``lay`` of offsets (its field names come from the kernel module). Widths are
padded to whole SIMD vectors; the padding stays exactly 0. The parameters are copied in
from the layers and the optimizer before every run and back after it, so weights
assigned between fits are used and checkpoints see the current values.
"""
from __future__ import annotations

import numpy as np

from fastnn.ops import activations
from fastnn.ops import dropout
from fastnn.trainer import give_params

from . import epoch_ops, simd


class Layout:
    """The buffers for one (rows N, batch size, threads P) of one model."""

    def __init__(self, kern, dims, acts, loss_code, optimizer, dtype, n, bs, P, long_wait, drops=None):
        """``acts``: per layer, the activation's ``(code, params)``; ``drops``: per layer, ``(p,
        position)`` of the Dropout after it, or None."""
        drops = drops or [None] * (len(dims) - 1)
        self.kern, self._drops = kern, drops
        self.dims, self.dtype = dims, np.dtype(dtype)
        vw, mr = simd.width(self.dtype), kern.MR
        L = len(dims) - 1
        align = 64 // self.dtype.itemsize
        up = lambda x, m: -(-x // m) * m  # noqa: E731
        bsp = up(min(bs, n), mr)
        npo = [up(d, vw) for d in dims[1:]]
        lay = np.zeros(kern.REC0 + kern.REC * L + P, dtype=np.int64)
        lay[[kern.H_L, kern.H_NI, kern.H_NO, kern.H_N, kern.H_LOSS, kern.H_BSP]] = \
            [L, dims[0], dims[-1], n, loss_code, bsp]
        lay[kern.H_OPT], lay[kern.H_LONG] = optimizer.rule.code, long_wait
        p_off = 0

        def take(size, counter):
            return counter, counter + up(size, align)

        self._params_at = []
        w_off = up(max(npo), align)  # the zero region: [0, max npo)
        lay[kern.H_ZERO] = 0
        settings = []  # (offset in work, value) of each layer's activation setting
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
            code, params = acts[i]
            lay[rec + kern.F_ACT], lay[rec + kern.F_W], lay[rec + kern.F_B] = code, at_W, at_b
            lay[rec + kern.F_MASK], w_off = take(npo[i], w_off)
            lay[rec + kern.F_PRM], w_off = take(1, w_off)
            settings.append((lay[rec + kern.F_PRM], params[0] if params else 0.0))
            needs_z = activations.RULES[code].needs == "Z"
            lay[rec + kern.F_Z] = lay[rec + kern.F_DM] = -1
            if i < L - 1:
                lay[rec + kern.F_Y], w_off = take(bsp * npo[i], w_off)
                if needs_z:
                    lay[rec + kern.F_Z], w_off = take(bsp * npo[i], w_off)
                lay[rec + kern.F_V] = lay[rec + kern.F_Z] if needs_z else lay[rec + kern.F_Y]
                if drops[i] is not None:  # masks, and Y before them where the derivative reads Y
                    p = drops[i][0]
                    lay[rec + kern.F_DM], w_off = take(bsp * npo[i], w_off)
                    lay[rec + kern.F_DT] = dropout.threshold(p)
                    lay[rec + kern.F_DSC], w_off = take(1, w_off)
                    settings.append((lay[rec + kern.F_DSC], dropout.keep_scale(p)))
                    if not needs_z:
                        lay[rec + kern.F_V], w_off = take(bsp * npo[i], w_off)
                lay[rec + kern.F_DZ], w_off = take(bsp * npo[i], w_off)
                lay[rec + kern.F_DS], w_off = take(bsp * npo[i], w_off)  # −lr·dZ (plain SGD)
            if i > 0 or L == 1:
                lay[rec + kern.F_PSIZE] = up(bsp * npo[i], align)
                lay[rec + kern.F_PART], w_off = take(2 * P * lay[rec + kern.F_PSIZE], w_off)
        lay[kern.H_NINF], w_off = take(npo[-1], w_off)
        # per-thread private region: the last layer's Y and dZ, the batch's target rows, scratch
        last = kern.REC0 + kern.REC * (L - 1)
        block = up(bsp * npo[-1], align)
        lay[last + kern.F_Y], lay[last + kern.F_DZ], lay[kern.H_TP] = w_off, w_off + block, w_off + 2 * block
        needs_z = activations.RULES[acts[-1][0]].needs == "Z"  # the last layer's Z: a 4th private block
        lay[last + kern.F_Z] = w_off + 3 * block if needs_z else -1
        lay[last + kern.F_V] = lay[last + kern.F_Z] if needs_z else lay[last + kern.F_Y]
        g_size = up(kern.MK * max(npo), align)
        # backward_x transposes W's block only for layers of at most DX_VIA_FORWARD_NV vectors
        wt_size = up(max([dims[i + 1] * npo[i - 1] for i in range(1, L)
                          if npo[i] // vw <= kern.DX_VIA_FORWARD_NV], default=0), align)
        lay[kern.H_G] = w_off + 4 * block  # a gradient tile, or one layer's bias gradient
        lay[kern.H_WT] = lay[kern.H_G] + g_size  # a transposed block of W (backward_x)
        lay[kern.H_PRIV] = 4 * block + g_size + wt_size
        w_off += P * lay[kern.H_PRIV]
        ext = bsp + mr  # row lists: a batch, then MR more (the next batch's first rows, prefetched)
        lay[kern.H_IOTA], lay[kern.H_ROWS], lay[kern.H_W0T] = 0, ext, kern.REC0 + kern.REC * L

        self.params = aligned(p_off, self.dtype)
        n_slots = len(optimizer.rule.slots)
        self.S1 = aligned(p_off if n_slots >= 1 else 1, self.dtype)
        self.S2 = aligned(p_off if n_slots >= 2 else 1, self.dtype)
        self.work = aligned(w_off, self.dtype)
        for at, value in settings:
            self.work[at] = value
        for i in range(L):
            mask = lay[kern.REC0 + kern.REC * i + kern.F_MASK]
            self.work[mask: mask + dims[i + 1]] = 1
        self.work[lay[kern.H_NINF] + dims[-1]: lay[kern.H_NINF] + npo[-1]] = -np.inf
        self.iwork = np.zeros(ext * (1 + P), dtype=np.int64)
        self.iwork[:ext] = np.arange(ext)
        self.lay = lay
        self.h = aligned(P * epoch_ops.H_WIDTH, np.float64).reshape(P, epoch_ops.H_WIDTH)  # two cache lines
        self.out = aligned(P * 8, np.float64).reshape(P, 8)
        self.sync = np.zeros(8 * (P + 2), dtype=np.int64)  # see the template: counts, abort, stop
        self._pieces = {}  # id(flat buffer) -> (buffer, its pieces)
        self._keys = [(f"{i}.W", f"{i}.b") for i in range(L)]  # the optimizer state's names
        self._shapes = [(dims[i], dims[i + 1]) for i in range(L)]  # of each W

    def set_rows(self, n):
        """The kernel's next calls take ``n`` rows (a staged part of the epoch, or all)."""
        self.lay[self.kern.H_N] = n

    def set_dropout_epoch(self, key, epoch):
        """The hash base of every Dropout's masks for this epoch (``fastnn.ops.dropout``)."""
        kern = self.kern
        for i, drop in enumerate(self._drops):
            if drop is not None:
                base = dropout.layer_base(key, epoch, drop[1])
                self.lay[kern.REC0 + kern.REC * i + kern.F_DB] = np.uint64(base).view(np.int64)

    # ---- parameters in and out ----------------------------------------------------
    def pieces(self, flat):
        """Per layer ``([(view, columns), ...] of W, the one view of the whole W or None, view of b)``:
        where the real (unpadded) parameters are inside a flat buffer (W in column blocks where
        threads split it; the whole W where a C-contiguous view holds it: see ``_whole``).
        Made once per buffer (params, S1, S2 live as long as the layout): every epoch of a
        small job copies in and out six times, and remaking the views was 12% of its fit."""
        cached = self._pieces.get(id(flat))
        if cached is None or cached[0] is not flat:
            cached = self._pieces[id(flat)] = (flat, self._make_pieces(flat))
        return cached[1]

    def _make_pieces(self, flat):
        pieces = []
        for i, (blocks, rows, at_b) in enumerate(self._params_at):
            n_in, n_out = self.dims[i], self.dims[i + 1]
            W = []
            for at, c0, width in blocks:
                real = max(0, min(width, n_out - c0))
                if real:
                    W.append((flat[at: at + rows * width].reshape(rows, width)[:n_in, :real], slice(c0, c0 + real)))
            pieces.append((W, _whole(W), flat[at_b: at_b + n_out]))
        return pieces

    def copy_in(self, dense_layers, opt):
        """Parameters, optimizer state and hyper-parameters into the buffers (an array that is
        already a view of them, handed out by ``copy_out``, is there already)."""
        for layer, (W, whole, b) in zip(dense_layers, self.pieces(self.params)):
            _put(W, whole, layer.W)
            if layer.b is not b:
                b[...] = layer.b
        state = opt.state
        for slot, flat in zip(opt.rule.slots, (self.S1, self.S2)):
            for (key_W, key_b), (W, whole, b) in zip(self._keys, self.pieces(flat)):
                _put(W, whole, state.get(key_W, _NONE).get(slot))
                value = state.get(key_b, _NONE).get(slot)
                if value is not b:
                    b[...] = 0 if value is None else value
        # see epoch_ops: the rule, the steps taken, its inputs (per-step scalars: the kernel's, which
        # writes them and the step count here: the whole row is written every run)
        row = [0.0] * epoch_ops.H_WIDTH
        row[epoch_ops.HY_KIND], row[epoch_ops.HY_T0] = opt.rule.code, opt.t
        for i, value in enumerate(opt.hyper().values()):
            row[epoch_ops.HY_IN + i] = value
        self.h[:] = row  # one row for every thread

    def copy_out(self, dense_layers, opt, applied):
        """Parameters (and, after a step, the optimizer state) back where SGD/Adam keep them: as
        views of the buffers where one view holds a whole array (the next epoch then copies
        nothing in: as the CUDA-graph trainer, the layers hold the trainer's own arrays), else
        copied out of the threads' column blocks or the padding."""
        for layer, (W, whole, b), shape in zip(dense_layers, self.pieces(self.params), self._shapes):
            give_params(layer, W=whole if whole is not None else _store(layer.W, W, shape, self.dtype), b=b)
        if applied == 0:  # no step taken: the optimizer state stays as it was (maybe absent)
            return
        state = opt.state
        for slot, flat in zip(opt.rule.slots, (self.S1, self.S2)):
            for (key_W, key_b), (W, whole, b), shape in zip(self._keys, self.pieces(flat), self._shapes):
                entry = state.setdefault(key_W, {})
                entry[slot] = whole if whole is not None else _store(entry.get(slot), W, shape, self.dtype)
                state.setdefault(key_b, {})[slot] = b
        if opt.counts_steps:
            opt.t += applied


#: An optimizer state entry not there yet
_NONE: dict = {}


def _put(parts, whole, value):
    """``value`` (a parameter, or an optimizer state array; None: zeros) into its pieces of a buffer,
    unless it is the whole view of them already (``copy_out`` handed it out)."""
    if value is None or value is not whole:
        for view, cols in parts:
            view[...] = 0 if value is None else value[:, cols]


def _whole(parts):
    """The one view that holds a whole parameter (not in the threads' column blocks, no padding
    inside it: C-contiguous, as every array the layers hold), or None."""
    if len(parts) != 1:
        return None
    view, _ = parts[0]
    return view if view.flags.c_contiguous else None


def _store(target, parts, shape, dtype):
    """``target`` (in place when it is a writeable array of that shape) filled from the pieces."""
    if not (isinstance(target, np.ndarray) and target.shape == shape and target.dtype == dtype
            and target.flags.writeable):
        target = np.empty(shape, dtype=dtype)
    for view, cols in parts:
        target[..., cols] = view
    return target


def aligned(n, dtype):
    """A zeroed 1-D array of n elements starting on a 64-byte boundary."""
    raw = np.zeros(n + 64 // np.dtype(dtype).itemsize, dtype=dtype)
    skip = (-raw.ctypes.data % 64) // raw.itemsize
    return raw[skip: skip + n]


