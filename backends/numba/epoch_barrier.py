# flake8: noqa -- template text: epoch_codegen.py appends it to the generated kernel module
# The compiled epoch's threads: the spin barrier and the blocks of units each thread owns.

SPIN = 200  # busy polls of a barrier before yielding the core (sooner: 2000 made a 2-thread epoch 8x
#            slower beside one busy process on 2 cores; 200 costs nothing measurable when idle)
# sync (int64): thread t's barrier count at 8·t (at 8·t + 1: b + 1 when its first-layer sums of batch b were
# not finite), the abort flag at 8·P, a stop request at 8·P + 8


@njit(**_INLINE)
def barrier(sync, tid, P, n):
    """Wait until all P threads passed barrier number n; returns the cycles waited, or -1 if
    Python raised the abort flag."""
    atomic_store(sync, 8 * tid, n)
    started = cycles()
    for u in range(P):
        spins = 0
        while atomic_load(sync, 8 * u) < n:
            if atomic_load(sync, 8 * P) != 0:
                return -1
            spins += 1
            if spins < SPIN:
                cpu_relax()
            else:
                sched_yield()
    return cycles() - started


@njit(**_INLINE)
def _meet(sync, tid, P, n, first, b, long_wait):
    """Barrier n of batch b: (status, cycles of a long wait, else 0). After the batch's first
    barrier, stop if asked to: every thread reads the request after the same barrier, so all
    stop at batch b with none of it applied."""
    waited = barrier(sync, tid, P, n)
    if waited < 0:
        return STATUS_ABORTED, 0
    if first and atomic_load(sync, 8 * P + 8) == b + 1:
        return STATUS_CONTENDED, 0
    return STATUS_DONE, waited if waited > long_wait else 0


@njit(**_INLINE)
def _own(n, tid, P):
    """Thread tid's block [lo, hi) of n units."""
    return n * tid // P, n * (tid + 1) // P
