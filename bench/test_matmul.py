"""The three products of a Dense layer (and a square 1024³), fastnn's ``gemm`` beside the peers.

Shapes: the first layer of 784-30-10 and 784-128-10 at batch 10, 128 and 1024;
float32 and float64. One group per (dtype, product). In the numba process NumPy's own ``@``
is timed right after numba's ``gemm`` of each product (``fastnn-numba-numpy@``), and then the two
in turns, round by round (``vs_numpy_interleaved``): the gemm target's measure, free of the drift
between processes minutes apart and of a slow spell during one of two benchmarks.
"""
import pytest

from . import entries
from .timing import interleaved, measure
from .workloads import MATMUL_DTYPES, matmul_operands, matmul_products


@pytest.mark.benchmark(max_time=1.0)  # µs-long calls: more rounds steady the medians the gemm target compares
@pytest.mark.parametrize("entry", entries.params(entries.MATMUL))
@pytest.mark.parametrize("product", matmul_products(), ids=lambda p: p.key)
@pytest.mark.parametrize("dtype", MATMUL_DTYPES)
def test_matmul(benchmark, dtype, product, entry):
    entries.require(entry)
    A, B = matmul_operands(product, dtype)
    fn = entries.matmul(entry, product, A, B)
    measure(benchmark, entry, fn, f"matmul {dtype} {product.key} ({product.formula})", suite="matmul",
            flops=product.flops, dtype=dtype, product=product.key)
    if entry == entries.Entry("fastnn-numba"):  # the gemm target: numba's gemm and NumPy's @ in turns
        numpy_fn = entries.matmul(entries.Entry("fastnn-numba", entries.SAME_PROCESS_NUMPY), product, A, B)
        ours, numpy = interleaved(fn, numpy_fn)
        benchmark.extra_info.update(interleaved_s=ours, interleaved_numpy_s=numpy, vs_numpy_interleaved=ours / numpy)
