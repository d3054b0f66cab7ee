"""How busy the machine is: on a shared 2-core machine, other processes spoil timings first.

``CpuWatch`` measures the CPU share that *other* processes took while this one ran
(the machine's busy time from ``/proc/stat`` minus this process's own CPU time).
"""
from __future__ import annotations

import os
import resource
import time


def machine_busy_seconds():
    """Busy CPU-seconds of the whole machine since boot (user..steal), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def busy_share(seconds=1.0):
    """The share of the CPUs busy over the next ``seconds`` (the caller only sleeps meanwhile)."""
    before = machine_busy_seconds()
    time.sleep(seconds)
    after = machine_busy_seconds()
    if before is None or after is None:
        return 0.0
    return max(0.0, after - before) / (seconds * os.cpu_count())


class CpuWatch:
    """Started when a process starts; ``others_share()`` when it ends."""

    def __init__(self):
        self.busy, self.ours, self.started = machine_busy_seconds(), _own_cpu(), time.perf_counter()

    def others_share(self):
        """The share of all CPUs other processes used since the start, or None if unknown."""
        busy, wall = machine_busy_seconds(), time.perf_counter() - self.started
        if busy is None or self.busy is None or wall <= 0:
            return None
        others = (busy - self.busy) - (_own_cpu() - self.ours)
        return round(max(0.0, others) / (wall * os.cpu_count()), 3)


def _own_cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime
