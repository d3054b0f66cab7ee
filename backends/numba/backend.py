"""The numba backend: the hot ops of the contract as compiled, fused kernels.

>>> import fastnn
>>> be = fastnn.get_backend("numba", num_threads=2)        # or NUMBA_NUM_THREADS=2
>>> net = fastnn.Sequential(fastnn.Dense(784, 30), fastnn.Sigmoid(),
...                         fastnn.Dense(30, 10), fastnn.Sigmoid(), backend=be, seed=0)
>>> net.fit(X, y, epochs=1, batch_size=10, loss="mse", lr=3.0)

Arrays are plain NumPy arrays (``xp`` is NumPy's namespace, as on the
numpy backend), so results compare directly with the reference. Matrix products
go where they are fastest: register-blocked kernels where a dimension is a small
batch (BLAS is poor there), NumPy's own BLAS call for large plain products, and
SciPy's sgemm/dgemm when ``alpha``/``beta``/``C`` fold a scaled update into the
product. Bias + activation, activation backward, the losses and the optimizer
steps are fused into one pass each. Whatever a kernel does not cover (other
dtypes, mixed dtypes, non-contiguous arrays, empty batches) runs the reference.

Threads: ``num_threads`` (default ``NUMBA_NUM_THREADS``) bounds numba's threads
and BLAS's (capped at ``num_threads`` too). Only one of the two pools ever works:
the register tiles of a small batch share their work between numba's threads
(``prange``) only when BLAS runs a single thread (``OPENBLAS_NUM_THREADS=1``,
``threadpoolctl``), else they run on the calling thread. A training step
interleaves the tiles with BLAS calls, and the idle threads of each pool spin
for a while after their work: two pools over the same two cores made a step
40x slower.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
from numpy.typing import NDArray

from fastnn.backend import Array, Backend, _check_act
from fastnn.notices import waiting

from . import cache as numba_cache
from . import layer_ops
from .blas_threads import _BlasCap, _blas_info
from .warm import reference_seconds, warm_layers

if TYPE_CHECKING:
    from fastnn.losses import Loss
    from fastnn.model import Sequential
    from fastnn.ops.optimizers import UpdateRule
    from fastnn.optim import Optimizer
    from fastnn.trainer import Trainer

#: The dtypes the kernels take. Compared by identity (NumPy's native float dtypes are
#: singletons): fast, and an unusual equal dtype (byte-swapped, ...) just takes the reference.
_FLOAT32, _FLOAT64 = np.dtype(np.float32), np.dtype(np.float64)
_NO_PARAMS = np.zeros(layer_ops.N_PARAMS)  # the settings of an activation that takes none
#: X @ W goes to the register tiles when the batch (M) is at most this and the
#: product has at least TILE_MIN_WORK multiply-adds (below, call overhead decides,
#: and NumPy's is smaller). Xᵀ @ dZ, dZ @ Wᵀ and larger batches go to BLAS:
#: measured, tiles did not beat it there. The tiles need AVX-512's 32 vector registers:
#: with AVX2's 16 (Zen 3) they ran 2x slower than OpenBLAS at 10x784x128, so there every
#: product goes to BLAS (``NumbaBackend._tile_batch_max`` is 0).
TILE_BATCH_MAX = 32
TILE_VECTOR_BITS = 512
TILE_MIN_WORK = 50_000
#: Multiply-adds from which a tile product is shared between threads.
PARALLEL_MIN_WORK = 400_000

_live: weakref.WeakSet[NumbaBackend] = weakref.WeakSet()  # every NumbaBackend made, for _recap_blas
_kernels: Any = None  # backends/numba/kernels.py, imported by the first NumbaBackend


def _usable(X, ndim):
    """True when a kernel can take X as it is: a non-empty C-contiguous float32/64 ndarray."""
    return (type(X) is np.ndarray and X.ndim == ndim and (X.dtype is _FLOAT32 or X.dtype is _FLOAT64)
            and X.flags.c_contiguous and X.size > 0)


def _gemm_operands(A, B, trans_a, trans_b, C):
    """``(A, trans_a, B, trans_b, M, N, P)`` for the fast paths, or None for the reference.

    A transposed (F-contiguous) operand is read as the C-contiguous array it views,
    with its flag flipped. Written for speed: this runs before every product.
    """
    if type(A) is not np.ndarray or type(B) is not np.ndarray:
        return None
    dtype = A.dtype
    if (dtype is not _FLOAT32 and dtype is not _FLOAT64) or B.dtype is not dtype or A.ndim != 2 or B.ndim != 2:
        return None
    if not A.flags.c_contiguous:
        if not A.flags.f_contiguous:
            return None
        A, trans_a = A.T, not trans_a
    if not B.flags.c_contiguous:
        if not B.flags.f_contiguous:
            return None
        B, trans_b = B.T, not trans_b
    if trans_a:
        P, M = A.shape
    else:
        M, P = A.shape
    if trans_b:
        N, P_b = B.shape
    else:
        P_b, N = B.shape
    if P != P_b or not M or not N or not P:
        return None  # the reference raises NumPy's shape error, or handles the empty product
    if C is not None:
        if not (type(C) is np.ndarray and C.dtype is dtype and C.shape == (M, N) and C.flags.c_contiguous):
            return None
        if np.may_share_memory(C, A) or np.may_share_memory(C, B):
            return None
    return A, trans_a, B, trans_b, M, N, P


_Op = TypeVar("_Op", bound=Callable[..., Any])


def _kernel_op(method: _Op) -> _Op:
    """An op that runs its kernels once they are compiled for its dtype, else the reference at once
    (numba would otherwise compile on this call, seconds; see ``NumbaBackend.training_plan``)."""
    name = method.__name__

    @functools.wraps(method)
    def op(self, A, *args, **kwargs):
        if getattr(A, "dtype", None) in self._kernel_dtypes:
            return method(self, A, *args, **kwargs)
        return getattr(Backend, name)(self, A, *args, **kwargs)
    return cast(_Op, op)  # the same signature: typed callers see the op's own


def _env_flag(name, default=True):
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


class NumbaBackend(Backend):
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
        global _kernels
        import numba
        if _kernels is None:
            from . import kernels as _kernels_module
            _kernels = _kernels_module
        self.max_threads = int(numba.config.NUMBA_NUM_THREADS)
        if num_threads is None:
            num_threads = self.max_threads
        if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)) \
                or not 1 <= num_threads <= self.max_threads:
            raise ValueError(f"numba backend: num_threads must be an integer from 1 to {self.max_threads} "
                             f"(NUMBA_NUM_THREADS), got {num_threads!r}")
        self.num_threads = int(num_threads)
        self.compiled = bool(compiled)
        self.defer_compile = _env_flag("FASTNN_DEFER_COMPILE") if defer_compile is None else bool(defer_compile)
        #: dtypes whose layer kernels run now (see _kernel_op): all, unless compiling is deferred
        self._kernel_dtypes = set() if self.defer_compile else {_FLOAT32, _FLOAT64}
        self._refresh_kernel_dtypes()
        self._tile_batch_max = TILE_BATCH_MAX if _kernels.VECTOR_BITS >= TILE_VECTOR_BITS else 0
        self._blas_cap = _BlasCap(self.num_threads)
        self._one_blas_thread = _BlasCap(1)
        _live.add(self)
        self._blas_threaded = self._one_blas_thread.active  # BLAS runs a pool of its own: no prange beside it
        numba_cache.warn_if_uncached(stacklevel=4)  # no writable cache: once per process, why and what to do

    def __repr__(self) -> str:
        return f"<fastnn backend 'numba' num_threads={self.num_threads} compiled={self.compiled}>"

    def scope(self, net: Sequential | None = None) -> contextlib.AbstractContextManager[Any]:
        """While ``net``'s dtype runs on the reference ops (its kernels not compiled yet), BLAS on
        one thread: the other core compiles them meanwhile, and BLAS's threads over a busy core
        made a small-batch epoch several times slower (784-100-10 at batch 16: 0.55 s vs 0.08 s).
        Once per fit/predict call: around every product, threadpoolctl's switch cost 15%."""
        if net is not None and np.dtype(net.dtype) not in self._kernel_dtypes:
            return self._one_blas_thread
        return contextlib.nullcontext()

    def _refresh_kernel_dtypes(self):
        """Add the dtypes whose layer kernels another process has put in the disk cache since."""
        for dtype in (_FLOAT32, _FLOAT64):
            if dtype not in self._kernel_dtypes and numba_cache.is_cached("layers", dtype.name):
                self._kernel_dtypes.add(dtype)

    # ---- dense algebra -------------------------------------------------
    def gemm(self, A: Array, B: Array, trans_a: bool = False, trans_b: bool = False, alpha: float = 1.0,
             beta: float = 0.0, C: Array | None = None) -> Array:
        if getattr(A, "dtype", None) not in self._kernel_dtypes:
            return super().gemm(A, B, trans_a, trans_b, alpha, beta, C)  # see _kernel_op and scope
        if (C is None and alpha == 1.0 and type(A) is np.ndarray and type(B) is np.ndarray
                and (A.dtype is _FLOAT32 or A.dtype is _FLOAT64) and B.dtype is A.dtype
                and A.ndim == 2 and B.ndim == 2 and not self._blas_cap.active
                and (trans_a or trans_b or A.shape[0] > self._tile_batch_max)):
            # the common plain product on BLAS, with as little Python around it as possible:
            # exactly NumPy's call (any strides; a shape mismatch raises NumPy's error, as
            # the reference does)
            return (A.T if trans_a else A) @ (B.T if trans_b else B)
        operands = _gemm_operands(A, B, trans_a, trans_b, C)
        if operands is None:
            return super().gemm(A, B, trans_a, trans_b, alpha, beta, C)
        A, trans_a, B, trans_b, M, N, P = operands
        work = M * N * P
        if M <= self._tile_batch_max and work >= TILE_MIN_WORK and not trans_a and not trans_b:
            # X @ W of a small batch: the register tiles beat BLAS there
            if C is None:
                C, beta = np.empty((M, N), A.dtype), 0.0
            if self.num_threads > 1 and work >= PARALLEL_MIN_WORK and not self._blas_threaded:
                self._set_numba_threads()
                _kernels.gemm_tiles_parallel(A, B, C, float(alpha), float(beta), self.num_threads)
            else:
                _kernels.gemm_tiles(A, B, C, float(alpha), float(beta), 0, -1)
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
            cap = _recap_blas(self)
        with cap:
            _kernels.blas_gemm(A, trans_a, B, trans_b, C, dtype(alpha), dtype(beta))
        return C

    def _set_numba_threads(self):
        import numba
        if numba.get_num_threads() != self.num_threads:
            numba.set_num_threads(self.num_threads)

    @_kernel_op
    def sum_rows(self, X: Array) -> Array:
        if not _usable(X, 2):
            return super().sum_rows(X)
        out = np.empty(X.shape[1], X.dtype)
        _kernels.sum_rows(X, out)
        return out

    # ---- activations (generated from fastnn.ops.activations: layer_ops.py) --
    @_kernel_op
    def bias_act(self, Z: Array, b: Array | None, act: str, params: Sequence[float] = ()) -> Array:
        rule = _check_act(act, params)
        fits = _usable(Z, 2) and (b is None or (_usable(b, 1) and b.dtype is Z.dtype and b.shape[0] == Z.shape[1]))
        if not fits:
            return super().bias_act(Z, b, act, params)
        if b is None and act == "identity":
            return Z  # as the reference: nothing to do
        Y = np.empty_like(Z)
        layer_ops.load().bias_act(Z, Z[0] if b is None else b, b is not None, rule.code, _settings(params), Y)
        return Y

    @_kernel_op
    def act_backward(self, V: Array, dY: Array, act: str, params: Sequence[float] = ()) -> Array:
        rule = _check_act(act, params)
        if act == "identity":
            return dY  # as the reference
        if not (_usable(V, 2) and _usable(dY, 2) and dY.dtype is V.dtype and dY.shape == V.shape):
            return super().act_backward(V, dY, act, params)
        dZ = np.empty_like(V)
        layer_ops.load().act_backward(V, dY, rule.code, _settings(params), dZ)
        return dZ

    # ---- losses --------------------------------------------------------
    def _loss_operands_fit(self, Z, T):
        return _usable(Z, 2) and _usable(T, 2) and T.dtype is Z.dtype and T.shape == Z.shape

    @_kernel_op
    def softmax_xent(self, Z: Array, T: Array) -> tuple[Array, Array]:
        if not self._loss_operands_fit(Z, T):
            return super().softmax_xent(Z, T)
        dZ = np.empty_like(Z)
        loss = _kernels.softmax_xent(Z, T, dZ)
        return Z.dtype.type(loss), dZ

    @_kernel_op
    def sigmoid_xent(self, Z: Array, T: Array) -> tuple[Array, Array]:
        if not self._loss_operands_fit(Z, T):
            return super().sigmoid_xent(Z, T)
        dZ = np.empty_like(Z)
        loss = _kernels.sigmoid_xent(Z, T, dZ)
        return Z.dtype.type(loss), dZ

    # ---- optimizer steps (generated from fastnn.ops.optimizers: layer_ops.py) --
    def update(self, rule: UpdateRule, W: Array, dW: Array, slots: dict[str, Array],
               hyper: Mapping[str, float]) -> tuple[Array, dict[str, Array]]:
        arrays = [slots[name] for name in rule.slots]
        if not (type(W) is np.ndarray and W.dtype in self._kernel_dtypes  # (see _kernel_op: W comes second)
                and _usable(W, W.ndim) and all(_same(W, A) for A in [dW, *arrays])):
            return super().update(rule, W, dW, slots, hyper)
        arrays += [W] * (2 - len(arrays))  # unused slots: never read
        kernel = getattr(layer_ops.load(), f"update_{rule.name}")
        kernel(W.reshape(-1), dW.reshape(-1), arrays[0].reshape(-1), arrays[1].reshape(-1),
               np.array([hyper[name] for name in rule.inputs]))
        return W, slots

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
        part = "layers" if self.layer_path_reason(net, loss, optimizer) else "epoch"
        compile_s = numba_cache.COMPILE_SECONDS[part]
        what = "whole-epoch kernels" if part == "epoch" else "layer-by-layer kernels"
        cacheable = numba_cache.cacheable(part)
        if not self._must_compile(part, dtype):
            # loads in milliseconds from the cache; told only if it turns into a compile after all
            # (a cache numba no longer trusts: a reinstall, another CPU; or deferring turned off)
            # (loading takes up to ~0.7 s in a new process: numba's own start; a compile, 10 s and more)
            why = "numba's cache did not have them; once" if cacheable else "no writable cache: in every process"
            with waiting(f"numba: compiling the {what} for {dtype.name} ({why}, about {compile_s:.0f} s)...",
                         after=1.5):
                return super().training_plan(net, loss, optimizer, rows, epochs, batch_size)
        if reference_seconds(net, rows, epochs, batch_size) < compile_s:
            if not cacheable:
                return None, (f"the NumPy reference ops: numba's kernels are not compiled in this process, this "
                              f"job is shorter than compiling them (about {compile_s:.0f} s), and there is no "
                              f"writable cache to keep them for later runs")
            later = ("they compile in the background for the next run" if numba_cache.start_background(dtype.name)
                     else "they compile when a job is long enough to pay for it")
            return None, (f"the NumPy reference ops: numba's kernels are not compiled on this machine yet, and "
                          f"this job is shorter than compiling them (about {compile_s:.0f} s); {later}")
        when = ("once, about {:.0f} s; later runs load them from the cache" if cacheable
                else "about {:.0f} s; with no writable cache, every process compiles them again")
        with waiting(f"numba: compiling the {what} for {dtype.name} on this machine ({when.format(compile_s)})..."):
            if part == "layers":
                self.warm("layers", dtype.name)
            plan = super().training_plan(net, loss, optimizer, rows, epochs, batch_size)
        numba_cache.start_background(dtype.name)  # the part this job did not need, for predict and later runs
        return plan

    def _must_compile(self, part, dtype):
        """True when ``part`` would compile now (not deferred, not cached, not loaded in this process)."""
        if not self.defer_compile or numba_cache.is_cached(part, dtype.name):
            return False
        if part == "layers":
            return dtype not in self._kernel_dtypes
        from .epoch import is_built
        return not is_built(dtype.name)

    def warm(self, part: str, dtype: str) -> float:
        """Compile (or load from the disk cache) one part of the kernels, ``"epoch"`` or ``"layers"``,
        for ``dtype``, and record it as cached; returns the seconds it took."""
        import time

        started = time.perf_counter()
        if part == "epoch":
            from .epoch import warmup as epoch_warmup
            epoch_warmup((dtype,))  # marks the part as cached itself (fit builds through it too)
        else:
            warm_layers(self, np.dtype(dtype), _kernels)
            self._kernel_dtypes.add(np.dtype(dtype))
            numba_cache.mark_cached(part, dtype)
        return time.perf_counter() - started

    def warmup(self, dtypes: Sequence[str] = ("float32", "float64")) -> dict[str, float]:
        """Compile now (or load from numba's disk cache) what ``fit`` runs, so the first
        ``fit`` of a process starts at once: the compiled-epoch kernels and the layer-path
        kernels of every activation and loss. Returns ``{"epoch": s, "layers": s}``."""
        return {part: sum(self.warm(part, str(dtype)) for dtype in dtypes) for part in numba_cache.PARTS}

    def info(self) -> dict[str, Any]:
        import numba
        try:
            # numba picks its layer (omp, tbb or workqueue) when it first starts its threads; start
            # them to name it: workqueue makes every prange ~85 us (PERF-NOTES), worth seeing
            from numba.np.ufunc.parallel import _launch_threads
            _launch_threads()
            layer = numba.threading_layer()
        except (ImportError, ValueError):  # a numba without that hook: what was configured
            layer = f"{numba.config.THREADING_LAYER} (configured; no parallel kernel run yet)"
        return {"numba": numba.__version__, "threading_layer": layer, "num_threads": self.num_threads,
                "max_threads (NUMBA_NUM_THREADS)": self.max_threads, "compiled_epoch": self.compiled,
                "disk_cache": numba_cache.uncached_reason() or numba_cache.folder(), "blas": _blas_info()}


def _recap_blas(backend):
    """SciPy's BLAS was loaded just now (the first ``blas_gemm``): every live backend's BLAS caps
    are taken again, so that they limit its threads too. Returns ``backend``'s new cap."""
    for other in list(_live):
        other._blas_cap, other._one_blas_thread = _BlasCap(other.num_threads), _BlasCap(1)
    return backend._blas_cap


def _settings(params):
    """An activation's settings as the kernels take them (float64, padded)."""
    if not params:
        return _NO_PARAMS
    return np.array(list(params) + [0.0] * (layer_ops.N_PARAMS - len(params)))


def _same(W, X):
    """X is a kernel-ready array of W's dtype and shape."""
    return type(X) is np.ndarray and X.dtype is W.dtype and X.shape == W.shape and X.flags.c_contiguous
