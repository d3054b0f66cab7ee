"""The machine's float32 GEMM peak, measured in the same run: a 2048³ sgemm per library.

The report takes the best of them as the peak that epoch GFLOP/s are compared with.
"""
import numpy as np
import pytest

from . import entries
from .timing import measure
from .workloads import PEAK_SIZE, Product


@pytest.mark.benchmark(max_time=2.0)
@pytest.mark.parametrize("entry", entries.params(entries.PEAK))
def test_sgemm_peak(benchmark, entry):
    entries.require(entry)
    product = Product("square", (PEAK_SIZE, PEAK_SIZE), (PEAK_SIZE, PEAK_SIZE))
    rng = np.random.default_rng(0)
    A, B = (rng.standard_normal(shape).astype(np.float32) for shape in (product.a_shape, product.b_shape))
    fn = entries.matmul(entry, product, A, B)
    measure(benchmark, entry, fn, f"peak sgemm {PEAK_SIZE}", suite="peak", flops=product.flops,
            dtype="float32", product=product.key)
