"""The numba backend: the hot ops of the contract as compiled, fused kernels.

>>> import fastnn
>>> be = fastnn.get_backend("numba", num_threads=2)        # or NUMBA_NUM_THREADS=2
>>> net = fastnn.Sequential(fastnn.Dense(784, 30), fastnn.Sigmoid(),
...                         fastnn.Dense(30, 10), fastnn.Sigmoid(), backend=be, seed=0)
>>> net.fit(X, y, epochs=1, batch_size=10, loss="mse", lr=3.0)

Arrays are plain NumPy arrays (``xp`` is NumPy's namespace, as on the numpy backend), so results
compare directly with the reference. Matrix products go where they are fastest: register-blocked
kernels where a dimension is a small batch (BLAS is poor there), NumPy's own BLAS call for large
plain products, and SciPy's sgemm/dgemm when ``alpha``/``beta``/``C`` fold a scaled update into
the product. Bias + activation, activation backward, the losses and the optimizer steps are fused
into one pass each (``fused_ops``). Whatever a kernel does not cover (other dtypes, mixed dtypes,
non-contiguous arrays, empty batches) runs the reference.

Threads: ``num_threads`` (default ``NUMBA_NUM_THREADS``) bounds numba's threads and BLAS's;
only one of the two pools works at a time (``blas_threads``).
"""
from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fastnn.backend import Array
from fastnn.notices import waiting

from . import blas_threads, threads
from . import cache as numba_cache
from .blas_threads import _BlasCap, _blas_info
from .deferral import defer_by_default, reference_path
from .fused_ops import FusedOps
from .operands import FLOAT32, FLOAT64, gemm_operands
from .warm import reference_seconds, warm_layers

if TYPE_CHECKING:
    from fastnn.losses import Loss
    from fastnn.model import Sequential
    from fastnn.optim import Optimizer
    from fastnn.trainer import Trainer


#: X @ W goes to the register tiles when the batch (M) is at most this and the product has at
#: least TILE_MIN_WORK multiply-adds (below, NumPy's smaller call overhead wins). Xᵀ @ dZ, dZ @ Wᵀ
#: and larger batches go to BLAS. The tiles need AVX-512's 32 vector registers: with AVX2's 16
#: every product goes to BLAS (``_tile_batch_max`` is 0).
TILE_BATCH_MAX = 32
TILE_VECTOR_BITS = 512
TILE_MIN_WORK = 50_000
#: Multiply-adds from which a tile product is shared between threads.
PARALLEL_MIN_WORK = 400_000

_kernels: Any = None  # kernels.py, imported when a backend first runs a kernel (it imports numba)


def _load_kernels():
    """kernels.py, imported once (which compiles or loads none of its kernels yet)."""
    global _kernels
    if _kernels is None:
        from . import kernels
        _kernels = kernels
    return _kernels


class NumbaBackend(FusedOps):
    """Compiled kernels on NumPy arrays; ``NumbaBackend(num_threads=None, compiled=True,
    defer_compile=None)``.

    ``num_threads``: how many threads the kernels (and BLAS) may use, from 1 to
    ``NUMBA_NUM_THREADS`` (the default). ``compiled=False`` turns off the
    compiled whole-epoch trainer, so ``fit`` runs layer by layer.

    The kernels compile once per machine (10-15 s per part on 2 cores) and load from
    the disk cache afterwards. ``defer_compile`` (default: on; ``FASTNN_DEFER_COMPILE=0``
    turns it off) decides what a job does while they are not compiled yet: a ``fit``
    shorter than the compile trains at once on the NumPy reference ops while a background
    process compiles them for the next run (``fastnn.backends.numba.cache``); a longer one
    compiles first, and ``verbose=1`` says so; ops outside ``fit`` take the reference until
    the kernels are there. Off: every op compiles on first use, as plain numba does.
    """

    name = "numba"

    @staticmethod
    def unavailable_reason() -> str | None:
        missing = [name for name in ("numba", "scipy") if importlib.util.find_spec(name) is None]
        if missing:
            return f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed"
        return None

    def __init__(self, num_threads: int | None = None, compiled: bool = True, defer_compile: bool | None = None) -> None:
        super().__init__()
        self.max_threads = threads.max_threads()  # without importing numba: a deferred job never needs it
        self.num_threads = threads.checked_num_threads(self.max_threads if num_threads is None else num_threads,
                                                       self.max_threads)
        self.compiled = bool(compiled)
        self.defer_compile = defer_by_default() if defer_compile is None else bool(defer_compile)
        #: dtypes whose kernels run now (see kernel_op): all, unless compiling is deferred
        self._kernel_dtypes = set()
        self._tile_batch_max = 0
        if not self.defer_compile:
            self._use_kernels(FLOAT32, FLOAT64)
        self._refresh_kernel_dtypes()
        self._cap_blas()
        blas_threads.track(self)
        self._blas_threaded = self._one_blas_thread.active  # BLAS runs a pool of its own: no prange beside it
        numba_cache.warn_if_uncached(stacklevel=4)  # no writable cache: once per process, why and what to do

    def __repr__(self) -> str:
        return f"<fastnn backend 'numba' num_threads={self.num_threads} compiled={self.compiled}>"

    def scope(self, net: Sequential | None = None) -> contextlib.AbstractContextManager[Any]:
        """While ``net``'s dtype runs on the reference ops (its kernels not compiled yet), BLAS on
        one thread: the other core compiles them meanwhile, and BLAS's threads over a busy core
        made a small-batch epoch several times slower. Once per fit/predict call: around every
        product, threadpoolctl's switch cost 15%."""
        if net is not None and np.dtype(net.dtype) not in self._kernel_dtypes:
            return self._one_blas_thread
        return contextlib.nullcontext()

    def _cap_blas(self):
        """BLAS's caps, at ``num_threads`` and at one thread; taken again once SciPy's BLAS loads."""
        self._blas_cap, self._one_blas_thread = _BlasCap(self.num_threads), _BlasCap(1)

    def _use_kernels(self, *dtypes):
        """From now on the ops of ``dtypes`` run their kernels."""
        if not self._kernel_dtypes:
            self._tile_batch_max = TILE_BATCH_MAX if _load_kernels().VECTOR_BITS >= TILE_VECTOR_BITS else 0
        self._kernel_dtypes.update(dtypes)

    @property
    def _kernel_module(self) -> Any:
        """kernels.py, through the one handle on it (``_kernels``; tests swap in a recorder there)."""
        return _kernels

    def _refresh_kernel_dtypes(self):
        """Add the dtypes whose layer kernels another process has put in the disk cache since."""
        for dtype in (FLOAT32, FLOAT64):
            if dtype not in self._kernel_dtypes and numba_cache.is_cached("layers", dtype.name):
                self._use_kernels(dtype)

    # ---- dense algebra -------------------------------------------------
    def gemm(self, A: Array, B: Array, trans_a: bool = False, trans_b: bool = False, alpha: float = 1.0,
             beta: float = 0.0, C: Array | None = None) -> Array:
        if getattr(A, "dtype", None) not in self._kernel_dtypes:
            return super().gemm(A, B, trans_a, trans_b, alpha, beta, C)  # see kernel_op and scope
        if (C is None and alpha == 1.0 and type(A) is np.ndarray and type(B) is np.ndarray
                and (A.dtype is FLOAT32 or A.dtype is FLOAT64) and B.dtype is A.dtype
                and A.ndim == 2 and B.ndim == 2 and not self._blas_cap.active
                and (trans_a or trans_b or A.shape[0] > self._tile_batch_max)):
            # the common plain product on BLAS, with as little Python around it as possible:
            # exactly NumPy's call (any strides; a shape mismatch raises NumPy's error, as
            # the reference does)
            return (A.T if trans_a else A) @ (B.T if trans_b else B)
        operands = gemm_operands(A, B, trans_a, trans_b, C)
        if operands is None:
            return super().gemm(A, B, trans_a, trans_b, alpha, beta, C)
        A, trans_a, B, trans_b, M, N, P = operands
        work = M * N * P
        if M <= self._tile_batch_max and work >= TILE_MIN_WORK and not trans_a and not trans_b:
            # X @ W of a small batch: the register tiles beat BLAS there
            if C is None:
                C, beta = np.empty((M, N), A.dtype), 0.0
            if self.num_threads > 1 and work >= PARALLEL_MIN_WORK and not self._blas_threaded:
                threads.use_threads(self.num_threads)
                _kernels.gemm_tiles_parallel(A.reshape(-1), B.reshape(-1), C.reshape(-1), M, N, P, float(alpha),
                                             float(beta), self.num_threads)
            else:
                _kernels.gemm_tiles(A.reshape(-1), B.reshape(-1), C.reshape(-1), M, N, P, float(alpha), float(beta),
                                    0, -1)
            return C
        cap = self._blas_cap
        if C is None and alpha == 1.0:
            # a plain product: exactly the BLAS call NumPy makes (and nothing around it)
            if not cap.active:
                return (A.T if trans_a else A) @ (B.T if trans_b else B)
            with cap:
                return (A.T if trans_a else A) @ (B.T if trans_b else B)
        # alpha/beta fold the scaled update into one sgemm: no temporary
        if C is None:
            C, beta = np.empty((M, N), A.dtype), 0.0
        dtype = A.dtype.type
        if _kernels.ensure_blas():
            blas_threads.recap_all()
            cap = self._blas_cap
        with cap:
            _kernels.blas_gemm(A, trans_a, B, trans_b, C, dtype(alpha), dtype(beta))
        return C

    # ---- whole-epoch training ------------------------------------------
    def epoch_trainer(self, net: Sequential, loss: Loss, optimizer: Optimizer) -> Trainer | None:
        """The compiled whole-epoch trainer where the model allows it, else None (layer by layer)."""
        if not self.compiled:
            return None
        from .epoch import make_epoch_trainer
        return make_epoch_trainer(self, net, loss, optimizer)

    def layer_path_reason(self, net: Sequential, loss: Loss, optimizer: Optimizer) -> str | None:
        if not self.compiled:
            return "compiled=False"
        from .epoch import unsupported_reason
        reason = unsupported_reason(net, loss, optimizer)
        return reason and f"no compiled epoch for it: {reason}"

    def training_plan(self, net: Sequential, loss: Loss, optimizer: Optimizer, rows: int, epochs: int,
                      batch_size: int) -> tuple[Trainer | None, str]:
        """Compile only where it pays: a job whose kernels are not compiled on this machine yet,
        and that the reference ops finish sooner than the compile, trains on them at once while a
        background process compiles for the next run; a longer job compiles first, saying so."""
        dtype = np.dtype(net.dtype)
        self._refresh_kernel_dtypes()
        job_s, compile_s = reference_seconds(net, rows, epochs, batch_size), numba_cache.COMPILE_SECONDS
        if job_s < min(compile_s.values()) and self._nothing_ready(dtype):
            # shorter than compiling either part: which one it needs (the epoch module's answer, which
            # imports numba) changes nothing, and this process never needs numba
            span = f"about {min(compile_s.values()):.0f}-{max(compile_s.values()):.0f} s"
            return None, reference_path(dtype.name, span, cacheable=True)
        part = "layers" if self.layer_path_reason(net, loss, optimizer) else "epoch"
        what = "whole-epoch kernels" if part == "epoch" else "layer-by-layer kernels"
        cacheable = numba_cache.cacheable(part)
        if not self._must_compile(part, dtype):
            # loads in milliseconds from the cache; told only if it turns into a compile after all
            # (a cache numba no longer trusts: a reinstall, another CPU; or deferring turned off)
            why = "numba's cache did not have them; once" if cacheable else "no writable cache: in every process"
            with waiting(f"numba: compiling the {what} for {dtype.name} ({why}, about {compile_s[part]:.0f} s)...",
                         after=1.5):
                return super().training_plan(net, loss, optimizer, rows, epochs, batch_size)
        if job_s < compile_s[part]:
            return None, reference_path(dtype.name, f"about {compile_s[part]:.0f} s", cacheable)
        when = ("once, about {:.0f} s; later runs load them from the cache" if cacheable
                else "about {:.0f} s; with no writable cache, every process compiles them again")
        with waiting(f"numba: compiling the {what} for {dtype.name} on this machine ({when.format(compile_s[part])})..."):
            if part == "layers":
                self.warm("layers", dtype.name)
            plan = super().training_plan(net, loss, optimizer, rows, epochs, batch_size)
        numba_cache.start_background(dtype.name)  # the part this job did not need, for predict and later runs
        return plan

    def _nothing_ready(self, dtype):
        """True when every part of ``dtype`` would compile now and the cache could keep both: all a
        job shorter than either compile needs to know to train on the reference ops, asked without numba."""
        return all(numba_cache.cacheable(part) and self._must_compile(part, dtype) for part in numba_cache.PARTS)

    def _must_compile(self, part, dtype):
        """True when ``part`` would compile now (not deferred, not cached, not loaded in this process);
        asked without importing numba."""
        if not self.defer_compile or numba_cache.is_cached(part, dtype.name):
            return False
        if part == "layers":
            return dtype not in self._kernel_dtypes
        epoch = sys.modules.get(f"{__package__}.epoch")  # never imported: it built nothing
        return epoch is None or not epoch.is_built(dtype.name)

    def warm(self, part: str, dtype: str) -> float:
        """Compile (or load from the disk cache) one part of the kernels, ``"epoch"``, ``"layers"``
        or ``"ranks"`` (``cache.RANKS``), for ``dtype``, and record it as cached; returns the seconds it took."""
        started = time.perf_counter()
        if part == "epoch":
            from .epoch_shared import warmup as epoch_warmup  # the data-parallel step too (MPI)
            epoch_warmup((dtype,))  # marks the part as cached itself (fit builds through it too)
        elif part == numba_cache.RANKS:
            from .epoch_shared import warmup_ranks
            warmup_ranks((dtype,))  # (marks it cached itself)
        else:
            warm_layers(self, np.dtype(dtype), _load_kernels())
            self._use_kernels(np.dtype(dtype))
            numba_cache.mark_cached(part, dtype)
        return time.perf_counter() - started

    def warmup(self, dtypes: Sequence[str] = ("float32", "float64")) -> dict[str, float]:
        """Compile now (or load from numba's disk cache) what ``fit`` runs, so the first
        ``fit`` of a process starts at once: the compiled-epoch kernels and the layer-path
        kernels of every activation and loss. Returns ``{"epoch": s, "layers": s}``."""
        return {part: sum(self.warm(part, str(dtype)) for dtype in dtypes) for part in numba_cache.PARTS}

    def info(self) -> dict[str, Any]:
        import numba

        return {"numba": numba.__version__, "threading_layer": threads.threading_layer(),
                "num_threads": self.num_threads, "max_threads (NUMBA_NUM_THREADS)": self.max_threads,
                "compiled_epoch": self.compiled, "disk_cache": numba_cache.uncached_reason() or numba_cache.folder(),
                "blas": _blas_info()}

