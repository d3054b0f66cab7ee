"""Checkpoints: a model file plus what ``fit(resume=True)`` needs to continue exactly.

``save_checkpoint`` writes one after an epoch; ``read_checkpoint`` reads one and
checks all of it (training record, optimizer, batch generator, architecture,
settings) before ``apply_checkpoint`` gives it to the network, so a refused
checkpoint changes nothing.
"""
from __future__ import annotations

import collections
import os
import sys

import numpy as np

from .io_npz import (MAX_BYTES, ModelFileError, _describe, _is_count, _param_arrays, _read, _shown,
                     _write_atomic)


def save_checkpoint(net, path, epoch, history, batch_size, shuffle):
    """The model plus what ``fit(resume=True)`` needs to continue exactly (and to check it does)."""
    arrays = _param_arrays(net)
    state, counters = net.optimizer.state_arrays(net.backend)
    arrays.update({f"opt.{name}": value for name, value in state.items()})
    meta = _describe(net)
    meta.update(checkpoint={"epoch": epoch, "history": history.history,
                            "optimizer": net.optimizer.config(), "counters": counters,
                            "batch_rng": net.batch_rng.bit_generator.state,
                            "epochs_trained": net.epochs_trained, "dropout_key": f"{net.dropout_key:#x}",
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
    return _shown(value)


#: The lists a checkpoint's history may hold: what fit records each epoch.
_HISTORY_KEYS = ("epoch", "loss", "accuracy", "lr", "seconds", "val_loss", "val_accuracy")

#: What ``read_checkpoint`` checked and ``apply_checkpoint`` assigns.
Resume = collections.namedtuple("Resume", "path epoch history optimizer params batch_rng dropout")


def _training_state(meta, path):
    """The checkpoint's training record, every field of a known type and range."""
    state = meta.get("checkpoint")
    if not state:
        raise ModelFileError(f"{path}: a model file, not a checkpoint (write one with fit(checkpoint=...))")

    def refuse(what):
        return ModelFileError(f"{path}: the checkpoint's training state is corrupt ({what})")
    if not isinstance(state, dict):
        raise refuse("not a record")
    epoch, history = state.get("epoch"), state.get("history")
    if not _is_count(epoch):
        raise refuse(f"epoch {_shown(epoch)} is not a positive integer")
    if not isinstance(history, dict) or not set(history) <= set(_HISTORY_KEYS):
        raise refuse(f"its history is not lists named {', '.join(_HISTORY_KEYS)}")
    epochs = history.get("epoch")
    if not isinstance(epochs, list) or len(epochs) != epoch or epochs != list(range(1, epoch + 1)):
        raise refuse(f"its history does not list epochs 1 to {epoch}")
    for key, values in history.items():
        if not (isinstance(values, list) and len(values) == epoch and all(map(_is_number, values))):
            raise refuse(f"history {key!r} is not {epoch} numbers")
    if state.get("batch_size") is not None and not _is_count(state["batch_size"]):
        raise refuse(f"batch_size {_shown(state['batch_size'])} is not a positive integer")
    if not isinstance(state.get("shuffle", False), bool):
        raise refuse(f"shuffle {_shown(state['shuffle'])} is not true or false")
    return state


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _like(value, fresh):
    """``value`` is built as ``fresh`` is (a fresh bit generator's state): the same keys, the
    same strings, non-negative integers of its width where it has integers."""
    if isinstance(fresh, dict):
        return isinstance(value, dict) and set(value) == set(fresh) and all(_like(value[k], fresh[k]) for k in fresh)
    if isinstance(fresh, str):
        return value == fresh
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** 128


def _checkpoint_rng(saved, net, path):
    """A new batch generator in the checkpoint's state (NumPy's setter alone takes 1.5 for 1)."""
    rng = np.random.Generator(type(net.batch_rng.bit_generator)())
    fresh = rng.bit_generator.state
    if not _like(saved, fresh) or saved.get("has_uint32") not in (0, 1) or saved.get("uinteger", 0) >= 2 ** 32:
        raise ModelFileError(f"{path}: the checkpoint's batch generator state is not a "
                             f"{fresh['bit_generator']} state ({_shown(saved)})")
    try:
        rng.bit_generator.state = saved
    except (TypeError, ValueError, OverflowError, KeyError) as exc:
        raise ModelFileError(f"{path}: the checkpoint's batch generator state is corrupt ({exc})") from None
    return rng


def _checkpoint_optimizer(net, state, arrays, path):
    """A new optimizer from the checkpoint's settings, counters and state arrays, all checked."""
    from .optim import optimizer_from_config

    try:
        optimizer = optimizer_from_config(state.get("optimizer"))
        counters = optimizer.checked_counters(state.get("counters", {}))
    except ValueError as exc:
        raise ModelFileError(f"{path}: the checkpoint's optimizer is not valid ({exc})") from None
    found = {name[len("opt."):] for name in arrays if name.startswith("opt.")}
    needed = {f"{name[len('param.'):]}.{slot}" for name in arrays if name.startswith("param.")
              for slot in optimizer.state_slots()}
    for name in sorted(found ^ needed):
        what = "is missing" if name in needed else f"is not state that {optimizer!r} keeps"
        raise ModelFileError(f"{path}: optimizer state opt.{name} {what}")
    optimizer.load_state_arrays(net.backend, {name: arrays["opt." + name] for name in found}, counters, net.dtype)
    return optimizer


def _new_params(net, arrays, path):
    """Each Dense layer's ``(W, b)`` from ``arrays`` on ``net``'s backend, not assigned yet."""
    try:
        return [(layer._param("W", arrays[f"param.{i}.W"], (layer.n_in, layer.n_out)),
                 layer._param("b", arrays[f"param.{i}.b"], (layer.n_out,)))
                for i, layer in enumerate(net.dense_layers)]
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: {exc}") from None


def read_checkpoint(net, path, settings, verbose=0):
    """Everything ``fit(resume=True)`` applies, read from ``path`` and checked whole, as a
    :data:`Resume`; None when there is no file (training starts afresh).

    Nothing of ``net`` changes here, so a refused checkpoint (a :class:`ModelFileError`, or
    a ``ValueError`` for another architecture or other ``settings``; see
    ``_check_same_training``) leaves its weights, loss, optimizer and batch order as they were.
    """
    if not os.path.exists(os.fspath(path)):
        if verbose:
            print(f"fit: no checkpoint at {path}; starting from epoch 1", file=sys.stderr)
        return None
    meta, arrays = _read(path, MAX_BYTES, with_state=True)
    state = _training_state(meta, path)
    optimizer = _checkpoint_optimizer(net, state, arrays, path)  # a new object: net's is untouched
    if [layer.config() for layer in net.layers] != meta["layers"]:
        raise ValueError(f"{path}: the checkpoint's architecture differs from this model's")
    if meta.get("dtype") != net.dtype:
        saved = meta.get("dtype")
        saved = saved if saved in ("float32", "float64") else _shown(saved)
        raise ValueError(f"{path}: the checkpoint is {saved}, this model {net.dtype}")
    _check_same_training(path, meta, state, settings)
    from .history import History

    return Resume(path, state["epoch"], History(state["history"]), optimizer,
                  _new_params(net, arrays, path), _checkpoint_rng(state.get("batch_rng"), net, path),
                  _checkpoint_dropout(state, net, path))


def _checkpoint_dropout(state, net, path):
    """``(epochs_trained, dropout_key)`` of the checkpoint (Dropout masks go on from there); a
    checkpoint written before they were kept counts its epochs and keeps the model's key."""
    epochs, key = state.get("epochs_trained", state["epoch"]), state.get("dropout_key")
    if not _is_count(epochs):
        raise ModelFileError(f"{path}: checkpoint epochs_trained is not a count: {_shown(epochs)}")
    if key is None:
        return epochs, net.dropout_key
    try:
        value = int(key, 16) if isinstance(key, str) and key.startswith("0x") and len(key) <= 18 else None
    except ValueError:
        value = None
    if value is None:
        raise ModelFileError(f"{path}: checkpoint dropout_key is not a 64-bit hex number: {_shown(key)}")
    return epochs, value


def apply_checkpoint(net, resume, verbose=0):
    """Give ``net`` what :func:`read_checkpoint` checked; returns ``(epochs_done, History)``.
    Only assignments: nothing here can fail half-way."""
    for layer, (W, b) in zip(net.dense_layers, resume.params):
        layer._W, layer._b = W, b
    net.optimizer, net.batch_rng = resume.optimizer, resume.batch_rng
    net.epochs_trained, net.dropout_key = resume.dropout
    if verbose:
        print(f"fit: resumed from {resume.path} after epoch {resume.epoch}", file=sys.stderr)
    return resume.epoch, resume.history
