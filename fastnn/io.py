"""Model files: a ``.npz`` of arrays plus a JSON description; never pickle.

>>> net.save("model.npz")                    # atomic; any backend
>>> net = fastnn.load("model.npz", backend="numba")

A path ending in ``.safetensors`` is written and read as safetensors instead (the same
arrays, the description in its ``__metadata__``, the same checks on reading; see
``fastnn.io_safetensors``), so other frameworks can read the weights; any other path is a ``.npz``.

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

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .backend import BackendLike
    from .model import Sequential

from . import io_npz, io_safetensors

# io_npz holds the format and its caps, io_checkpoint the checkpoints; their public names
# (and _nesting, which the tests check) stay importable from here
from .io_checkpoint import Resume, apply_checkpoint, read_checkpoint, save_checkpoint  # noqa: F401
from .io_npz import (FORMAT, MAX_BYTES, MAX_DEPTH, MAX_DESCRIPTION_BYTES, VERSION,  # noqa: F401
                     ModelFileError, _describe, _nesting, _param_arrays, _shown)


def _format(path):
    """The module that writes and reads ``path``'s format, chosen by its extension."""
    return io_safetensors if os.fsdecode(path).lower().endswith(".safetensors") else io_npz


def save(net: Sequential, path: str | os.PathLike[str]) -> None:
    """Write ``net`` to ``path`` atomically: safetensors for a ``.safetensors`` path, else ``.npz``."""
    _format(path)._write_atomic(path, _param_arrays(net), _describe(net))


def _set_params(net, arrays, path):
    for i, layer in enumerate(net.dense_layers):
        try:
            layer.W, layer.b = arrays[f"param.{i}.W"], arrays[f"param.{i}.b"]
        except KeyError as exc:
            raise ModelFileError(f"{path}: parameter {exc} is missing") from None
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: {exc}") from None


def load(path: str | os.PathLike[str], backend: BackendLike = None, max_bytes: int | None = None) -> Sequential:
    """A :class:`~fastnn.Sequential` from a file written by ``save`` (any backend -> any backend).

    >>> net = fastnn.load("model.npz", backend="numpy")       # or "model.safetensors"
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
    meta, arrays = _format(path)._read(path, max_bytes)
    try:
        layers = [layer_from_config(config) for config in meta["layers"]]
        net = Sequential(*layers, backend=target, dtype=meta["dtype"])
        net.loss = get_loss(meta["loss"]) if meta.get("loss") else None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelFileError(f"{path}: the architecture cannot be rebuilt ({_shown(str(exc), 200)})") from None
    _set_params(net, arrays, path)
    return net
