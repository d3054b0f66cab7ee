"""The IDX file format of MNIST, read strictly and written back.

An IDX file is a 4-byte magic number ``00 00 <type> <ndim>``, then ``ndim``
big-endian uint32 sizes, then the data, big-endian, C order. MNIST's images
are magic ``0x00000803`` (uint8, 3-D), its labels ``0x00000801`` (uint8, 1-D).

>>> write_idx("labels-idx1-ubyte.gz", np.array([5, 0, 4], dtype=np.uint8))
>>> read_idx("labels-idx1-ubyte.gz")
array([5, 0, 4], dtype=uint8)

Files may be gzip-compressed (recognised by their first bytes, not their
name: browsers often unpack a ``.gz`` and keep the name). Anything that is
not exactly what its header says (truncated, trailing bytes, unknown type)
raises :class:`IDXError` naming the file.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib

import numpy as np

from ..files import atomic_writer

#: type code -> dtype (big-endian, as stored)
IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
             0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_CODES = {dtype.newbyteorder("="): code for code, dtype in IDX_TYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


class IDXError(ValueError):
    """A file that is not a valid IDX file (or not the one expected)."""


def _raw_bytes(path):
    with open(path, "rb") as f:  # missing file, no permission: Python's own clear OSError
        data = f.read()
    if data.startswith(_GZIP_MAGIC):
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as exc:
            raise IDXError(f"{path}: corrupt or truncated gzip file ({exc})") from None
    return data


def parse_idx(data, name="<bytes>"):
    """The array held by the IDX bytes ``data`` (native byte order); ``name`` is for errors."""
    if len(data) < 4:
        raise IDXError(f"{name}: not an IDX file (only {len(data)} bytes)")
    if data[0:2] != b"\x00\x00":
        raise IDXError(f"{name}: not an IDX file (magic number 0x{data[:4].hex()} "
                       f"does not start with 0000)")
    code, ndim = data[2], data[3]
    if code not in IDX_TYPES:
        raise IDXError(f"{name}: unknown IDX data type code 0x{code:02x} "
                       f"(known: {', '.join(f'0x{c:02x}' for c in IDX_TYPES)})")
    if ndim == 0:
        raise IDXError(f"{name}: IDX header says 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(f"{name}: truncated IDX header ({len(data)} bytes, the header needs {header})")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_TYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    found = len(data) - header
    if found < expected:
        raise IDXError(f"{name}: truncated: shape {shape} needs {expected:,} bytes of data, "
                       f"the file has {found:,}")
    if found > expected:
        raise IDXError(f"{name}: {found - expected:,} unexpected bytes after the data of shape {shape}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a native, writable copy


def read_idx(path):
    """The array in the IDX file ``path`` (gzipped or not), native byte order."""
    path = os.fspath(path)
    return parse_idx(_raw_bytes(path), path)


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


def write_idx(path, array):
    """Write ``array`` to ``path`` as IDX, gzipped when the name ends in ``.gz``; atomic."""
    data = idx_bytes(array)
    if os.fspath(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    with atomic_writer(path) as f:
        f.write(data)
