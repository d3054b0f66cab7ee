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


def interleaved(fn_a, fn_b, seconds=1.0, round_s=2e-3):
    """``(median_a, median_b)``: seconds per call of two functions timed in turns (A B B A ...).

    Rounds of each follow one another, each of enough calls for about ``round_s``, for about
    ``seconds`` in all: a machine that slows down for a while slows both alike, which two
    benchmarks timed one after the other cannot promise (on these shared machines, µs-long
    products of the very same BLAS call measured 1.3-2x apart that way).
    """
    fn_a(), fn_b()
    started = time.perf_counter()
    fn_a()
    calls = max(1, int(round_s / max(time.perf_counter() - started, 1e-9)))
    times = ([], [])
    deadline = time.perf_counter() + seconds
    turn = 0
    while time.perf_counter() < deadline or len(times[0]) < 5:
        for which in ((0, 1) if turn % 2 == 0 else (1, 0)):
            fn = fn_a if which == 0 else fn_b
            started = time.perf_counter()
            for _ in range(calls):
                fn()
            times[which].append((time.perf_counter() - started) / calls)
        turn += 1
    return tuple(sorted(t)[len(t) // 2] for t in times)
