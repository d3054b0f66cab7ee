"""Model files: a ``.npz`` of arrays plus a JSON description; never pickle.

>>> net.save("model.npz")                    # atomic; any backend
>>> net = fastnn.load("model.npz", backend="numba")

Layout: ``meta`` (the JSON as uint8 bytes: format, version, architecture,
dtype, loss, and for checkpoints the optimizer, epoch, history and
batch-generator state), ``param.<i>.W`` / ``param.<i>.b`` per Dense layer,
``opt.<key>.<slot>`` for optimizer state. All arrays are stored as host NumPy,
so a file written on one backend loads on any other.

- The path is used exactly as given: no ``.npz`` is appended (unlike
  ``np.savez``), so ``save("model")`` and ``load("model")`` name the same file.
- Writing goes to a temporary file in the same folder, is fsynced, then
  renamed over the target (``os.replace``): a crash mid-save leaves the
  previous file intact and no temporary file behind.
- Reading uses ``allow_pickle=False``: a model file can never run code. Anything
  that is not a fastnn model file of a version this fastnn knows (corrupt,
  truncated, foreign, pickled, newer) raises :class:`ModelFileError`.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from .files import atomic_writer

FORMAT = "fastnn-model"
VERSION = 1
_ZIP_MAGIC = b"PK\x03\x04"  # a .npz is a zip archive


class ModelFileError(ValueError):
    """A file that is not a readable fastnn model (corrupt, truncated, foreign, newer)."""


# ---- writing -----------------------------------------------------------------
def _describe(net):
    from . import __version__
    from .losses import LOSSES

    loss = net.loss.name if net.loss is not None and net.loss.name in LOSSES else None
    return {"format": FORMAT, "version": VERSION, "fastnn_version": __version__,
            "dtype": net.dtype, "layers": [layer.config() for layer in net.layers], "loss": loss}


def _write_atomic(path, arrays, meta):
    payload = dict(arrays)
    payload["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    with atomic_writer(path) as f:
        np.savez(f, **payload)  # to a file object: no ".npz" appended


def _param_arrays(net):
    arrays = {}
    for i, layer in enumerate(net.dense_layers):
        arrays[f"param.{i}.W"] = net.backend.to_numpy(layer.W)
        arrays[f"param.{i}.b"] = net.backend.to_numpy(layer.b)
    return arrays


def save(net, path):
    """Write ``net`` to ``path`` atomically (see the module docstring)."""
    _write_atomic(path, _param_arrays(net), _describe(net))


# ---- reading -----------------------------------------------------------------
def _what_it_is(head):
    """A guess at a foreign file's kind from its first bytes, for the error message."""
    if not head:
        return "the file is empty"
    if head.startswith(b"\x93NUMPY"):
        return "it is a single .npy array, not a .npz model file"
    if head[:1] == b"\x80":
        return "it looks like a pickle, which fastnn never loads"
    if _ZIP_MAGIC.startswith(head):
        return "the file is truncated"
    return "it is not a .npz (zip) file"


def _open_npz(path):
    """Every member of the .npz at ``path`` as a NumPy array, or a ModelFileError."""
    with open(path, "rb") as f:  # missing, a folder, no permission: Python's own clear OSError
        head = f.read(8)
        if not head.startswith(_ZIP_MAGIC):
            raise ModelFileError(f"{path}: not a fastnn model file ({_what_it_is(head)})")
        f.seek(0)
        try:
            with np.load(f, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except ValueError as exc:
            if "allow_pickle" in str(exc):
                raise ModelFileError(f"{path}: contains a pickled object array; fastnn model files "
                                     f"never do, and it was not loaded (nothing was executed)") from None
            raise ModelFileError(f"{path}: corrupt or truncated model file ({exc})") from None
        except Exception as exc:  # zipfile, zlib, struct, EOF, MemoryError...: all mean a bad file
            raise ModelFileError(f"{path}: corrupt or truncated model file "
                                 f"({type(exc).__name__}: {exc})") from None
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray):  # a zip member that is not an .npy comes back as bytes
            raise ModelFileError(f"{path}: not a fastnn model file (member {name!r} is not an array)")
    return arrays


def _read(path):
    """``(meta, arrays)`` from a model file, or a :class:`ModelFileError`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        hint = f" (there is a {path}.npz: the path is used exactly as given)" \
            if os.path.exists(path + ".npz") else ""
        raise FileNotFoundError(f"model file not found: {path}{hint}")
    arrays = _open_npz(path)
    raw = arrays.pop("meta", None)
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise ModelFileError(f"{path}: not a fastnn model file (no fastnn description inside)")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError(f"{path}: the model description is corrupt ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a fastnn model file (no fastnn description inside)")
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelFileError(f"{path}: the model description has no valid format version ({version!r})")
    if version > VERSION:
        by = f"fastnn {meta['fastnn_version']}, " if isinstance(meta.get("fastnn_version"), str) else ""
        raise ModelFileError(f"{path}: written by a newer fastnn ({by}file format {version}; this "
                             f"fastnn reads format {VERSION}); upgrade fastnn to load it")
    return meta, arrays


def _check_params(meta, arrays, path):
    """Every Dense layer's W and b present, float, and of the shapes its config says.

    Checked before any model is built, so a crafted description cannot make
    ``load`` allocate layers larger than the arrays actually in the file.
    """
    layers = meta.get("layers")
    if not isinstance(layers, list) or not all(isinstance(c, dict) for c in layers):
        raise ModelFileError(f"{path}: the model description has no valid layer list")
    dense = [c for c in layers if c.get("type") == "Dense"]
    for i, config in enumerate(dense):
        shapes = {"W": (config.get("n_in"), config.get("n_out")), "b": (config.get("n_out"),)}
        for name, shape in shapes.items():
            key = f"param.{i}.{name}"
            if key not in arrays:
                raise ModelFileError(f"{path}: parameter {key} is missing")
            value = arrays[key]
            if value.dtype.kind != "f":
                raise ModelFileError(f"{path}: parameter {key} has dtype {value.dtype}, not float")
            if value.shape != shape:
                raise ModelFileError(f"{path}: parameter {key} has shape {value.shape}, but the "
                                     f"architecture says {shape}")


def _set_params(net, arrays, path):
    for i, layer in enumerate(net.dense_layers):
        try:
            layer.W, layer.b = arrays[f"param.{i}.W"], arrays[f"param.{i}.b"]
        except KeyError as exc:
            raise ModelFileError(f"{path}: parameter {exc} is missing") from None
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: {exc}") from None


def load(path, backend=None):
    """A :class:`~fastnn.Sequential` from a file written by ``save`` (any backend -> any backend).

    >>> net = fastnn.load("model.npz", backend="numpy")
    >>> net.predict(X)

    ``backend``: a name or backend object, None for the current default. A
    file that is not a fastnn model this version can read raises
    :class:`ModelFileError` (a ``ValueError``); a missing file ``FileNotFoundError``.
    """
    from .backend import get_backend
    from .layers import layer_from_config
    from .losses import get_loss
    from .model import Sequential

    target = get_backend(backend)  # an unknown or unusable backend is its own clear error, first
    meta, arrays = _read(path)
    _check_params(meta, arrays, path)
    try:
        layers = [layer_from_config(config) for config in meta["layers"]]
        net = Sequential(*layers, backend=target, dtype=meta["dtype"])
        net.loss = get_loss(meta["loss"]) if meta.get("loss") else None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelFileError(f"{path}: the architecture cannot be rebuilt ({exc})") from None
    _set_params(net, arrays, path)
    return net


# ---- checkpoints -------------------------------------------------------------
def save_checkpoint(net, path, epoch, history, batch_size, shuffle):
    """The model plus what ``fit(resume=True)`` needs to continue exactly (and to check it does)."""
    arrays = _param_arrays(net)
    state, counters = net.optimizer.state_arrays(net.backend)
    arrays.update({f"opt.{name}": value for name, value in state.items()})
    meta = _describe(net)
    meta.update(checkpoint={"epoch": epoch, "history": history.history,
                            "optimizer": net.optimizer.config(), "counters": counters,
                            "batch_rng": net.batch_rng.bit_generator.state,
                            "batch_size": int(batch_size), "shuffle": bool(shuffle)})
    _write_atomic(path, arrays, meta)


def _check_same_training(path, meta, state, settings):
    """Refuse a resume whose settings differ from the checkpoint's: it would not continue exactly.

    ``settings`` maps ``loss``, ``batch_size``, ``shuffle`` and ``optimizer`` (a config, or
    None when the caller left it to the checkpoint) to what this fit uses; a checkpoint
    of an older fastnn may lack some, which are then not checked.
    """
    saved = {"loss": meta.get("loss"), "batch_size": state.get("batch_size"),
             "shuffle": state.get("shuffle"), "optimizer": state.get("optimizer")}
    for name, wanted in settings.items():
        if wanted is None or saved[name] is None or wanted == saved[name]:
            continue
        hint = " (or pass neither optimizer= nor lr= to take the checkpoint's)" if name == "optimizer" else ""
        raise ValueError(f"{path}: the checkpoint was trained with {name} {_setting(saved[name])}, this fit "
                         f"asks for {_setting(wanted)}; resume continues exactly only with the same "
                         f"settings: give the checkpoint's{hint}")


def _setting(value):
    if isinstance(value, dict):  # an optimizer's config
        return value.get("kind", "?") + "(" + ", ".join(f"{k}={v}" for k, v in value.items() if k != "kind") + ")"
    return repr(value)


def _checkpoint_parts(net, path, meta, arrays, settings):
    """Everything a resume applies, built and checked before anything is applied."""
    from .history import History
    from .optim import optimizer_from_config

    state = meta.get("checkpoint")
    if not state:
        raise ModelFileError(f"{path}: a model file, not a checkpoint (write one with fit(checkpoint=...))")
    if [layer.config() for layer in net.layers] != meta["layers"]:
        raise ValueError(f"{path}: the checkpoint's architecture differs from this model's")
    if meta.get("dtype") != net.dtype:
        raise ValueError(f"{path}: the checkpoint is {meta.get('dtype')}, this model {net.dtype}")
    if isinstance(state, dict):
        _check_same_training(path, meta, state, settings)
    params = {name: value for name, value in arrays.items() if name.startswith("param.")}
    opt_arrays = {name[len("opt."):]: value for name, value in arrays.items() if name.startswith("opt.")}
    for name, value in opt_arrays.items():
        expected = params.get("param." + name.rsplit(".", 1)[0])
        if expected is None or value.shape != expected.shape:
            raise ModelFileError(f"{path}: optimizer state opt.{name} does not match any parameter")
    try:
        optimizer = optimizer_from_config(state["optimizer"])
        rng = np.random.Generator(type(net.batch_rng.bit_generator)())
        rng.bit_generator.state = state["batch_rng"]
        epoch, history = int(state["epoch"]), History(state["history"])
        counters = dict(state.get("counters", {}))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelFileError(f"{path}: the checkpoint's training state is corrupt ({exc})") from None
    return epoch, history, optimizer, opt_arrays, counters, rng


def resume_checkpoint(net, path, settings, verbose=0):
    """Load a checkpoint into ``net``; returns ``(epochs_done, History)``. A missing file starts afresh.

    ``settings``: what this fit trains with (see ``_check_same_training``); a mismatch is refused.
    """
    from .history import History

    if not os.path.exists(os.fspath(path)):
        if verbose:
            print(f"fit: no checkpoint at {path}; starting from epoch 1", file=sys.stderr)
        return 0, History()
    meta, arrays = _read(path)
    _check_params(meta, arrays, path)
    epoch, history, optimizer, opt_arrays, counters, rng = _checkpoint_parts(net, path, meta, arrays, settings)
    _set_params(net, arrays, path)
    optimizer.load_state_arrays(net.backend, opt_arrays, counters, net.dtype)
    net.optimizer = optimizer
    net.batch_rng = rng
    if verbose:
        print(f"fit: resumed from {path} after epoch {epoch}", file=sys.stderr)
    return epoch, history
