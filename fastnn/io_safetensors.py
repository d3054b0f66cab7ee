"""Model files in the safetensors format: the weights for any framework, the description for fastnn.

>>> net.save("model.safetensors")               # the extension picks the format; atomic
>>> net = fastnn.load("model.safetensors", backend="numba")
>>> safetensors.numpy.load_file("model.safetensors")["param.0.W"]    # (n_in, n_out)

Layout (https://huggingface.co/docs/safetensors): 8 bytes, the header's length (little-endian
u64); the header, JSON; the tensors' bytes, back to back. The tensors are those of the ``.npz``
format: ``param.<i>.W`` (n_in, n_out) and ``param.<i>.b`` (n_out,) per Dense layer, in the
model's dtype (F32 or F64); W is PyTorch's ``Linear.weight`` transposed. The header's
``__metadata__`` holds the ``.npz`` format's JSON description as the string ``"fastnn"``.

fastnn reads and writes the format itself, so no package is needed: the header must be parsed
here anyway, to check a file from anyone before any of it is allocated. Reading applies the
``.npz`` format's rules (``fastnn.io``'s docstring): the header is capped
(``_MAX_HEADER_BYTES``) and its nesting counted before it is parsed; the description is checked
for size, depth, format and version; every tensor must be one the description calls for, with
its shape, a float dtype, and offsets that tile the data exactly, the total at most
``max_bytes``; all before a tensor is read. Anything else raises :class:`ModelFileError`.
"""
from __future__ import annotations

import json
import math
import os
import struct

import numpy as np

from .files import atomic_writer, open_regular, read_into
from .io_npz import (MAX_DEPTH, MAX_DESCRIPTION_BYTES, ModelFileError, _expected, _nesting, _refuse_other_names,
                     _shown, checked_description)

#: The key of ``__metadata__`` that holds the model's JSON description.
DESCRIPTION_KEY = "fastnn"
#: The safetensors dtypes fastnn reads (little-endian, as the format stores every number).
_DTYPES = {"F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8")}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}
# The description, escaped inside the header's JSON (each quote grows to two bytes), plus the
# tensors' entries (about 80 bytes each).
_MAX_HEADER_BYTES = 2 * MAX_DESCRIPTION_BYTES + (1 << 20)
_LENGTH_BYTES = 8
_ZIP_MAGIC = b"PK\x03\x04"


# ---- writing -----------------------------------------------------------------
def _write_atomic(path, arrays, meta):
    """Write ``arrays`` (name -> host float array) and the description ``meta`` to ``path``."""
    header, tensors, offset = {"__metadata__": {DESCRIPTION_KEY: json.dumps(meta)}}, [], 0
    for name, array in arrays.items():
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        header[name] = {"dtype": _CODES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        tensors.append(array)
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the format's padding: the data starts 8-byte aligned
    with atomic_writer(path) as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for array in tensors:
            f.write(array.reshape(-1).view(np.uint8))  # the array's own bytes, no copy


# ---- reading: the header ------------------------------------------------------
def _unique_keys(pairs):
    """A JSON object as a dict; a key given twice is refused (json would keep the last)."""
    found = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"key {_shown(key)} appears twice")
        found[key] = value
    return found


def _parse_json(raw, path, what):
    """``raw`` (bytes) parsed as JSON, its nesting counted first: json's parser recurses."""
    depth = _nesting(raw)
    if depth > MAX_DEPTH:
        raise ModelFileError(f"{path}: the {what} is nested {depth:,} deep; fastnn writes 4 levels "
                             f"and reads at most {MAX_DEPTH}")
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelFileError(f"{path}: the {what} is corrupt ({_shown(str(exc), 200)})") from None


def _read_header(f, path, size):
    """``(header, length)``: the header as a dict, checked for size and nesting before parsing."""
    head = f.read(_LENGTH_BYTES)
    if head.startswith(_ZIP_MAGIC):
        raise ModelFileError(f"{path}: not a safetensors file (it is a .npz (zip) file); fastnn reads a "
                             f".safetensors path as safetensors: give a .npz model a .npz name")
    if len(head) < _LENGTH_BYTES:
        raise ModelFileError(f"{path}: not a fastnn model file "
                             f"({'the file is empty' if not head else 'the file is truncated'})")
    length = struct.unpack("<Q", head)[0]
    if length > _MAX_HEADER_BYTES:
        raise ModelFileError(f"{path}: the safetensors header claims {length:,} bytes; fastnn reads at most "
                             f"{_MAX_HEADER_BYTES:,} (refused unread)")
    if length > size - _LENGTH_BYTES:
        raise ModelFileError(f"{path}: corrupt or truncated model file (the safetensors header claims "
                             f"{length:,} bytes; {size - _LENGTH_BYTES:,} follow its length)")
    raw = f.read(length)
    if len(raw) < length or not raw.startswith(b"{"):
        raise ModelFileError(f"{path}: not a safetensors file (no JSON header after the first 8 bytes)")
    return _parse_json(raw, path, "safetensors header"), length  # an object: it starts with {


def _description(header, path):
    """The model's description from ``__metadata__``, checked as the ``.npz`` format checks its own."""
    extra = header.get("__metadata__", {})
    if not isinstance(extra, dict) or not all(isinstance(value, str) for value in extra.values()):
        raise ModelFileError(f"{path}: corrupt safetensors header (__metadata__ must map names to strings)")
    text = extra.get(DESCRIPTION_KEY)
    if text is None:
        raise ModelFileError(f"{path}: not a fastnn model file (no fastnn description in its __metadata__); "
                             f"weights alone cannot rebuild a model: build the Sequential and assign each "
                             f"Dense layer's W and b")
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_DESCRIPTION_BYTES:
        raise ModelFileError(f"{path}: the model description takes {len(raw):,} bytes; fastnn reads "
                             f"at most {MAX_DESCRIPTION_BYTES:,} (fastnn.io.MAX_DESCRIPTION_BYTES)")
    meta = _parse_json(raw, path, "model description")
    return checked_description(meta, path)


# ---- reading: the tensors the description calls for ---------------------------------
def _is_int_list(value, length=None):
    """A JSON list of non-negative ints (not floats, not booleans), of ``length`` items if given."""
    return (isinstance(value, list) and (length is None or len(value) == length)
            and all(type(item) is int and item >= 0 for item in value))


def _span(entry, name, shape, path):
    """``(begin, end, dtype)`` of parameter ``name`` from its header entry, checked against ``shape``."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ModelFileError(f"{path}: corrupt safetensors header (the entry of {name} is "
                             f"{_shown(entry)}, not dtype, shape and data_offsets)")
    dtype = _DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise ModelFileError(f"{path}: parameter {name} has dtype {_shown(entry['dtype'])}; fastnn reads "
                             f"{', '.join(_DTYPES)}")
    if not _is_int_list(entry["shape"]) or tuple(entry["shape"]) != shape:
        raise ModelFileError(f"{path}: parameter {name} has shape {_shown(entry['shape'])}, but the "
                             f"architecture says {shape}")
    offsets = entry["data_offsets"]
    if not _is_int_list(offsets, 2) or offsets[1] - offsets[0] != math.prod(shape) * dtype.itemsize:
        raise ModelFileError(f"{path}: parameter {name} has data_offsets {_shown(offsets)}; its shape and "
                             f"dtype take {math.prod(shape) * dtype.itemsize:,} bytes")
    return offsets[0], offsets[1], dtype


def _spans(header, params, path, data_bytes, max_bytes):
    """name -> ``(begin, dtype)`` of every parameter, once the tensors tile the data exactly."""
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    _refuse_other_names(path, "tensor", sorted(set(tensors) - set(params)),
                        [name for name in params if name not in tensors])
    spans = [(*_span(tensors[name], name, shape, path), name) for name, shape in params.items()]
    spans.sort(key=lambda span: span[:2])  # by offsets only: dtypes do not compare
    end = 0
    for begin, stop, _, name in spans:
        if begin != end:
            raise ModelFileError(f"{path}: corrupt safetensors header (the data of {name} starts at {begin:,}, "
                                 f"not at {end:,} where the tensor before it ends)")
        end = stop
    if end > max_bytes:
        raise ModelFileError(f"{path}: its arrays take {end:,} bytes, more than max_bytes={max_bytes:,}; "
                             f"if you trust this file, load it with a larger max_bytes")
    if end != data_bytes:
        raise ModelFileError(f"{path}: corrupt or truncated model file (its tensors take {end:,} bytes; "
                             f"{data_bytes:,} follow the header)")
    return {name: (begin, dtype) for begin, _, dtype, name in spans}


def _read_tensor(f, path, name, start, dtype, shape):
    f.seek(start)
    array = np.empty(shape, dtype)
    if read_into(f, array) < array.nbytes:
        raise ModelFileError(f"{path}: corrupt or truncated model file (the data of {name} ends early)")
    if not np.all(np.isfinite(array)):
        raise ModelFileError(f"{path}: parameter {name} contains NaN or inf")
    return array


def _read(path, max_bytes):
    """``(meta, arrays)`` from a safetensors model file, or a :class:`ModelFileError` (see above)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file not found: {path}")
    with open_regular(path, ModelFileError) as f:
        size = os.fstat(f.fileno()).st_size
        header, length = _read_header(f, path, size)
        meta = _description(header, path)
        params, _ = _expected(meta, path)  # a checkpoint's optimizer state is never written here
        data_start = _LENGTH_BYTES + length
        spans = _spans(header, params, path, size - data_start, max_bytes)
        arrays = {name: _read_tensor(f, path, name, data_start + begin, dtype, params[name])
                  for name, (begin, dtype) in spans.items()}
    return meta, arrays
