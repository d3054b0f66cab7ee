"""The container of model files and checkpoints: a ``.npz`` of arrays plus a JSON description.

Writing: the arrays and the description of a network, atomically. Reading: a
file that may come from anyone, with a cap on everything it could make us read
or allocate, all checked before anything is inflated (``fastnn.io``'s docstring
says what is checked when). ``fastnn.io`` (models) and ``fastnn.io_checkpoint``
build on it.
"""
from __future__ import annotations

import json
import math
import os
import struct
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


def _refuse_other_names(path, kind, unexpected, missing):
    """A file's names against its description's: one the model does not have is refused before
    anything is read, a parameter it lacks is named."""
    if unexpected:
        raise ModelFileError(f"{path}: {kind} {_shown(unexpected[0])} is not part of the model its "
                             f"description gives (refused unread)")
    if missing:
        raise ModelFileError(f"{path}: parameter {missing[0]} is missing")


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
    return checked_description(meta, path)


def checked_description(meta, path):
    """``meta`` (parsed JSON) when it is a fastnn model description of a format this fastnn reads."""
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
        _refuse_other_names(path, "member", [name + ".npy" for name in unexpected],
                            [name for name in params if name not in members])
        wanted = dict(params)
        if with_state:
            wanted.update((name, shape) for name, shape in state.items() if name in members)
        _check_sizes(members, wanted, path, max_bytes)
        arrays = {name: _read_float_array(archive, members[name], path, name, shape)
                  for name, shape in wanted.items()}
    return meta, arrays
