"""A data-parallel fit (``fastnn.distributed``) on the backend's compiled steps
(``Trainer.data_parallel``: the numba backend's compiled epoch, one native call per batch that writes
this rank's share of the gradient into one flat buffer): which ranks use them, and the epoch loop;
or, where every rank is on one machine with one thread, one native call per epoch on each rank
(``whole_epochs``)."""
from __future__ import annotations

import os

import numpy as np

from .mpi_ranks import share
from .notices import logger


def compiled_steps(net, ranks, job, epochs_left, ranks_here):
    """Collective: the compiled steps where every rank has them, else None (the layer path): ranks
    on two paths could round differently and their weights part. Made after a resume applied its
    checkpoint: the steps hold ``net.optimizer``, the one the checkpoint gave the model. Each rank
    runs at most its share of its machine's cores in threads (``ranks_here`` × threads ≤ cores),
    and every rank as many as the one with fewest: the threads' split of a layer lays out the flat
    gradient, so ranks on other thread counts would add up mismatched values."""
    threads = ranks.least(_threads_here(ranks_here))
    steps = ranks.run(_local_steps, net, job, epochs_left, threads)
    ranks.agree()
    if not ranks.everywhere(steps is not None):
        return None
    fewest = ranks.least(steps.P)  # (a rank's backend may allow fewer: num_threads)
    if steps.P != fewest:
        steps = ranks.run(_local_steps, net, job, epochs_left, fewest)
    ranks.agree()
    return steps


def _threads_here(ranks_here):
    """This rank's share of its machine's cores (bound to some: at most those)."""
    cpus = os.cpu_count() or 1
    mine = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    return max(1, min(mine, cpus // ranks_here))


def _local_steps(net, job, epochs_left, threads):
    if epochs_left <= 0:
        return None
    trainer, _ = net.backend.training_plan(net, net.loss, net.optimizer, job.X.shape[0], epochs_left, job.batch_size)
    if trainer is None:
        return None
    return trainer.data_parallel(job.X, job.T, job.labels, job.weights, job.batch_size, threads)


def could_run_whole_epochs(ranks, job, ranks_here) -> bool:
    """Collective: whether every epoch could run as one native call per rank (``ranks_epoch``): every
    rank on one machine, one thread per rank, X passed whole, the kernel compiled (or loaded) on
    this machine; where only the compile is missing, it starts in the background for the next run.
    The batches then sum and step in the window with spin barriers, never returning to Python, which
    cost ~30 µs a batch of the per-batch loop (network B at 64 rows per rank: a tenth of an epoch)
    and a separate step of every parameter on every rank."""
    steps = job.steps
    if not ranks.everywhere(steps is not None and steps.whole_epochs and ranks_here == ranks.size):
        return False
    if ranks.everywhere(steps.ranks_ready()):
        return True
    # its kernel would compile first (~11 s, once per machine): longer than most fits gain
    if ranks.rank == 0:
        later = ("it compiles in the background for the next run" if steps.ranks_later() else
                 "FASTNN_DEFER_COMPILE=0 compiles it at the start of a fit")
        logger.info(f"fit over MPI: the ranks' whole-epoch kernel is not compiled on this machine yet: this fit "
                    f"returns to Python at every batch; {later}")
    return False


def whole_epochs(ranks, job) -> bool:
    """Collective, after ``could_run_whole_epochs`` and the window: True when every rank joined the
    whole epochs (``steps.join_ranks``: the window holds the state; the buffers checked, the kernel
    loaded); a rank that failed makes every rank loop per batch, and raise at its first agreement."""
    batch_sum, steps = job.batch_sum, job.steps
    if not ranks.everywhere(batch_sum.shared is not None):  # (no room for the state in /dev/shm)
        return False
    ranks.run(steps.join_ranks, batch_sum.slots, batch_sum.stride, batch_sum.shared, batch_sum.sync,
              batch_sum.me, batch_sum.here)
    return ranks.everywhere(ranks.error is None)


def compiled_epoch(net, ranks, job, order, epoch, saved) -> tuple[float, int]:
    """``distributed._epoch`` on the compiled steps: per global batch, this rank's share's gradient
    (``steps.gradients``), ONE sum of it and the two flags over the ranks (``job.batch_sum``),
    ``steps.step``. (``saved``: as ``_epoch`` takes it; no step of a bad batch is ever applied
    here, so nothing to restore.)"""
    if job.whole_epochs:
        return _whole_epoch(ranks, job, order, epoch)
    steps, batch_sum = job.steps, job.batch_sum
    sums = batch_sum.mine
    failed, not_finite = steps.size, steps.size + 1
    step = job.batch_size * ranks.size
    n, local_loss, local_correct = job.X.shape[0], 0.0, 0
    ranks.run(steps.begin_epoch)
    try:
        for batch, start in enumerate(range(0, n, step)):
            rows = order[start:min(start + step, n)]
            lo, hi = share(len(rows), ranks.size, ranks.rank)
            batch_weight, wscale = global_weight(job.weights, rows)
            done = ranks.run(steps.gradients, rows[lo:hi], len(rows), batch_weight, wscale, sums)
            if done is not None:
                local_loss += done[0]
                local_correct += done[1]
            sums[not_finite] = done is not None and done[2]
            sums[failed] = ranks.error is not None
            if batch_weight == 0:  # weighs zero on every rank: no step; a failure waits for the epoch's end
                continue
            summed = batch_sum.sum()
            if summed[failed]:
                ranks.agree(failed_somewhere=True)
            if summed[not_finite]:
                raise diverged(epoch, batch)
            ranks.run(steps.step, summed)
    finally:
        _give_back(steps, ranks)
    return ranks.totals(local_loss, local_correct)


def _whole_epoch(ranks, job, order, epoch) -> tuple[float, int]:
    """``compiled_epoch`` as one native call per rank on the machine's shared window: its rank 0
    puts the parameters and optimizer state there, every rank runs ``steps.ranks_epoch`` on them
    and takes them back."""
    steps, batch_sum = job.steps, job.batch_sum
    ranks.run(steps.begin_epoch)
    ranks.agree()  # a rank that failed before the epoch: every rank raises here (the kernel's barriers
    #                would wait for it)
    try:
        own = steps.state()
        if batch_sum.me == 0:
            for shared, mine in zip(batch_sum.shared, own):
                shared[:len(mine)] = mine
        batch_sum.meet()
        loss, correct, bad = steps.ranks_epoch(order)
        for shared, mine in zip(batch_sum.shared, own):
            mine[:] = shared[:len(mine)]
        batch_sum.meet()  # every rank took its copy before the next epoch puts the state there
    finally:
        _give_back(steps, ranks)
    if bad >= 0:
        raise diverged(epoch, bad)
    return ranks.totals(loss, correct)


def diverged(epoch, batch):
    """The error every rank raises where a global batch's loss was NaN/inf (none of it applied)."""
    from .training import TrainingDiverged
    return TrainingDiverged(f"fit: the loss became NaN or inf in epoch {epoch + 1}, batch {batch + 1} "
                            f"(on some rank); training stopped before that update")


def _give_back(steps, ranks):
    """The parameters back to the model, on a rank that failed too (its model then holds the steps
    taken, as every other rank's does); an error here is held like any other."""
    try:
        steps.end_epoch()
    except Exception as error:  # noqa: BLE001 - held, then raised on every rank
        if ranks.error is None:
            ranks.error = error


def global_weight(weights, rows) -> tuple[float, float]:
    """``(weight, wscale)`` of a global batch, as the compiled epoch weighs a batch of one process:
    its rows (or Σw) and 0 (the plain mean), or, with weights that differ, Σw and rows / Σw."""
    if weights is None:
        return float(len(rows)), 0.0
    w = weights[rows]
    total = float(np.cumsum(w)[-1]) if len(w) else 0.0  # added in row order, as the kernels add them
    #                                                    (NumPy's sum adds pairwise: other last bits)
    if total == 0.0 or bool(np.all(w == w[0])):
        return total, 0.0
    return total, len(rows) / total
