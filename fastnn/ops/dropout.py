"""Dropout masks from a counter-based hash: the same mask for the same (key, epoch, layer, row,
unit) on every backend, however the rows are batched, ordered or split across processes.

No generator state: each mask element is a hash of its coordinates (splitmix64's finalizer,
unsigned 64-bit arithmetic that wraps identically in NumPy, CuPy, numba and CUDA C):

    base = mix(key ^ mix(epoch · 2⁶⁴/φ + layer))        one per layer and epoch
    h    = mix(mix(base ^ row) ^ unit)                   row: the sample's index in X
    keep = (h >> 11) >= threshold(p)                     53 uniform bits against ⌈p·2⁵³⌉

Kept units are scaled by 1 / (1 − p) (inverted dropout), so inference needs no scaling.
"""
from __future__ import annotations

import math

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # 2⁶⁴/φ: consecutive epochs land far apart before mixing
MIX1, MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def mix_int(x: int) -> int:
    """splitmix64's finalizer on a Python int (the scalar part of the key)."""
    x &= M64
    x = ((x ^ (x >> 30)) * MIX1) & M64
    x = ((x ^ (x >> 27)) * MIX2) & M64
    return x ^ (x >> 31)


def layer_base(key: int, epoch: int, layer: int) -> int:
    """The hash input shared by every element of one layer's masks in one epoch."""
    return mix_int(key ^ mix_int(epoch * GOLDEN + layer))


def threshold(p: float) -> int:
    """Keep a unit when its 53 hash bits are at least this: probability 1 − p, exactly p·2⁵³ values dropped."""
    return math.ceil(p * 2.0 ** 53)


def keep_scale(p: float) -> float:
    """What a kept unit is multiplied by (float64; the mask takes the model's dtype)."""
    return 1.0 / (1.0 - p)


def mask(xp, base: int, rows, n_units: int, p: float, dtype):
    """``(B, n_units)`` mask of ``rows`` (B row indices, an int array of ``xp``): 0 or 1/(1 − p)."""
    u64 = xp.uint64

    def mix(x):  # the same finalizer on uint64 arrays (their products wrap, as C's do)
        x = (x ^ (x >> u64(30))) * u64(MIX1)
        x = (x ^ (x >> u64(27))) * u64(MIX2)
        return x ^ (x >> u64(31))

    r = mix(xp.astype(rows, u64) ^ u64(base))  # (B,)
    units = xp.arange(n_units, dtype=u64)
    h = mix(r[:, None] ^ units[None, :])  # (B, n_units)
    keep = (h >> u64(11)) >= u64(threshold(p))
    scale = xp.asarray(keep_scale(p), dtype=dtype)
    return xp.where(keep, scale, xp.zeros_like(scale))
