"""Timing discipline shared by the suites: warm up outside the timing, record what it cost."""
from __future__ import annotations

import time

from . import entries


def first_call(fn):
    """Seconds of the first call (it holds any JIT compile or cache load)."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure(benchmark, entry, fn, group, rounds=None, warm_calls=2, first_call_s=None, **extra):
    """Time ``fn`` in the entry's conditions after warming it up; returns pytest-benchmark's result.

    ``rounds=None`` lets pytest-benchmark calibrate (short calls); a number runs
    exactly that many timed calls of one iteration each (epochs). A caller that
    already made the first call passes its time as ``first_call_s`` (no warm-up then).
    """
    benchmark.group = group
    with entries.conditions(entry):
        first = first_call_s
        if first is None:
            first = first_call(fn)
            for _ in range(warm_calls - 1):
                fn()
        benchmark.extra_info.update(impl=entry.impl, variant=entry.variant, label=entries.label(entry),
                                    first_call_s=first, **extra)
        if rounds is None:
            return benchmark(fn)
        return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
