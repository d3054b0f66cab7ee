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
  previous file intact, and the next save removes what a killed one left.
- Reading trusts nothing in the file, which may come from anyone. It never
  unpickles (a model file can never run code) and opens only a regular file (a
  named pipe or device is refused, not waited on). The description is read
  first: at most ``MAX_DESCRIPTION_BYTES``, nested at most ``MAX_DEPTH`` deep.
  Every other member must be an array the description calls for, whose size as
  the zip's directory declares it fits its shape; together they may hold at most
  ``max_bytes`` (``MAX_BYTES``, 1 GiB, unless the caller passes more). All that
  is checked before anything is inflated, and inflating stops where the shape
  ends, whatever the zip claims. Anything else (corrupt, truncated, foreign,
  pickled, oversized, newer) raises :class:`ModelFileError` naming the file.
"""
from __future__ import annotations

import collections
import json
import math
import os
import struct
import sys
import zipfile
import zlib

import numpy as np

from .files import atomic_writer, open_regular, read_into

FORMAT = "fastnn-model"
VERSION = 1
#: What ``load`` (and a resume) reads of a file's arrays at most, unless ``max_bytes`` says more.
MAX_BYTES = 1 << 30
#: The JSON description's cap: a checkpoint's history grows by about 150 bytes an epoch.
MAX_DESCRIPTION_BYTES = 8 << 20
#: How deeply the description may nest lists and objects (fastnn writes 4 levels).
MAX_DEPTH = 16
_MAX_DIRECTORY_BYTES = 4 << 20  # the zip's list of members (~40,000): zipfile keeps ~10x that in memory
_NPY_HEADER_BYTES = 16 << 10   # an .npy header before its data (NumPy writes 128 bytes, reads <= 10,000)
_WIDEST_FLOAT = 8              # float64: no parameter needs more bytes per number
_ZIP_MAGIC = b"PK\x03\x04"  # a .npz is a zip archive


class ModelFileError(ValueError):
    """A file that is not a readable fastnn model (corrupt, truncated, foreign, oversized, newer)."""


def _shown(value, width=60):
    """``repr(value)``, cut to ``width`` characters: messages quote what an untrusted file holds."""
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _is_count(value):
    """A positive int, as sizes and epochs are (JSON's true is not 1 here)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


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


# ---- reading: the zip, its members, the description --------------------------------
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


def _corrupt(path, exc, where=""):
    return ModelFileError(f"{path}: corrupt or truncated model file ({where}{type(exc).__name__}: {exc})")


def _open_zip(f, path):
    """The zip archive in the open file ``f``; its directory's size is checked before zipfile parses it."""
    head = f.read(8)
    if not head.startswith(_ZIP_MAGIC):
        raise ModelFileError(f"{path}: not a fastnn model file ({_what_it_is(head)})")
    try:
        end = zipfile._EndRecData(f)  # the very end record ZipFile reads: no second opinion to disagree
    except (OSError, struct.error) as exc:
        raise _corrupt(path, exc) from None
    if end is not None and end[zipfile._ECD_SIZE] > _MAX_DIRECTORY_BYTES:
        raise ModelFileError(f"{path}: the zip directory takes {end[zipfile._ECD_SIZE]:,} bytes; a fastnn "
                             f"model's takes far less (at most {_MAX_DIRECTORY_BYTES:,} are read)")
    try:
        return zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, struct.error) as exc:
        raise _corrupt(path, exc) from None


def _members(archive, path):
    """Member name without ``.npy`` -> ZipInfo; what ``np.savez`` never writes is refused."""
    members = {}
    for info in archive.infolist():
        name = info.filename
        if not name.endswith(".npy"):
            raise ModelFileError(f"{path}: not a fastnn model file (member {_shown(name)} is not an array)")
        if name[:-4] in members:
            raise ModelFileError(f"{path}: corrupt model file (member {_shown(name)} appears twice)")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 0x1:
            raise ModelFileError(f"{path}: member {_shown(name)} is encrypted or compressed in a way fastnn "
                                 f"does not read (np.savez stores, np.savez_compressed deflates)")
        members[name[:-4]] = info
    return members


def _read_array(archive, info, path, check):
    """The array in member ``info``: its .npy header first, given to ``check(shape, dtype)``
    (which raises to refuse), then exactly the bytes that header implies, never more."""
    try:
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f".npy format version {version}")
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran_order, dtype = read_header(member, max_header_size=_NPY_HEADER_BYTES)
            if dtype.hasobject:
                raise ModelFileError(f"{path}: contains a pickled object array; fastnn model files never "
                                     f"do, and it was not loaded (nothing was executed)")
            check(shape, dtype)
            data_bytes = math.prod(shape) * dtype.itemsize
            if member.tell() + data_bytes != info.file_size:
                raise ModelFileError(f"{path}: member {info.filename} claims {info.file_size:,} bytes, but its "
                                     f".npy header and shape make {member.tell() + data_bytes:,}")
            array = np.empty(shape[::-1] if fortran_order else shape, dtype)
            found = read_into(member, array)
            if found < data_bytes:
                raise EOFError(f"the data ends after {found:,} of {data_bytes:,} bytes")
            if member.read(1):
                raise ValueError("more data than its .npy header says")
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error, struct.error) as exc:
        raise _corrupt(path, exc, f"member {info.filename}: ") from None
    return array.T if fortran_order else array


def _nesting(raw):
    """How deeply the JSON text ``raw`` nests, counted without parsing it: json's parser
    recurses, so a file nested deeper than the recursion limit would break it.

    Brackets inside strings do not count. Removing every escaped backslash, then
    every escaped quote, leaves only the quotes that open and close strings.
    """
    text = np.frombuffer(raw.replace(b"\\\\", b"").replace(b'\\"', b""), np.uint8)
    outside = np.cumsum(text == ord('"'), dtype=np.int32) % 2 == 0
    opens = (text == ord("[")) | (text == ord("{"))
    closes = (text == ord("]")) | (text == ord("}"))
    steps = (opens & outside).astype(np.int8) - (closes & outside)
    return int(np.cumsum(steps, dtype=np.int32).max(initial=0))


def _check_description_array(path):
    def check(shape, dtype):
        if dtype != np.uint8 or len(shape) != 1:
            raise ModelFileError(f"{path}: not a fastnn model file (no fastnn description inside)")
        if shape[0] > MAX_DESCRIPTION_BYTES:
            raise ModelFileError(f"{path}: the model description takes {shape[0]:,} bytes; fastnn reads "
                                 f"at most {MAX_DESCRIPTION_BYTES:,} (fastnn.io.MAX_DESCRIPTION_BYTES)")
    return check


def _read_description(archive, members, path):
    """The JSON description, checked for size and depth before it is parsed, and for format and version."""
    info = members.get("meta")
    if info is None:
        raise ModelFileError(f"{path}: not a fastnn model file (no fastnn description inside)")
    if info.file_size > MAX_DESCRIPTION_BYTES + _NPY_HEADER_BYTES:
        raise ModelFileError(f"{path}: the model description claims {info.file_size:,} bytes; fastnn reads "
                             f"at most {MAX_DESCRIPTION_BYTES:,} (fastnn.io.MAX_DESCRIPTION_BYTES)")
    raw = _read_array(archive, info, path, _check_description_array(path)).tobytes()
    depth = _nesting(raw)
    if depth > MAX_DEPTH:
        raise ModelFileError(f"{path}: the model description is nested {depth:,} deep; fastnn writes 4 "
                             f"levels and reads at most {MAX_DEPTH}")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelFileError(f"{path}: the model description is corrupt ({_shown(str(exc), 200)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a fastnn model file (no fastnn description inside)")
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelFileError(f"{path}: the model description has no valid format version ({_shown(version)})")
    if version > VERSION:
        by = f"fastnn {_shown(meta['fastnn_version'])}, " if isinstance(meta.get("fastnn_version"), str) else ""
        raise ModelFileError(f"{path}: written by a newer fastnn ({by}file format {version}; this "
                             f"fastnn reads format {VERSION}); upgrade fastnn to load it")
    return meta


# ---- reading: the arrays the description calls for --------------------------------------
def _expected(meta, path):
    """``(params, state)``: name -> shape of each array the description calls for: every Dense
    layer's W and b and, in a checkpoint, the optimizer state any optimizer keeps for them."""
    from .optim import OPTIMIZERS

    layers = meta.get("layers")
    if not isinstance(layers, list) or not all(isinstance(c, dict) for c in layers):
        raise ModelFileError(f"{path}: the model description has no valid layer list")
    params = {}
    for i, config in enumerate(c for c in layers if c.get("type") == "Dense"):
        n_in, n_out = config.get("n_in"), config.get("n_out")
        if not (_is_count(n_in) and _is_count(n_out)):
            raise ModelFileError(f"{path}: Dense layer {i} has no valid sizes "
                                 f"(n_in {_shown(n_in)}, n_out {_shown(n_out)})")
        params[f"param.{i}.W"], params[f"param.{i}.b"] = (n_in, n_out), (n_out,)
    slots = {slot for kind in OPTIMIZERS.values() for slot in kind.slots}
    state = {f"opt.{name[len('param.'):]}.{slot}": shape
             for name, shape in params.items() for slot in sorted(slots)} if "checkpoint" in meta else {}
    return params, state


def _check_sizes(members, wanted, path, max_bytes):
    """Before inflating anything: no member may declare more bytes than its shape needs, and
    together they may not declare more than ``max_bytes``."""
    total = 0
    for name, shape in wanted.items():
        size, most = members[name].file_size, math.prod(shape) * _WIDEST_FLOAT + _NPY_HEADER_BYTES
        if size > most:
            raise ModelFileError(f"{path}: member {name}.npy claims {size:,} bytes; its shape {shape} needs at "
                                 f"most {most:,} (refused before inflating)")
        total += size
    if total > max_bytes:
        raise ModelFileError(f"{path}: its arrays take {total:,} bytes, more than max_bytes={max_bytes:,}; "
                             f"if you trust this file, load it with a larger max_bytes")


def _check_float_array(path, name, shape):
    what = "parameter" if name.startswith("param.") else "optimizer state"

    def check(found, dtype):
        if dtype.kind != "f" or dtype.itemsize > _WIDEST_FLOAT:
            raise ModelFileError(f"{path}: {what} {name} has dtype {dtype}, not float")
        if found != shape:
            raise ModelFileError(f"{path}: {what} {name} has shape {found}, but the architecture says {shape}")
    return check


def _read_float_array(archive, info, path, name, shape):
    array = _read_array(archive, info, path, _check_float_array(path, name, shape))
    if not np.all(np.isfinite(array)):
        what = "parameter" if name.startswith("param.") else "optimizer state"
        raise ModelFileError(f"{path}: {what} {name} contains NaN or inf")
    return array


def _read(path, max_bytes, with_state=False):
    """``(meta, arrays)`` from a model file: the parameters and, ``with_state``, the optimizer
    state; or a :class:`ModelFileError` (see the module docstring for what is checked when)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        hint = f" (there is a {path}.npz: the path is used exactly as given)" \
            if os.path.exists(path + ".npz") else ""
        raise FileNotFoundError(f"model file not found: {path}{hint}")
    with open_regular(path, ModelFileError) as f, _open_zip(f, path) as archive:
        members = _members(archive, path)
        meta = _read_description(archive, members, path)
        params, state = _expected(meta, path)
        unexpected = sorted(set(members) - {"meta"} - set(params) - set(state))
        if unexpected:
            raise ModelFileError(f"{path}: member {_shown(unexpected[0] + '.npy')} is not part of the model "
                                 f"its description gives (refused unread)")
        missing = [name for name in params if name not in members]
        if missing:
            raise ModelFileError(f"{path}: parameter {missing[0]} is missing")
        wanted = dict(params)
        if with_state:
            wanted.update((name, shape) for name, shape in state.items() if name in members)
        _check_sizes(members, wanted, path, max_bytes)
        arrays = {name: _read_float_array(archive, members[name], path, name, shape)
                  for name, shape in wanted.items()}
    return meta, arrays


def _set_params(net, arrays, path):
    for i, layer in enumerate(net.dense_layers):
        try:
            layer.W, layer.b = arrays[f"param.{i}.W"], arrays[f"param.{i}.b"]
        except KeyError as exc:
            raise ModelFileError(f"{path}: parameter {exc} is missing") from None
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: {exc}") from None


def load(path, backend=None, max_bytes=None):
    """A :class:`~fastnn.Sequential` from a file written by ``save`` (any backend -> any backend).

    >>> net = fastnn.load("model.npz", backend="numpy")
    >>> net.predict(X)

    ``backend``: a name or backend object, None for the current default.
    ``max_bytes``: the most the file's arrays may take (default ``MAX_BYTES``, 1 GiB),
    checked before anything is inflated; raise it for a larger model you trust. A
    file that is not a fastnn model this version can read (or is larger) raises
    :class:`ModelFileError` (a ``ValueError``); a missing file ``FileNotFoundError``.
    """
    from .backend import get_backend
    from .layers import layer_from_config
    from .losses import get_loss
    from .model import Sequential
    from .validation import count

    target = get_backend(backend)  # an unknown or unusable backend is its own clear error, first
    max_bytes = MAX_BYTES if max_bytes is None else count("max_bytes", max_bytes, minimum=0)
    meta, arrays = _read(path, max_bytes)
    try:
        layers = [layer_from_config(config) for config in meta["layers"]]
        net = Sequential(*layers, backend=target, dtype=meta["dtype"])
        net.loss = get_loss(meta["loss"]) if meta.get("loss") else None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelFileError(f"{path}: the architecture cannot be rebuilt ({_shown(str(exc), 200)})") from None
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
    return _shown(value)


#: The lists a checkpoint's history may hold: what fit records each epoch.
_HISTORY_KEYS = ("epoch", "loss", "accuracy", "seconds", "val_loss", "val_accuracy")

#: What ``read_checkpoint`` checked and ``apply_checkpoint`` assigns.
Resume = collections.namedtuple("Resume", "path epoch history optimizer params batch_rng")


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
                  _new_params(net, arrays, path), _checkpoint_rng(state.get("batch_rng"), net, path))


def apply_checkpoint(net, resume, verbose=0):
    """Give ``net`` what :func:`read_checkpoint` checked; returns ``(epochs_done, History)``.
    Only assignments: nothing here can fail half-way."""
    for layer, (W, b) in zip(net.dense_layers, resume.params):
        layer._W, layer._b = W, b
    net.optimizer, net.batch_rng = resume.optimizer, resume.batch_rng
    if verbose:
        print(f"fit: resumed from {resume.path} after epoch {resume.epoch}", file=sys.stderr)
    return resume.epoch, resume.history
