"""The entries of each suite: an implementation (one process under bench.run) and a variant.

One place maps an entry to its module, so the suites stay short and a new peer
(e.g. fastnn-cupy, torch-cuda) is one line per suite plus its module.
"""
from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass

import pytest

from .workloads import IMPLS


@dataclass(frozen=True)
class Entry:
    impl: str          # a key of workloads.IMPLS: the process it runs in
    variant: str = ""  # "1t"/"2t" (threads), "step"/"scan" (JAX)

    @property
    def id(self):
        return f"{self.impl}-{self.variant}" if self.variant else self.impl

    @property
    def threads(self):
        return int(self.variant[:-1]) if self.variant.endswith("t") else None


def _module(impl):
    if impl.startswith("fastnn-"):
        return importlib.import_module("bench.impl_fastnn")
    return importlib.import_module(f"bench.peer_{impl}")


#: ``fastnn-numba/numpy@``: NumPy's own ``@`` timed in the numba process, right beside its gemm.
#: The gemm target compares with it: both call the same OpenBLAS, and times of separate processes
#: minutes apart drift by several per cent on these shared machines.
SAME_PROCESS_NUMPY = "numpy@"
MATMUL = [Entry("fastnn-numpy"), Entry("fastnn-numba"), Entry("fastnn-numba", SAME_PROCESS_NUMPY),
          Entry("numpy"), Entry("torch"), Entry("jax")]
PEAK = [Entry("numpy"), Entry("torch"), Entry("jax")]
_THREADED = [Entry("numpy", "1t"), Entry("numpy", "2t"), Entry("torch", "1t"), Entry("torch", "2t")]
STEP = [Entry("fastnn-numpy"), Entry("fastnn-numba"), *_THREADED, Entry("jax", "step")]
EPOCH = [Entry("fastnn-numpy"), Entry("fastnn-numba-layers"), Entry("fastnn-numba"), *_THREADED,
         Entry("jax", "step"), Entry("jax", "scan")]

assert all(entry.impl in IMPLS for entry in MATMUL + PEAK + STEP + EPOCH)


def params(entries):
    """``pytest.mark.parametrize`` values with readable ids."""
    return [pytest.param(entry, id=entry.id) for entry in entries]


def require(entry):
    """Skip the test, with the reason, when the entry cannot run here."""
    module = _module(entry.impl)
    reason = (module.unavailable_reason(entry.impl) if entry.impl.startswith("fastnn-")
              else module.unavailable_reason())
    if reason:
        pytest.skip(f"{entry.id}: {reason}")


def matmul(entry, product, A, B):
    """A zero-argument callable computing the product (and waiting for it)."""
    if entry.variant == SAME_PROCESS_NUMPY:
        return _module("numpy").matmul(product, A, B)
    module = _module(entry.impl)
    if entry.impl.startswith("fastnn-"):
        return module.matmul(entry.impl, product, A, B)
    return module.matmul(product, A, B)


def trainer(entry, net, params, X, labels, batch_size):
    module = _module(entry.impl)
    if entry.impl.startswith("fastnn-"):
        return module.Trainer(entry.impl, net, params, X, labels, batch_size)
    if entry.impl == "jax":
        return module.Trainer(net, params, X, labels, batch_size, variant=entry.variant or "step")
    return module.Trainer(net, params, X, labels, batch_size)


def conditions(entry):
    """The context the entry is timed in (its thread count), entered around warm-up and timing."""
    if entry.threads is None:
        return contextlib.nullcontext()
    return _module(entry.impl).threads(entry.threads)


def label(entry):
    """A short human name for the report."""
    base = {"fastnn-numpy": "fastnn numpy", "fastnn-numba-layers": "fastnn numba (layers)",
            "fastnn-numba": "fastnn numba", "numpy": "NumPy", "torch": "PyTorch", "jax": "JAX"}[entry.impl]
    if entry.variant == SAME_PROCESS_NUMPY:
        return "NumPy @ (in the numba process)"
    if entry.threads is not None:
        return f"{base} ({entry.threads} thread{'s' if entry.threads > 1 else ''})"
    return f"{base} ({entry.variant})" if entry.variant else base
