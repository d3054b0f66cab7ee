"""Model files: a ``.npz`` of arrays plus a JSON description; never pickle.

Layout: ``meta`` (the JSON as uint8 bytes: format, architecture, dtype, loss,
and for checkpoints the optimizer, epoch, history and batch-generator state),
``param.<i>.W`` / ``param.<i>.b`` per Dense layer, ``opt.<key>.<slot>`` for
optimizer state. Files are written to a temporary name and renamed, so a
crash mid-save leaves the previous file intact. Loading uses
``allow_pickle=False``: a model file can never run code.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import zipfile

import numpy as np

FORMAT = "fastnn-model"
VERSION = 1


class ModelFileError(ValueError):
    """A file that is not a readable fastnn model (corrupt, truncated, foreign)."""


def _describe(net):
    return {"format": FORMAT, "version": VERSION, "dtype": net.dtype,
            "layers": [layer.config() for layer in net.layers],
            "loss": net.loss.name if net.loss is not None else None}


def _write_atomic(path, arrays, meta):
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    payload = dict(arrays)
    payload["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(prefix=".fastnn-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _param_arrays(net):
    arrays = {}
    for i, layer in enumerate(net.dense_layers):
        arrays[f"param.{i}.W"] = net.backend.to_numpy(layer.W)
        arrays[f"param.{i}.b"] = net.backend.to_numpy(layer.b)
    return arrays


def save(net, path):
    """Write ``net`` to ``path`` atomically (see the module docstring)."""
    _write_atomic(path, _param_arrays(net), _describe(net))


def _read(path):
    """``(meta, arrays)`` from a model file, or a :class:`ModelFileError`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ModelFileError(f"{path}: not a readable fastnn model file ({exc})") from None
    if not isinstance(arrays, dict) or "meta" not in arrays:
        raise ModelFileError(f"{path}: not a fastnn model file (no description inside)")
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: the model description is corrupt ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a fastnn model file")
    if meta.get("version", 0) > VERSION:
        raise ModelFileError(f"{path}: written by a newer fastnn (format {meta['version']}); upgrade fastnn")
    return meta, arrays


def _set_params(net, arrays, path):
    for i, layer in enumerate(net.dense_layers):
        try:
            layer.W, layer.b = arrays[f"param.{i}.W"], arrays[f"param.{i}.b"]
        except KeyError as exc:
            raise ModelFileError(f"{path}: parameter {exc} is missing") from None
        except ValueError as exc:
            raise ModelFileError(f"{path}: {exc}") from None


def load(path, backend=None):
    """A :class:`~fastnn.Sequential` from a file written by ``save`` (any backend -> any backend)."""
    from .layers import layer_from_config
    from .losses import get_loss
    from .model import Sequential

    meta, arrays = _read(path)
    try:
        layers = [layer_from_config(config) for config in meta["layers"]]
        net = Sequential(*layers, backend=backend, dtype=meta["dtype"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: the architecture cannot be rebuilt ({exc})") from None
    _set_params(net, arrays, path)
    if meta.get("loss"):
        net.loss = get_loss(meta["loss"])
    return net


def save_checkpoint(net, path, epoch, history):
    """The model plus what ``fit(resume=True)`` needs to continue exactly."""
    arrays = _param_arrays(net)
    state, counters = net.optimizer.state_arrays(net.backend)
    arrays.update({f"opt.{name}": value for name, value in state.items()})
    meta = _describe(net)
    meta.update(checkpoint={"epoch": epoch, "history": history.history,
                            "optimizer": net.optimizer.config(), "counters": counters,
                            "batch_rng": net.batch_rng.bit_generator.state})
    _write_atomic(path, arrays, meta)


def resume_checkpoint(net, path, verbose=0):
    """Load a checkpoint into ``net``; returns ``(epochs_done, History)``. A missing file starts afresh."""
    from .history import History
    from .optim import optimizer_from_config

    if not os.path.exists(os.fspath(path)):
        if verbose:
            print(f"fit: no checkpoint at {path}; starting from epoch 1", file=sys.stderr)
        return 0, History()
    meta, arrays = _read(path)
    state = meta.get("checkpoint")
    if not state:
        raise ModelFileError(f"{path}: a model file, not a checkpoint (save with fit(checkpoint=...))")
    if [layer.config() for layer in net.layers] != meta["layers"]:
        raise ValueError(f"{path}: the checkpoint's architecture differs from this model's")
    _set_params(net, arrays, path)
    net.optimizer = optimizer_from_config(state["optimizer"])
    opt_arrays = {name[len("opt."):]: value for name, value in arrays.items() if name.startswith("opt.")}
    net.optimizer.load_state_arrays(net.backend, opt_arrays, state.get("counters", {}), net.dtype)
    net.batch_rng.bit_generator.state = state["batch_rng"]
    if verbose:
        print(f"fit: resumed from {path} after epoch {state['epoch']}", file=sys.stderr)
    return state["epoch"], History(state["history"])
