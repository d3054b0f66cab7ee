"""A data-parallel fit (``fastnn.distributed``) on the backend's compiled steps
(``Trainer.data_parallel``: the numba backend's compiled epoch, one native call per batch that writes
this rank's share of the gradient into one flat buffer): which ranks use them, and the epoch loop."""
from __future__ import annotations

import os

import numpy as np

from .mpi_ranks import share


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


def compiled_epoch(net, ranks, job, order, epoch, saved) -> tuple[float, int]:
    """``distributed._epoch`` on the compiled steps: per global batch, this rank's share's gradient
    (``steps.gradients``), ONE sum of it and the two flags over the ranks (``job.batch_sum``),
    ``steps.step``. (``saved``: as ``_epoch`` takes it; no step of a bad batch is ever applied
    here, so nothing to restore.)"""
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
    total = float(w.sum())
    if total == 0.0 or bool(np.all(w == w[0])):
        return total, 0.0
    return total, len(rows) / total
