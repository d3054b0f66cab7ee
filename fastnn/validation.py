"""Checks at the public boundary: every bad input gets an error naming the argument.

Host inputs (NumPy arrays, lists) are checked with NumPy and moved to the
backend once; arrays already on the model's backend are checked there. Any other
array with the DLPack protocol (a torch or JAX tensor, ...) is taken in without a
copy: CPU memory as a NumPy view (``np.from_dlpack``), GPU memory by a GPU backend
(``cupy.from_dlpack``); GPU memory on a CPU backend is refused with what to do.
"""
from __future__ import annotations

import math
import numbers
import os
import sys
import threading
import warnings
import weakref

import numpy as np

from .backend import numpy_namespace


class UnscaledInputWarning(UserWarning):
    """``X`` looks unscaled (0-255 pixels, raw measurements): the network will learn poorly.

    On such inputs sigmoid and tanh neurons saturate and the first layer's gradients grow with
    the inputs. Divide 0-255 pixels by 255, standardize other data; where large inputs are
    meant, ``warnings.simplefilter("ignore", fastnn.UnscaledInputWarning)`` silences it.
    """


#: A standardized column (mean 0, sd 1) has a root mean square of 1 and data in [0, 1] or
#: [-1, 1] at most 1, so a sample whose RMS passes 10 holds inputs ten times larger than a
#: network expects (0-255 MNIST: 85, its faintest row 38). The RMS, not the largest value:
#: standardized MNIST reaches 63 at its rarely inked pixels (RMS 0.92, any one row at most 5.8).
SCALE_LIMIT = 10
#: Evenly spaced rows looked at: ~1 ms for 784 columns, whatever the number of rows.
SCALE_SAMPLE_ROWS = 1000
_PACKAGE_FOLDER = os.path.dirname(os.path.abspath(__file__)) + os.sep
# Validation arrays fit has checked (by id; weak, so they are not kept alive): fit scores them
# every epoch through batch(), and one warning per fit is enough.
_scale_checked: weakref.WeakValueDictionary[int, object] = weakref.WeakValueDictionary()


def layers_chain(layers):
    """Each Dense must take as many inputs as the previous Dense gives."""
    from .layers import Dense

    width = None
    for i, layer in enumerate(layers):
        if isinstance(layer, Dense):
            if width is not None and layer.n_in != width:
                raise ValueError(f"Sequential: layer {i} {layer!r} expects {layer.n_in} inputs, "
                                 f"but the layer before it gives {width}")
            width = layer.n_out


def count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


#: DLPack device types (``__dlpack_device__()[0]``) whose memory the CPU reads, the ones
#: ``np.from_dlpack`` takes: CPU, CUDA pinned host, ROCm pinned host, CUDA managed.
_HOST_MEMORY = (1, 3, 11, 13)
#: The others, named for the error (DLPack's DLDeviceType).
_DEVICE_MEMORY = {2: "a CUDA GPU", 4: "an OpenCL device", 7: "a Vulkan device", 8: "a Metal GPU",
                  9: "a VPI accelerator", 10: "a ROCm GPU", 12: "an extension device",
                  14: "a oneAPI device", 15: "a WebGPU device", 16: "a Hexagon DSP", 17: "a MAIA accelerator"}


def _arrived(value, name, backend):
    """``(host, device)``: ``value`` as a host NumPy array or as ``backend``'s own array (the
    other one None). A DLPack array is taken in without a copy where its memory allows."""
    if isinstance(value, np.ndarray):
        return value, None
    if _is_dlpack(value):
        kind = _dlpack_device_type(value, name)
        if kind in _HOST_MEMORY:
            return _from_dlpack(value, name), None
        if backend.xp is numpy_namespace():  # a CPU backend: its arrays are NumPy arrays
            raise TypeError(f"{_lies_on(value, name, kind)}, and backend {backend.name!r} computes on "
                            f"the CPU; move it to the host first (a torch tensor: .cpu()), or build "
                            f"the model with backend='cupy'")
        return None, backend.asarray(value)  # a GPU backend takes it where it lies (cupy.from_dlpack)
    if hasattr(value, "__array_namespace__"):
        return None, value
    return _numbers(value, name), None


def host_values(value, name: str, to_numpy) -> np.ndarray:
    """``value`` (a list, a NumPy, backend or DLPack array) as a host NumPy array, for the small
    inputs read on the host (targets, sample weights); ``to_numpy`` brings a backend array over."""
    if isinstance(value, np.ndarray) or not (_is_dlpack(value) or hasattr(value, "__array_namespace__")):
        return _numbers(value, name)
    kind = _dlpack_device_type(value, name) if _is_dlpack(value) else None
    if kind in _HOST_MEMORY:
        return _from_dlpack(value, name)
    try:
        host = to_numpy(value)
    except (TypeError, ValueError, RuntimeError, BufferError):
        host = None
    # A CPU backend's to_numpy cannot read GPU memory: it raises, or wraps the object (dtype object)
    if not isinstance(host, np.ndarray) or host.dtype == object:
        where = _lies_on(value, name, kind) if kind is not None else f"{name}: {type(value).__name__}"
        raise TypeError(f"{where}, which this backend cannot read; move it to the host first "
                        f"(a torch tensor: .cpu())")
    return host


def _numbers(value, name):
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected an array, got {type(value).__name__} ({exc})") from None


def _is_dlpack(value):
    return hasattr(value, "__dlpack__") and hasattr(value, "__dlpack_device__")


def _dlpack_device_type(value, name):
    try:
        return int(value.__dlpack_device__()[0])
    except Exception as exc:  # noqa: BLE001 - a foreign object's own failure, reported with its words
        raise TypeError(f"{name}: {type(value).__name__}.__dlpack_device__() failed ({exc})") from None


def _lies_on(value, name, kind):
    where = _DEVICE_MEMORY.get(kind, f"a device of DLPack type {kind}")
    return f"{name}: {type(value).__name__} lies on {where} (DLPack device type {kind})"


def _from_dlpack(value, name):
    """A NumPy view of host memory exported through DLPack: no copy. A read-only export (NumPy
    >= 2.1 marks them) stays read-only; fastnn never writes into its inputs."""
    try:
        return np.from_dlpack(value)
    except (TypeError, ValueError, RuntimeError, BufferError) as exc:
        # torch: "Can't export tensors that require gradient, use tensor.detach()"; bfloat16
        raise TypeError(f"{name}: {type(value).__name__} could not be read through DLPack ({exc})") from None


def batch(net, X, name="X"):
    """``X`` as a C-contiguous ``(B, n_in)`` backend array of the model's dtype."""
    host, device = _arrived(X, name, net.backend)
    if host is None:  # a backend array: check it where it lives
        checked = _device_batch(net, device, name)
    else:
        checked = _host_batch(net, host, name, net.dtype)
    if _scale_checked.get(id(X)) is not X:  # fit's validation arrays: once per fit, not per epoch
        warn_if_unscaled(checked, name, net.input_scale)
    return checked if host is None else net.backend.asarray(checked)


def training_set(net, X, name="X", check_finite=True):
    """``fit``'s training rows, checked as :func:`batch` checks, placed by the backend's
    :meth:`~fastnn.backend.Backend.training_set` (which may keep integer pixels as they are).

    ``check_finite=False`` leaves out the NaN/inf test of host rows, for a caller that makes it
    otherwise (a compiled epoch that stops at such a row; then :func:`finite` names it)."""
    host, device = _arrived(X, name, net.backend)
    if host is None:
        X = _device_batch(net, device, name)
        warn_if_unscaled(X, name, net.input_scale)
        return X
    dtype = host.dtype if host.dtype.kind in "biu" else net.dtype  # integers: the backend decides
    host = _host_batch(net, host, name, dtype, check_finite)
    warn_if_unscaled(host, name, net.input_scale)
    return net.backend.training_set(host, net.dtype)


def warn_if_unscaled(X, name="X", scale=1.0):
    """Warn (:class:`UnscaledInputWarning`) when the 2-D array ``X``, times ``scale`` (a leading
    ``Rescale`` layer's factor), looks unscaled: the root mean square of up to 1,000 evenly
    spaced rows passes 10 (see ``SCALE_LIMIT``).

    Integers are judged by their values as floats are (0/1 integer features are scaled). The
    warning points at the first caller outside fastnn: the user's fit/evaluate/predict line.
    """
    if isinstance(X, np.ndarray):
        xp = numpy_namespace()
    else:
        from array_api_compat import array_namespace
        xp = array_namespace(X)
    step = -(-X.shape[0] // SCALE_SAMPLE_ROWS)  # ceil: at most SCALE_SAMPLE_ROWS rows
    S = xp.astype(X[::step, ...], xp.float64) * scale  # float64: squares of integers or large floats fit
    rms = math.sqrt(float(xp.mean(S * S)))
    if not SCALE_LIMIT < rms < math.inf:  # NaN or inf: left to the finite check (fit may make it later)
        return
    low, high, rows = float(xp.min(S)), float(xp.max(S)), S.shape[0]
    if 0 <= low and high <= 255 and high - low > 100:  # spans most of the 8-bit range
        advice = "For 0-255 pixels divide by 255 (X / 255) to get [0, 1], as fastnn.datasets does."
    else:
        advice = ("Standardize each column: (X - mean) / std with the training set's column means and "
                  "stds (sklearn.preprocessing.StandardScaler), and the same for test data.")
    warnings.warn(f"{name}: values from {low:g} to {high:g} look unscaled (root mean square {rms:.3g} in "
                  f"{rows:,} sampled row{'s' * (rows != 1)}; scaled data has about 1): a network learns "
                  f"poorly from them. {advice}", UnscaledInputWarning, stacklevel=_stacklevel_outside_fastnn())


def _stacklevel_outside_fastnn():
    """The ``stacklevel`` at which our caller's ``warnings.warn`` names the first frame outside
    this package (``warnings.warn(skip_file_prefixes=...)`` would do it from Python 3.12)."""
    level, frame = 2, sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_FOLDER):
        level, frame = level + 1, frame.f_back
    return level


def finite(X, name="X"):
    """Raise ``ValueError`` naming the first row of the host array ``X`` with a NaN or inf."""
    if not all_finite(X):
        bad = int(np.argmax(~np.isfinite(X).all(axis=1)))
        raise ValueError(f"{name}: contains NaN or inf (first in row {bad})")


def placed_finite(backend, X, name="X"):
    """:func:`finite` for a training set that ``backend.training_set`` placed: host rows name
    the first bad row; a device array is checked where it lies."""
    if isinstance(X, np.ndarray):
        finite(X, name)
        return
    xp = backend.xp
    if not bool(xp.all(xp.isfinite(X))):
        raise ValueError(f"{name}: contains NaN or inf")


def all_finite(a):
    """``np.isfinite(a).all()`` for a host array (integers: True), fast for a whole training set
    (hundreds of MB, checked at every fit).

    In cache-sized pieces (no temporary the size of ``a``) and, for a large array, in two halves
    at once: ``np.isfinite`` releases the GIL, and one core alone does not saturate memory.
    Measured on 60,000 MNIST rows (188 MB), 2 cores: 25 ms in one piece, 9 ms like this.
    """
    if a.dtype.kind != "f":  # integers are always finite
        return True
    flat = a.reshape(-1)
    if flat.size < (1 << 22) or (os.cpu_count() or 1) < 2:
        return _pieces_finite(flat)
    half, second = flat.size // 2, []
    worker = threading.Thread(target=lambda: second.append(_pieces_finite(flat[half:])), daemon=True)
    worker.start()
    first = _pieces_finite(flat[:half])
    worker.join()
    return first and second == [True]


def _pieces_finite(flat, step=1 << 18):
    return all(np.isfinite(flat[i:i + step]).all() for i in range(0, flat.size, step))


def _device_batch(net, X, name):
    backend = net.backend
    xp = backend.xp
    if X.ndim != 2 or X.shape[1] != net.n_in or X.shape[0] == 0:
        raise ValueError(f"{name}: expected shape (B, {net.n_in}) with B >= 1, got {tuple(X.shape)}")
    X = backend.asarray(X, dtype=net.dtype)
    if not bool(xp.all(xp.isfinite(X))):
        raise ValueError(f"{name}: contains NaN or inf")
    return X


def _host_batch(net, host, name, dtype, check_finite=True):
    """The host array checked (numbers, 2-D, rows, width, finite) and C-ordered in ``dtype``."""
    if host.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected numbers, got dtype {host.dtype}")
    if host.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (B, {net.n_in}), got shape {host.shape}")
    if host.shape[0] == 0:
        raise ValueError(f"{name}: is empty (0 rows)")
    if host.shape[1] != net.n_in:
        raise ValueError(f"{name}: expected {net.n_in} columns (the model's input width), "
                         f"got {host.shape[1]}")
    if not (isinstance(host, np.memmap) and host.flags.c_contiguous):
        host = np.ascontiguousarray(host, dtype=dtype)
    # else: a memory-mapped file stays as it is, larger than memory maybe: batches convert its rows
    if check_finite:
        finite(host, name)  # in pieces: no temporary of its size
    return host


def targets(net, y, n, name="y"):
    """``y`` (integer labels or target rows) -> ``(T (n, n_out), labels (n,))`` on the backend."""
    backend = net.backend
    host, device = _arrived(y, name, backend)
    if host is None:
        host = backend.to_numpy(device)  # the boundary: targets are small
    n_out = net.n_out
    if host.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected labels or target rows, got dtype {host.dtype}")
    if host.ndim == 0 or host.shape[0] != n:
        raise ValueError(f"{name}: expected {n} targets (one per row of X), got shape {host.shape}")
    if host.ndim == 1:
        if host.dtype.kind == "f" and not np.all(np.isfinite(host) & (host == np.round(host))):
            raise TypeError(f"{name}: 1-D targets must be integer class labels")
        labels = host.astype(np.int64)
        top = 2 if n_out == 1 else n_out
        if labels.min() < 0 or labels.max() >= top:
            raise ValueError(f"{name}: labels must be in [0, {top - 1}] for a model with {n_out} "
                             f"output{'s' if n_out > 1 else ''}; got {labels.min()}..{labels.max()}")
        if n_out == 1:
            T = labels.reshape(n, 1).astype(net.dtype)
        else:
            T = np.zeros((n, n_out), dtype=net.dtype)
            T[np.arange(n), labels] = 1
    elif host.ndim == 2:
        if host.shape[1] != n_out:
            raise ValueError(f"{name}: target rows must have {n_out} columns (the model's output "
                             f"width), got {host.shape[1]}")
        T = np.ascontiguousarray(host, dtype=net.dtype)
        if not np.all(np.isfinite(T)):
            raise ValueError(f"{name}: contains NaN or inf")
        labels = (T[:, 0] > 0.5).astype(np.int64) if n_out == 1 else np.argmax(T, axis=1)
    else:
        raise ValueError(f"{name}: expected 1-D labels or 2-D target rows, got shape {host.shape}")
    return backend.asarray(T), backend.asarray(labels)


def optimizer(optimizer, lr, previous):
    from .optim import SGD, Optimizer

    if optimizer is not None and lr is not None:
        raise ValueError("fit: give optimizer= or lr=, not both (lr belongs to the optimizer)")
    if optimizer is not None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected fastnn.SGD or fastnn.Adam, got {type(optimizer).__name__}")
        return optimizer
    if lr is not None:
        return SGD(lr)
    return previous if previous is not None else SGD(0.1)


def split_point(fraction, n):
    """Rows kept for training by ``validation_split=fraction`` of ``n``: ``floor(n (1 - fraction))``
    (Keras's rule); the rest, the last rows, validate."""
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 <= fraction < 1:
        raise ValueError(f"validation_split: expected a fraction in [0, 1), got {fraction!r}")
    keep = math.floor(n * (1 - fraction))
    if keep == 0 or keep == n:
        raise ValueError(f"validation_split={fraction}: {n} rows cannot be split into a training and "
                         f"a validation set; pass more rows or another fraction")
    return keep


def validation_pair(net, data):
    """``(X_val, y_val)`` checked before training starts (not after the first epoch), under their names."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError("validation_data: expected a pair (X_val, y_val)")
    X_val = batch(net, data[0], name="validation_data X_val")
    targets(net, data[1], X_val.shape[0], name="validation_data y_val")
    try:
        _scale_checked[id(X_val)] = X_val
    except TypeError:  # an array type without weak references: checked again each epoch
        pass
    return X_val, data[1]
