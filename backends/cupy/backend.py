"""The cupy backend: the same models on an NVIDIA GPU.

>>> import fastnn
>>> net = fastnn.Sequential(fastnn.Dense(784, 128), fastnn.ReLU(), fastnn.Dense(128, 10),
...                         backend="cupy", seed=0)          # or "cupy:1": GPU 1
>>> net.fit(X, y, epochs=1, batch_size=10, loss="cross_entropy", lr=0.1)
>>> net.to("numpy")                                          # and back: net.to("cupy")

``xp`` is CuPy's array-API namespace (``array_api_compat.cupy``). Matrix products
run on cuBLAS (``cupy.cublas.gemm``: transposes, alpha and beta without
temporaries); bias + activation, activation backward, the losses and the
optimizer steps are fused kernels (``kernels.py``), compiled on first use.
Other dtypes take the reference (``super()``).

Data crosses to the GPU once, at the model's boundary (``fit``, ``predict``
through ``asarray``); an op given a NumPy array refuses with a TypeError rather
than copy silently. ``fit`` keeps the training set on the GPU, draws batches by
device-side indexing, and checks the loss once per epoch (``check_every_batch``
is False: no host sync per batch). For small batches it replays one captured
training step as a CUDA graph (``graph.py``).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from fastnn.backend import Array, Backend, _check_act

if TYPE_CHECKING:
    from fastnn.losses import Loss
    from fastnn.model import Sequential
    from fastnn.ops.optimizers import UpdateRule
    from fastnn.optim import Optimizer
    from fastnn.trainer import Trainer

#: Copies from the host at least this large are checked against the GPU's free memory first.
CHECK_FIT_BYTES = 16 * 2**20

_kernels: Any = None  # backends/cupy/kernels.py, imported by the first CupyBackend (it needs CuPy)
#: DLPack device types of GPU memory ``cupy.from_dlpack`` takes as a view: CUDA, ROCm, CUDA managed.
DLPACK_GPU = (2, 10, 13)


def numpy_refused(op):
    return TypeError(f"cupy backend: op {op} got a NumPy array; move data with backend.asarray "
                     f"or net.fit/predict at the model boundary")


def too_big_message(nbytes, free, total, device):
    """Why ``nbytes`` cannot be copied to GPU ``device`` (``free``/``total`` bytes), and what to do."""
    mib = 2.0**20
    return (f"cupy backend: {nbytes / mib:,.0f} MiB do not fit in the free memory of GPU {device} "
            f"({free / mib:,.0f} MiB free of {total / mib:,.0f} MiB); train on fewer rows, "
            f"in float32, or on backend='numba'")


def no_device_message(runtime, exc):
    """Why CUDA found no device (``exc``), in words: no driver at all, or the versions that disagree."""
    try:
        driver, needed = runtime.driverGetVersion(), runtime.runtimeGetVersion()
    except Exception:  # noqa: BLE001 - the original error says enough
        return f"no usable CUDA device ({exc})"
    if driver == 0:  # what cudaDriverGetVersion reports when no NVIDIA driver is loaded
        return "no NVIDIA driver found, so no CUDA device can be used"
    return (f"no usable CUDA device ({exc}; the driver supports CUDA {_version(driver)}, "
            f"this CuPy runs on CUDA {_version(needed)})")


def kernel_cache_folder():
    """Where CuPy keeps compiled kernels: ``$CUPY_CACHE_DIR``, else ``~/.cupy/kernel_cache``."""
    return os.environ.get("CUPY_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cupy", "kernel_cache")


def _keep_kernel_cache_in_memory_if_unwritable():
    """With no writable kernel cache (a read-only home), CuPy would fail at its first compile:
    ``CUPY_CACHE_IN_MEMORY=1`` (read by CuPy at each compile) keeps the kernels in memory for
    this process instead, with one warning that says why and what to set."""
    if os.environ.get("CUPY_CACHE_IN_MEMORY"):
        return
    folder = kernel_cache_folder()
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        os.environ["CUPY_CACHE_IN_MEMORY"] = "1"
        warnings.warn(f"cupy backend: CuPy's kernel cache {folder} cannot be written ({exc.strerror or exc}); "
                      f"kernels are compiled in memory in every process. Set CUPY_CACHE_DIR to a writable "
                      f"folder to keep them.", RuntimeWarning, stacklevel=4)


class CupyBackend(Backend):
    """CuPy on one CUDA device: ``CupyBackend(device=None, graphs=True)``.

    ``device``: the GPU's number (default: the current device); the backend makes
    it the current device of the calling thread, as ``cupy.cuda.Device(n).use()``.
    ``graphs=False`` turns off the CUDA-graph trainer, so ``fit`` runs layer by layer.
    """

    name = "cupy"
    check_every_batch = False

    @staticmethod
    def unavailable_reason() -> str | None:
        """Why this machine cannot run the backend (None when it can); never raises."""
        if "cupy" not in sys.modules and importlib.util.find_spec("cupy") is None:
            return "CuPy is not installed"
        try:
            import cupy
        except Exception as exc:  # a broken install or missing CUDA libraries: say which
            return f"CuPy is installed but does not import ({type(exc).__name__}: {exc})"
        runtime: Any = getattr(getattr(cupy, "cuda", None), "runtime", None)
        try:
            count = runtime.getDeviceCount()
        except Exception as exc:  # CUDARuntimeError: no driver, driver too old for this CuPy, ...
            return no_device_message(runtime, exc)
        if count < 1:
            return "no CUDA device found"
        try:
            import cupy.cublas  # noqa: F401  (loads cuBLAS: without it no product runs)
            from cupy.cuda import nvrtc
            nvrtc.getVersion()  # loads NVRTC, which compiles the kernels
        except Exception as exc:  # CuPy's wheels bring no CUDA libraries of their own
            return (f"CuPy cannot load a CUDA library it needs ({exc}); install the CUDA Toolkit, "
                    f"or its libraries from PyPI: pip install 'cupy-cuda12x[ctk]' (or 'cupy-cuda13x[ctk]')")
        return None

    def __init__(self, device: int | None = None, graphs: bool = True) -> None:
        global _kernels
        _keep_kernel_cache_in_memory_if_unwritable()
        import array_api_compat.cupy as xp
        import cupy
        import cupy.cublas

        if _kernels is None:
            from . import kernels as _kernels_module
            _kernels = _kernels_module
        count = cupy.cuda.runtime.getDeviceCount()
        if device is None:
            device = cupy.cuda.Device().id
        if isinstance(device, bool) or not isinstance(device, (int, np.integer)) or not 0 <= device < count:
            raise ValueError(f"cupy backend: device must be a GPU number from 0 to {count - 1} "
                             f"(this machine has {count} CUDA device{'s' if count != 1 else ''}), "
                             f"got {device!r}")
        super().__init__(xp)
        self._cp = cupy
        self._cublas = cupy.cublas
        self.device = cupy.cuda.Device(int(device))
        self.device.use()
        self.graphs = bool(graphs)

    @property
    def device_id(self) -> int:
        return self.device.id

    def __repr__(self) -> str:
        return f"<fastnn backend 'cupy' device={self.device_id} graphs={self.graphs}>"

    # ---- data movement -------------------------------------------------
    def asarray(self, a: Any, dtype: Any = None) -> Array:
        cp = self._cp
        if isinstance(dtype, str):
            dtype = self.dtype(dtype)
        with self.device:
            a = self._from_gpu_dlpack(a)
            if isinstance(a, cp.ndarray):
                if a.device.id != self.device_id:  # another GPU's array: a copy here
                    return cp.array(a, dtype=dtype, order="C", copy=True)
                return cp.asarray(a, dtype=dtype, order="C")  # itself when already right
            host = np.asarray(a, dtype=dtype, order="C")  # the model boundary: one copy
            if host.nbytes >= CHECK_FIT_BYTES:
                self._check_fits(host.nbytes)
            return cp.asarray(host)

    def _from_gpu_dlpack(self, a):
        """A GPU array of another library (a torch or JAX CUDA tensor) as a CuPy view of the same
        memory (``cupy.from_dlpack``, no copy); anything else as it is."""
        if isinstance(a, (np.ndarray, self._cp.ndarray)) or not hasattr(a, "__dlpack_device__"):
            return a
        if int(a.__dlpack_device__()[0]) not in DLPACK_GPU:
            return a  # host memory: the host rules below (one checked copy at the boundary)
        return self._cp.from_dlpack(a)

    def _free_bytes(self):
        """``(free, total)`` bytes of this GPU; CuPy's cached blocks count as free (reusable)."""
        with self.device:
            free, total = self._cp.cuda.runtime.memGetInfo()
        return free + self._cp.get_default_memory_pool().free_bytes(), total

    def _check_fits(self, nbytes):
        free, total = self._free_bytes()
        if nbytes > free:
            raise MemoryError(too_big_message(nbytes, free, total, self.device_id))

    def training_set(self, X: NDArray[Any], dtype: Any) -> Array:
        """On the GPU once, as ``dtype`` where that fits; uint8 pixels that fit only as they are
        stay uint8 (a quarter of float32's bytes) and batches are converted on the GPU."""
        float_bytes = X.size * np.dtype(self.dtype(dtype) if isinstance(dtype, str) else dtype).itemsize
        if X.dtype == np.uint8 and float_bytes >= CHECK_FIT_BYTES:
            free, total = self._free_bytes()
            if float_bytes > free:
                if X.nbytes > free:  # not even as uint8: say so now, before a float copy on the host
                    raise MemoryError(too_big_message(X.nbytes, free, total, self.device_id))
                with self.device:
                    return self._cp.asarray(X)
        return self.asarray(X, dtype=dtype)

    def to_numpy(self, a: Any) -> NDArray[Any]:
        a = self._from_gpu_dlpack(a)  # targets and sample weights given as torch/JAX CUDA tensors
        if isinstance(a, self._cp.ndarray):
            return self._cp.asnumpy(a)  # a device -> host copy (synchronous)
        return np.asarray(a)

    def synchronize(self) -> None:
        self.device.synchronize()

    def scope(self, net: Sequential | None = None) -> contextlib.AbstractContextManager[Any]:
        return self.device  # a cupy.cuda.Device is a context manager that makes itself current

    def _on_device(self, op, *arrays):
        """True when every array is a CuPy array the kernels take (float32/64, one dtype);
        a NumPy array is refused, anything else goes to the reference."""
        cp = self._cp
        for a in arrays:
            if isinstance(a, np.ndarray):
                raise numpy_refused(op)
        dtype = arrays[0].dtype if isinstance(arrays[0], cp.ndarray) else None
        return dtype in _kernels.DTYPES and all(
            a is None or (isinstance(a, cp.ndarray) and a.dtype == dtype) for a in arrays)

    # ---- dense algebra -------------------------------------------------
    def gemm(self, A: Array, B: Array, trans_a: bool = False, trans_b: bool = False, alpha: float = 1.0,
             beta: float = 0.0, C: Array | None = None) -> Array:
        if not (self._on_device("gemm", A, B, C) and A.ndim == 2 and B.ndim == 2):
            return super().gemm(A, B, trans_a, trans_b, alpha, beta, C)
        M, K = (A.shape[1], A.shape[0]) if trans_a else A.shape
        K_b, N = (B.shape[1], B.shape[0]) if trans_b else B.shape
        if K != K_b:
            raise ValueError(f"gemm: op(A) is {M}x{K} but op(B) is {K_b}x{N} (trans_a={trans_a}, "
                             f"trans_b={trans_b})")
        if not (M and N and K):
            return super().gemm(A, B, trans_a, trans_b, alpha, beta, C)  # cuBLAS rejects empty sizes
        if C is None:
            C, beta = self._cp.empty((M, N), dtype=A.dtype), 0.0  # C order, as the contract promises
        elif C.shape != (M, N) or C.ndim != 2:
            raise ValueError(f"gemm: C has shape {tuple(C.shape)}, expected ({M}, {N})")
        elif self._cp.may_share_memory(C, A) or self._cp.may_share_memory(C, B):
            return super().gemm(A, B, trans_a, trans_b, alpha, beta, C)  # cuBLAS needs C apart
        return self._cublas.gemm("T" if trans_a else "N", "T" if trans_b else "N", A, B, out=C,
                                 alpha=alpha, beta=beta)

    def sum_rows(self, X: Array) -> Array:
        self._on_device("sum_rows", X)  # a NumPy array is refused, not summed on the host
        return super().sum_rows(X)

    # ---- activations (generated from fastnn.ops.activations: ops_source.py) --
    def bias_act(self, Z: Array, b: Array | None, act: str, params: Sequence[float] = ()) -> Array:
        _check_act(act, params)
        if not (self._on_device("bias_act", Z, b) and Z.ndim == 2
                and (b is None or b.shape == (Z.shape[1],))):
            return super().bias_act(Z, b, act, params)
        if b is None and act == "identity":
            return Z  # as the reference: nothing to do
        p = Z.dtype.type(params[0] if params else 0.0)
        if b is None:
            return _kernels.bias_act(act, False)(Z, p)
        return _kernels.bias_act(act, True)(Z, b, p)

    def act_backward(self, V: Array, dY: Array, act: str, params: Sequence[float] = ()) -> Array:
        _check_act(act, params)
        if act == "identity":
            self._on_device("act_backward", V, dY)
            return dY  # as the reference
        if not (self._on_device("act_backward", V, dY) and V.shape == dY.shape):
            return super().act_backward(V, dY, act, params)
        return _kernels.act_backward(act)(V, dY, V.dtype.type(params[0] if params else 0.0))

    # ---- losses --------------------------------------------------------
    def softmax_xent(self, Z: Array, T: Array) -> tuple[Array, Array]:
        return self._loss("softmax_xent", "cross_entropy", Z, T)

    def sigmoid_xent(self, Z: Array, T: Array) -> tuple[Array, Array]:
        return self._loss("sigmoid_xent", "binary_cross_entropy", Z, T)

    def _loss(self, op, kind, Z, T):
        if not (self._on_device(op, Z, T) and Z.ndim == 2 and Z.shape == T.shape and Z.size > 0):
            return getattr(super(), op)(Z, T)
        cp = self._cp
        Z, T = cp.ascontiguousarray(Z), cp.ascontiguousarray(T)  # the kernel reads rows in place
        dZ = cp.empty_like(Z)
        loss = cp.empty((1,), dtype=Z.dtype)
        _kernels.loss_op(kind, Z, T, dZ, loss)
        return loss.reshape(()), dZ

    # ---- optimizer steps (generated from fastnn.ops.optimizers: ops_source.py) --
    def update(self, rule: UpdateRule, W: Array, dW: Array, slots: dict[str, Array],
               hyper: Mapping[str, float]) -> tuple[Array, dict[str, Array]]:
        arrays = [slots[name] for name in rule.slots]
        if not (self._on_device("update", W, dW, *arrays) and all(A.shape == W.shape for A in [dW, *arrays])):
            return super().update(rule, W, dW, slots, hyper)
        _kernels.update(rule)(dW, *[float(hyper[name]) for name in rule.inputs], W, *arrays)
        return W, slots

    # ---- whole-epoch training ------------------------------------------
    def epoch_trainer(self, net: Sequential, loss: Loss, optimizer: Optimizer) -> Trainer | None:
        """The CUDA-graph trainer where the model allows it, else None (layer by layer)."""
        if not self.graphs:
            return None
        from .graph import make_graph_trainer
        return make_graph_trainer(self, net, loss, optimizer)

    def layer_path_reason(self, net: Sequential, loss: Loss, optimizer: Optimizer) -> str | None:
        if not self.graphs:
            return "graphs=False"
        from .graph import unsupported_reason
        reason = unsupported_reason(net, loss, optimizer)
        return reason and f"no CUDA-graph step for it: {reason}"

    def info(self) -> dict[str, Any]:
        cp, runtime = self._cp, self._cp.cuda.runtime
        props = runtime.getDeviceProperties(self.device_id)
        name = props["name"]
        free, total = self.device.mem_info
        return {
            "gpu": f"{self.device_id}: {name.decode() if isinstance(name, bytes) else name}",
            "compute_capability": self.device.compute_capability,
            "memory": f"{total / 2**30:.1f} GiB total, {free / 2**30:.1f} GiB free",
            "cuda_runtime": _version(runtime.runtimeGetVersion()),
            "cuda_driver": _version(runtime.driverGetVersion()),
            "cupy": cp.__version__,
            "devices": runtime.getDeviceCount(),
            "cuda_graphs": self.graphs,
        }


def _version(code):
    """CUDA's integer version (12040) as text ("12.4")."""
    return f"{code // 1000}.{code % 1000 // 10}"
