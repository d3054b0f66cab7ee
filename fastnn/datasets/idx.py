"""The IDX file format of MNIST, read strictly and written back.

An IDX file is a 4-byte magic number ``00 00 <type> <ndim>``, then ``ndim``
big-endian uint32 sizes, then the data, big-endian, C order. MNIST's images
are magic ``0x00000803`` (uint8, 3-D), its labels ``0x00000801`` (uint8, 1-D).

>>> write_idx("labels-idx1-ubyte.gz", np.array([5, 0, 4], dtype=np.uint8))
>>> read_idx("labels-idx1-ubyte.gz")
array([5, 0, 4], dtype=uint8)

Files may be gzip-compressed (recognised by their first bytes, not their
name: browsers often unpack a ``.gz`` and keep the name). Anything that is
not exactly what its header says (truncated, trailing bytes, unknown type),
claims more than ``max_bytes`` or is not a regular file raises
:class:`IDXError` naming the file; the header is checked before the data is
read or decompressed.
"""
from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..files import atomic_writer, open_regular, read_into
from ..validation import count

#: type code -> dtype (big-endian, as stored)
IDX_TYPES: dict[int, np.dtype] = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
             0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_CODES = {dtype.newbyteorder("="): code for code, dtype in IDX_TYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


#: What ``read_idx`` reads of a file's data at most, unless ``max_bytes`` says more: full
#: MNIST's largest file (60,000 training images) holds 47 MB, so this fits it five times over.
MAX_BYTES = 256 << 20


class IDXError(ValueError):
    """A file that is not a valid IDX file (or not the one expected, or larger than allowed)."""


def _header(stream, name):
    """``(dtype, shape, header_bytes)`` from the start of ``stream``; nothing past the header is read."""
    magic = stream.read(4)
    if len(magic) < 4:
        raise IDXError(f"{name}: not an IDX file (only {len(magic)} bytes)")
    if magic[0:2] != b"\x00\x00":
        raise IDXError(f"{name}: not an IDX file (magic number 0x{magic.hex()} does not start with 0000)")
    code, ndim = magic[2], magic[3]
    if code not in IDX_TYPES:
        raise IDXError(f"{name}: unknown IDX data type code 0x{code:02x} "
                       f"(known: {', '.join(f'0x{c:02x}' for c in IDX_TYPES)})")
    if ndim == 0:
        raise IDXError(f"{name}: IDX header says 0 dimensions")
    header = 4 + 4 * ndim
    sizes = stream.read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise IDXError(f"{name}: truncated IDX header ({4 + len(sizes)} bytes, the header needs {header})")
    return IDX_TYPES[code], struct.unpack(f">{ndim}I", sizes), header


def _truncated(name, shape, expected, found):
    return IDXError(f"{name}: truncated: shape {shape} needs {expected:,} bytes of data, the file has {found:,}")


def _read_stream(stream, name, max_bytes, size=None):
    """The array in the IDX ``stream`` (plain, or a decompressing one when ``size`` is None).

    The header comes first, and what it claims is checked before any data is read: against
    the file's ``size`` where known, and against ``max_bytes``. Then exactly that much data is
    read, never more, so a gzip that claims or holds 10^9 images costs no more than allowed.
    """
    dtype, shape, header = _header(stream, name)
    expected = math.prod(shape) * dtype.itemsize
    if size is not None and size - header < expected:
        raise _truncated(name, shape, expected, size - header)
    if size is not None and size - header > expected:
        raise IDXError(f"{name}: {size - header - expected:,} unexpected bytes after the data of shape {shape}")
    if max_bytes is not None and expected > max_bytes:
        raise IDXError(f"{name}: the header claims shape {shape}, {expected:,} bytes of data, more than "
                       f"max_bytes={max_bytes:,}; if you trust this file, read it with a larger max_bytes")
    array = np.empty(shape, dtype)
    found = read_into(stream, array)
    if found < expected:
        raise _truncated(name, shape, expected, found)
    if size is None and stream.read(1):
        raise IDXError(f"{name}: unexpected bytes after the data of shape {shape}")
    return array.astype(dtype.newbyteorder("="), copy=False)  # native order; ours, so writable


def parse_idx(data, name="<bytes>"):
    """The array held by the IDX bytes ``data`` (native byte order); ``name`` is for errors."""
    return _read_stream(io.BytesIO(data), name, max_bytes=None, size=len(data))


def read_idx(path: str | os.PathLike[str], max_bytes: int = MAX_BYTES) -> NDArray[Any]:
    """The array in the IDX file ``path`` (gzipped or not), native byte order.

    ``max_bytes``: the most data the header may claim (default ``MAX_BYTES``, 256 MiB),
    checked before anything is read or decompressed; raise it for a larger file you
    trust. A named pipe, device or folder is refused without reading it.
    """
    path = os.fspath(path)
    max_bytes = count("max_bytes", max_bytes, minimum=0)
    with open_regular(path, IDXError) as f:
        if f.read(2) != _GZIP_MAGIC:
            f.seek(0)
            return _read_stream(f, path, max_bytes, size=os.fstat(f.fileno()).st_size)
        f.seek(0)
        try:
            with gzip.GzipFile(fileobj=f, mode="rb") as stream:
                return _read_stream(stream, path, max_bytes)
        except (EOFError, OSError, zlib.error) as exc:
            raise IDXError(f"{path}: corrupt or truncated gzip file ({exc})") from None


def idx_bytes(array):
    """``array`` encoded as an IDX file (bytes)."""
    array = np.asarray(array)
    code = _CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise TypeError(f"IDX cannot store dtype {array.dtype}; "
                        f"use one of {', '.join(str(d.newbyteorder('=')) for d in IDX_TYPES.values())}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX stores 1 to 255 dimensions, got {array.ndim}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=IDX_TYPES[code]).tobytes()


def write_idx(path: str | os.PathLike[str], array: ArrayLike) -> None:
    """Write ``array`` to ``path`` as IDX, gzipped when the name ends in ``.gz``; atomic."""
    data = idx_bytes(array)
    if os.fspath(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    with atomic_writer(path) as f:
        f.write(data)
