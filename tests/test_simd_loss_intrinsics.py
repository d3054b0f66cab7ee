"""The SIMD intrinsics the compiled epoch's loss uses: vlog against math.log, vexp2 against vexp,
vfind against a scan (numba backend only)."""
import math

import numpy as np
import pytest

pytest.importorskip("numba", reason="numba is not installed: pip install 'fastnn[numba]'")

from numba import njit  # noqa: E402

from fastnn.backends.numba.simd import vexp, vexp2, vfind, vload, vlog, vstore, vwidth  # noqa: E402


@njit
def _logs(x, out):
    VW = vwidth(x)
    for i in range(0, x.shape[0], VW):
        vstore(out, i, vlog(vload(x, i)))


@njit
def _exps(x, one, two):
    VW = vwidth(x)
    for i in range(0, x.shape[0], 2 * VW):
        a, b = vexp2(vload(x, i), vload(x, i + VW))
        vstore(two, i, a)
        vstore(two, i + VW, b)
        vstore(one, i, vexp(vload(x, i)))
        vstore(one, i + VW, vexp(vload(x, i + VW)))


@njit
def _find(x, at, value):
    return vfind(vload(x, at), value)


@njit
def _width(x):
    return vwidth(x)


def _padded(values, dtype):
    x = np.asarray(values, dtype=dtype)
    width = 64 // x.itemsize * 2  # two vectors of the widest registers
    return np.concatenate([x, np.ones(-len(x) % width, dtype)])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_vlog_is_within_an_ulp_of_math_log_and_keeps_the_special_values(dtype):
    g = np.random.default_rng(0)
    finfo = np.finfo(dtype)
    normal = np.concatenate([np.exp(g.uniform(-80, 80, 4000)), g.uniform(0.5, 2.0, 4000), 1 + g.uniform(-1e-6, 1e-6, 500),
                             [finfo.tiny, finfo.max, finfo.smallest_subnormal, 1.0, 2.0, math.sqrt(0.5), math.sqrt(2)]])
    x = _padded(normal, dtype)
    out = np.empty_like(x)
    _logs(x, out)
    exact = np.array([math.log(float(v)) for v in x])
    ulps = np.abs(out.astype(np.float64) - exact) / np.spacing(np.abs(exact.astype(dtype))).astype(np.float64)
    assert np.nanmax(ulps[exact != 0]) <= 1.0
    assert np.all(out[x == 1] == 0)

    special = _padded([0.0, -0.0, -1.0, np.inf, -np.inf, np.nan], dtype)
    out = np.empty_like(special)
    _logs(special, out)
    assert out[0] == -np.inf and out[1] == -np.inf and out[3] == np.inf
    assert np.isnan(out[2]) and np.isnan(out[4]) and np.isnan(out[5])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_vexp2_gives_vexps_numbers_nan_included(dtype):
    g = np.random.default_rng(1)
    x = _padded(np.concatenate([g.uniform(-30, 0, 1000), [np.nan, -np.inf, np.inf, 1000.0, -1000.0, 0.0]]), dtype)
    one, two = np.empty_like(x), np.empty_like(x)
    _exps(x, one, two)
    assert np.array_equal(one, two, equal_nan=True)
    assert np.isnan(one[np.isnan(x)]).all() and np.all(one[x == -np.inf] == 0) and np.all(one[x == np.inf] == np.inf)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_vfind_gives_the_first_equal_lane_or_the_width(dtype):
    width = _width(np.zeros(1, dtype))
    g = np.random.default_rng(2)
    for _ in range(50):
        x = g.integers(0, 3, 2 * width).astype(dtype)
        for value in (0.0, 1.0, 2.0, 7.0):
            hits = np.flatnonzero(x[:width] == value)
            assert _find(x, 0, dtype(value)) == (hits[0] if len(hits) else width)
    x = np.ones(width, dtype)
    x[1], x[2] = -0.0, 0.0
    assert _find(x, 0, dtype(0.0)) == 1  # −0 == +0, as argmax's comparisons have it
