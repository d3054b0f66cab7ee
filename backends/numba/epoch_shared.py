"""The compiled epoch's steps for a data-parallel fit (``fastnn.distributed``): gradients, then a sum
over the processes, then the step.

The whole-epoch kernel fuses every gradient into its update, so no process could add another's
in. Here it runs one batch per call under the rule ``OPT_GRADIENT``, which stores the gradient of
this process's share of the global batch in a flat buffer of the caller's instead (the rows scaled
by the *global* batch's count or weight); the caller sums that buffer over the processes
(``fastnn.mpi_sum``), and ``apply_gradient`` takes the model's own rule's step from the sum.
Returning to Python at each batch costs ~26 µs (on one thread; with more, their start and join
too); an MPI call from inside the kernel would need an MPI binding of our own in compiled code
(numba-mpi takes no float32), and the kernel would still need the gradient buffer.

Ranks on one machine need no MPI between batches: ``ranks_epoch`` runs a whole epoch per call, the
gradient slots, the parameters and a spin barrier's counts in memory they share
(``fastnn.mpi_sum``'s window); each rank sums its share of the columns over every slot and steps
that share of the parameters (network B, 2 ranks at 64 rows: 0.21 s an epoch against 0.25 s
returning to Python per batch).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fastnn.notices import waiting

from . import cache as numba_cache
from . import epoch_codegen as codegen
from . import epoch_ops
from .epoch import LONG_WAIT_CYCLES, _join, _read_only
from .epoch_layout import aligned

#: A barrier wait that never counts as long: the threads of a rank do not hand the epoch to one
#: thread mid-batch (the caller caps ranks x threads at the cores).
NEVER = np.iinfo(np.int64).max


class DataParallelSteps:
    """``begin_epoch()``, then per global batch ``gradients(..., into)``, the sum of ``into`` over
    the processes, ``step(summed)``; ``end_epoch()`` gives the model its parameters back. The
    buffers are the caller's: flat, C-contiguous, of the model's dtype, at least ``size`` values
    (the gradient; any beyond are the caller's, e.g. flags summed with it)."""

    def __init__(self, trainer, X, T, labels, weights: NDArray[Any] | None, batch_size: int,
                 threads: int) -> None:
        self.trainer, self.kern = trainer, codegen.load()
        self.X, self.T, self.labels, _, self.staged = trainer._checked(
            X, T, labels, np.arange(X.shape[0], dtype=np.int64))
        self.wts = _read_only(np.ascontiguousarray(weights if weights is not None else (), dtype=np.float64))
        self.n, self.bs = X.shape[0], int(batch_size)
        self.P = max(1, min(int(threads), trainer._threads_for(self.bs, self.n)))
        self.steps = 0
        trainer._start(self.kern, self.n, self.bs, self.P)  # the layout: its size makes the buffers here
        self.size, self.dtype = trainer.layout.params.shape[0], np.dtype(trainer.dtype)
        self._none = aligned(1, trainer.dtype)
        self._h = aligned(self.P * epoch_ops.H_WIDTH, np.float64).reshape(self.P, epoch_ops.H_WIDTH)
        self._ranks: tuple[Any, ...] | None = None  # what join_ranks set up for ranks_epoch

    def begin_epoch(self) -> None:
        """The model's parameters, optimizer state and this epoch's Dropout masks into the buffers."""
        t, kern = self.trainer, self.kern
        t._start(kern, self.n, self.bs, self.P)  # the same layout: (n, bs, P) do not change
        layout = t.layout
        layout.lay[kern.H_OPT], layout.lay[kern.H_LONG] = kern.OPT_GRADIENT, NEVER
        self._h[:] = 0
        self._h[:, kern.HY_KIND] = kern.OPT_GRADIENT
        self.steps = 0

    def gradients(self, rows: NDArray[Any], global_rows: int, global_weight: float,
                  wscale: float, into: NDArray[Any]) -> tuple[float, int, bool]:
        """The gradient of ``rows`` (this process's share of a global batch of ``global_rows`` rows
        weighing ``global_weight``; ``wscale`` > 0: the weighted mean, each row counted wᵢ·wscale
        times) into ``into[:size]``: ``(loss sum, correct, loss not finite)`` of these rows.
        A global batch weighing zero: accuracy only, the gradient zero (no step follows)."""
        kern, buf = self.kern, self.trainer.layout
        grad = self._gradient_of(into)
        if len(rows) == 0 or global_weight == 0:  # (the kernel writes every element of a batch's gradient)
            grad[:] = 0
        if len(rows) == 0:  # a short last batch left this process none: zeros, and it joins the sum
            return 0.0, 0, False
        X, T, labels, order, ids, wts = self._rows(np.asarray(rows, dtype=np.int64))
        R = order.shape[0]
        buf.set_rows(R)
        self._h[:, kern.HY_DEN], self._h[:, kern.HY_WEIGHT], self._h[:, kern.HY_WSCALE] = \
            global_rows, global_weight, wscale
        if self.P > 1:
            loss, hits, bad, _, _, _ = self.trainer._run_threads(
                kern, (X.reshape(-1), T.reshape(-1), labels, order, ids, wts), R, [(0, 1)], self.P,
                state=(grad, self._none, self._h))
        else:  # one thread: the kernel called here, without the threads' set-up (every batch)
            kern.epoch(X.reshape(-1), T.reshape(-1), labels, order, ids, wts, 0, 1, R, buf.params, grad,
                       self._none, buf.work, buf.iwork, buf.lay, self._h[0], buf.sync, buf.out[0], 0, 1)
            out = buf.out[0]
            loss, hits, bad = out[kern.OUT_LOSS], out[kern.OUT_CORRECT], out[kern.OUT_BAD]
        return float(loss), int(hits), bad >= 0

    def step(self, summed: NDArray[Any]) -> None:
        """One step of the model's optimizer from the gradient summed over the processes,
        ``summed[:size]``."""
        layout = self.trainer.layout
        self.kern.apply_gradient(layout.params, layout.S1, layout.S2, self._gradient_of(summed), layout.lay,
                                 layout.h[0])
        self.steps += 1

    @property
    def whole_epochs(self) -> bool:
        """Whether :meth:`ranks_epoch` can run this fit's epochs: one thread, and X passed whole (a
        staged X is gathered and converted in Python, batch by batch)."""
        return self.P == 1 and not self.staged

    def ranks_ready(self) -> bool:
        """Whether :meth:`ranks_epoch` starts without a compile: its kernel is built in this process or
        in the disk cache; or compiling was not to be deferred (``FASTNN_DEFER_COMPILE=0``: it then
        compiles at its first call, saying so)."""
        name = self.dtype.name
        return (name in _ranks_built or numba_cache.is_cached(numba_cache.RANKS, name)
                or not self.trainer.net.backend.defer_compile)

    def ranks_later(self) -> bool:
        """Start compiling :meth:`ranks_epoch`'s kernel in the background, for the next run (once per
        machine: ~11 s, longer than most fits would gain); True when a compile was started."""
        return numba_cache.start_background(self.dtype.name, (numba_cache.RANKS,))

    def state(self) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
        """The flat parameters and the two optimizer slots the steps hold between
        :meth:`begin_epoch` and :meth:`end_epoch` (the slots one value long where the rule has none)."""
        layout = self.trainer.layout
        return layout.params, layout.S1, layout.S2

    def join_ranks(self, slots: NDArray[Any], stride: int, shared: tuple[NDArray[Any], NDArray[Any], NDArray[Any]],
                   sync: NDArray[Any], rank: int, ranks: int) -> None:
        """Make :meth:`ranks_epoch` run as rank ``rank`` of ``ranks`` on one machine, on ``shared``
        (parameters and optimizer slots: the model's state goes there before each epoch), ``slots``
        (rank k's gradient at ``k × stride``) and ``sync`` (zero), all in memory the ranks share; the
        buffers checked and the kernel compiled (told, on rank 0) or loaded here, so that nothing of
        an epoch can fail on one rank alone while the others wait at its barriers. Needs
        :attr:`whole_epochs`."""
        if not self.whole_epochs:
            raise RuntimeError("data-parallel steps: a whole epoch per call needs one thread and X passed whole")
        if not (0 <= rank < ranks and stride >= self.size):
            raise ValueError(f"data-parallel steps: rank {rank} of {ranks} ranks, slots {stride} apart: needs "
                             f"0 <= rank < ranks and slots at least {self.size} values apart")
        params, S1, S2 = (self._checked_flat(a, len(own), "shared state") for a, own in zip(shared, self.state()))
        slots = self._checked_flat(slots, (ranks - 1) * stride + self.size, "slots buffer")
        if not (isinstance(sync, np.ndarray) and sync.dtype == np.int64 and sync.ndim == 1
                and sync.shape[0] >= 8 * (ranks + 2) and sync.flags.c_contiguous and sync.flags.writeable):
            raise ValueError(f"data-parallel steps: sync must be a writable, C-contiguous 1-D int64 array of at "
                             f"least {8 * (ranks + 2)} values")
        if self.dtype.name not in _ranks_built:  # (loaded from the cache: silent; a compile: said, on rank 0)
            told = waiting(f"numba: compiling the data-parallel epoch for {self.dtype.name} (once per machine, "
                           f"about {numba_cache.RANKS_COMPILE_SECONDS:.0f} s)...") if rank == 0 \
                else contextlib.nullcontext()
            with told:
                warmup_ranks((self.dtype.name,))
        # (everything an epoch passes but the order, made here: nothing to fail between the ranks' meeting
        # and the kernel)
        self._ranks = (self.X.reshape(-1), self.T.reshape(-1), self.trainer._ids_for(self.n), params, S1, S2, slots,
                       int(stride), sync, int(rank), int(ranks))

    def leave_ranks(self) -> None:
        """Drop what :meth:`join_ranks` kept (views of memory the ranks shared, freed after the fit)."""
        self._ranks = None

    def ranks_epoch(self, order: NDArray[Any]) -> tuple[float, int, int]:
        """A whole epoch of ``order`` as :meth:`join_ranks` set it up, every rank calling this at once
        (the kernel ``ranks_epoch``: its barriers wait for them all). Returns ``(loss sum, correct,
        bad)`` of this rank's rows: ``bad`` ≥ 0, the global batch whose loss was NaN/inf on some rank
        (none of it applied), else -1."""
        if self._ranks is None:
            raise RuntimeError("data-parallel steps: ranks_epoch before join_ranks")
        X, T, ids, params, S1, S2, slots, stride, sync, rank, ranks = self._ranks
        kern, buf = self.kern, self.trainer.layout
        out = buf.out[0]
        out[kern.OUT_STATUS] = kern.STATUS_ABORTED  # (what a kernel that never ran would leave)
        args = (X, T, self.labels, _read_only(np.ascontiguousarray(order, dtype=np.int64)), ids, self.wts, self.bs,
                self.size, params, S1, S2, slots, stride, self._none, buf.work, buf.iwork, buf.lay, self._h[0],
                buf.h[0], buf.sync, out, sync, rank, ranks)
        # in a thread: Ctrl-C reaches Python while the epoch runs, and its abort flag in the shared sync
        # stops every rank's kernel at its next barrier (re-raised here: the epoch is not taken)
        worker = threading.Thread(target=kern.ranks_epoch, args=args, name="fastnn-ranks-epoch", daemon=True)
        worker.start()
        _join([worker], sync, ranks)
        if out[kern.OUT_STATUS] == kern.STATUS_ABORTED:
            raise KeyboardInterrupt("fit over MPI: the epoch was interrupted (Ctrl-C on some rank)")
        self.steps += int(out[kern.OUT_APPLIED])
        return float(out[kern.OUT_LOSS]), int(out[kern.OUT_CORRECT]), int(out[kern.OUT_BAD])

    def _gradient_of(self, buffer):
        """``buffer[:size]``, checked: the kernel writes and reads it as this model's flat gradient."""
        return self._checked_flat(buffer, self.size, "gradient buffer")[:self.size]

    def _checked_flat(self, buffer, size, what):
        """``buffer``, checked: the kernel reads and writes its first ``size`` values as a flat buffer."""
        if not (isinstance(buffer, np.ndarray) and buffer.ndim == 1 and buffer.dtype == self.dtype
                and buffer.shape[0] >= size and buffer.flags.c_contiguous and buffer.flags.writeable):
            raise ValueError(f"data-parallel steps: the {what} must be a writable, C-contiguous 1-D "
                             f"{self.dtype} array of at least {size} values, not {type(buffer).__name__} "
                             f"{getattr(buffer, 'dtype', '')} {getattr(buffer, 'shape', '')}")
        return buffer

    def end_epoch(self) -> None:
        """The parameters and optimizer state back to the model."""
        t, kern = self.trainer, self.kern
        t.layout.lay[kern.H_OPT], t.layout.lay[kern.H_LONG] = t.optimizer.rule.code, LONG_WAIT_CYCLES
        t.layout.copy_out(t.net.dense_layers, t.optimizer, self.steps)

    def _rows(self, rows):
        """``(X, T, labels, order, ids, weights)`` for the kernel: the whole set indexed by ``rows``,
        or, staged, these rows gathered and converted to the model's dtype (and scaled)."""
        if not self.staged:
            return self.X, self.T, self.labels, _read_only(rows), self.trainer._ids_for(self.n), self.wts
        return self.trainer._staged(self.X, self.T, self.labels, self.wts, rows)



def warmup(dtypes=("float32", "float64")) -> None:
    """Compile (or load from the disk cache) the whole-epoch kernels and ``apply_gradient``."""
    from .epoch import warmup as epoch_warmup
    epoch_warmup(dtypes)
    kern = codegen.load()
    lay = np.zeros(kern.REC0 + kern.REC + 1, dtype=np.int64)
    lay[kern.H_L] = 1  # one layer of width 0: nothing to step
    for dtype in dtypes:
        flat = np.zeros(1, dtype=dtype)
        kern.apply_gradient(flat, flat, flat, flat, lay, np.zeros(epoch_ops.H_WIDTH))


#: dtypes whose ``ranks_epoch`` this process has compiled or loaded
_ranks_built: set[str] = set()


def warmup_ranks(dtypes=("float32", "float64")) -> None:
    """Compile (or load from the disk cache) ``ranks_epoch``, the whole epoch of the ranks of one
    machine, and record it as cached: apart from ``warmup`` (only an MPI fit needs it, and its
    compile, which links and so optimizes the whole epoch again, takes as long as the epoch's own)."""
    kern = codegen.load()
    lay = np.zeros(kern.REC0 + kern.REC + 1, dtype=np.int64)
    lay[kern.H_L] = 1
    for dtype in dtypes:
        flat = np.zeros(1, dtype=dtype)
        data, ints, h = _read_only(flat), np.zeros(1, dtype=np.int64), np.zeros(epoch_ops.H_WIDTH)
        rows, no_rows = _read_only(ints), _read_only(ints[:0])  # (an empty order: no batch to run)
        kern.ranks_epoch(data, data, rows, no_rows, rows, _read_only(np.zeros(0)), 1, 0, flat, flat, flat, flat, 0,
                         flat, flat, ints, lay, h, h, ints, np.zeros(8), ints, 0, 1)
        _ranks_built.add(np.dtype(dtype).name)
        numba_cache.mark_cached(numba_cache.RANKS, np.dtype(dtype).name)
