"""Data-parallel ``fit`` over MPI ranks: ``net.fit(X, y, ..., comm=MPI.COMM_WORLD)``.

Every rank passes the same data, model seed and settings; ``batch_size`` is per rank. Each
global batch is the ``batch_size × ranks`` rows a single process at that batch size would take
(the same rows, in the same order), shared out in contiguous pieces as even as they go (a
short last batch may leave a rank none: it still joins the sum). A rank runs forward and
backward on its rows with per-row scale ``wᵢ / Σw`` over the *global* batch, so one sum over the
ranks of every ``dW``/``db`` gives each rank the gradient of the whole batch, and the same
optimizer step keeps the weights identical everywhere: N ranks at batch b train as one process
at batch N·b (float64 to ~1e-12; float32 within rounding). Dropout masks are keyed by row
index, so they match too.

Two paths, the same on every rank: where every rank's backend has compiled steps
(``Trainer.data_parallel``: the numba backend's compiled epoch, one native call per batch that
writes the share's gradient into one flat buffer, ``backends/numba/epoch_shared.py``; or, every
rank on one machine with one thread, one call per epoch: ``distributed_compiled``), those;
else layer by layer on the backend's ops. Each rank runs at most its share of its machine's
cores in threads (cores ÷ ranks on that machine), so ranks and threads never oversubscribe.

- Rank 0 alone writes checkpoints and runs the validation; its scores are broadcast, so every
  rank's callbacks see the same logs, and rank 0's ``stop_training`` is every rank's. With
  ``resume=True`` every rank reads the checkpoint itself: it must be on a file system they
  all see (each rank's copy is checked equal before training starts).
- No hang on a failure: an exception on one rank is held until the next collective step, where
  every rank learns of it (a flag in the sums) and raises ``RuntimeError("fit over MPI: rank k
  failed: ...")``. Weights, batch order and data are compared across ranks before training
  (a digest each) and the weights again after every epoch.
- Ctrl-C is not caught here: ``mpiexec`` passes it to every rank and the job ends; a
  ``checkpoint=`` lets ``resume=True`` continue from the last completed epoch.
- Nothing is pickled: every exchange is a NumPy buffer. mpi4py is imported only here, and
  only when a communicator is given.
- On the CuPy backend the gradients go through the host for the Allreduce (one device-to-host and
  one host-to-device copy per batch), unless ``FASTNN_CUDA_AWARE_MPI=1`` says the MPI library is
  CUDA-aware (Open MPI built with CUDA, MVAPICH2-GDR, MPICH built with GPU support: MPI has no
  portable query of it): then the Allreduce takes the device buffer itself, after the stream is
  synchronized, and only the two flags cross to the host.
- The per-batch sum (``fastnn.mpi_sum``): through an MPI-3 shared window among the ranks of one
  machine, then an Allreduce among one rank per machine; ``FASTNN_MPI_SHARED_SUM=0``: a plain
  Allreduce instead.

    # mpiexec -n 2 python train.py
    from mpi4py import MPI
    history = net.fit(X, y, epochs=10, batch_size=64, comm=MPI.COMM_WORLD)
    if MPI.COMM_WORLD.rank == 0:
        net.save("net.npz")
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
import zlib
from types import SimpleNamespace

import numpy as np

from . import notices
from . import validation as check
from .history import History
from .distributed_compiled import compiled_epoch, compiled_steps, could_run_whole_epochs, diverged, whole_epochs
from .mpi_ranks import Ranks, share
from .mpi_sum import BatchSum

#: rows of X (and T) hashed to check that every rank holds the same data (evenly spaced)
SAMPLED_ROWS = 64


#: "1": the MPI library takes CuPy device buffers (CUDA-aware); see the module docstring
CUDA_AWARE_MPI = "FASTNN_CUDA_AWARE_MPI"


def device_buffers(backend) -> bool:
    """True when the gradients go to the Allreduce in device memory (no shared window): a CuPy
    backend under ``FASTNN_CUDA_AWARE_MPI=1``."""
    return backend.name == "cupy" and os.environ.get(CUDA_AWARE_MPI, "").strip() == "1"


def path_in_words(size: int, compiled: bool = False, whole_epochs: bool = False) -> str:
    """``History.path`` of a fit over ``size`` ranks."""
    how = ("layer by layer" if not compiled else "compiled epoch, one native call per epoch," if whole_epochs
           else "compiled epoch, one native call per batch,")
    return f"{how} over {size} MPI ranks (data parallel)"


def fit(net, comm, X, y, *, epochs, batch_size, loss, optimizer, lr, shuffle, validation_data,
        validation_split, verbose, checkpoint, resume, on_epoch_end, callbacks, sample_weight,
        class_weight) -> History:
    """``Sequential.fit`` over the ranks of ``comm`` (size > 1); see the module's docstring."""
    ranks = Ranks(comm)
    job = ranks.run(_prepared, net, ranks.rank, X, y, epochs, batch_size, loss, optimizer, lr, shuffle, validation_data,
                    validation_split, verbose, checkpoint, resume, on_epoch_end, callbacks, sample_weight,
                    class_weight)
    ranks.agree()
    ranks.same(_fingerprint(net, job), "the data, initial weights, batch order or settings")
    return _train(net, ranks, job)


def _prepared(net, rank, X, y, epochs, batch_size, loss, optimizer, lr, shuffle, validation_data, validation_split,
              verbose, checkpoint, resume, on_epoch_end, callbacks, sample_weight, class_weight):
    """fit's arguments checked and placed (``fit_arguments``, as ``Training.fit`` takes them), the
    checkpoint read but not applied: a SimpleNamespace of what training needs."""
    from . import io
    from .fit_arguments import checked as checked_arguments

    args = checked_arguments(net, X, y, epochs=epochs, batch_size=batch_size, loss=loss, optimizer=optimizer, lr=lr,
                             shuffle=shuffle, validation_data=validation_data, validation_split=validation_split,
                             checkpoint=checkpoint, resume=resume, on_epoch_end=on_epoch_end, callbacks=callbacks,
                             sample_weight=sample_weight, class_weight=class_weight)
    job = SimpleNamespace(**vars(args))  # and what the ranks add to it below and in _train
    check.placed_finite(net.backend, job.X)
    job.resumed = None
    if resume:
        job.resumed = io.read_checkpoint(net, checkpoint, job.resume_settings, verbose if rank == 0 else 0)
    job.shuffle, job.checkpoint, job.verbose = shuffle, checkpoint, verbose
    return job


def _fingerprint(net, job) -> bytes:
    """A digest of what must be equal on every rank: data (shape, dtype, sampled rows), weights
    per row, settings, the starting weights and batch generator (the checkpoint's, on resume)."""
    host = net.backend.to_numpy
    digest = hashlib.sha256()
    resumed = job.resumed
    params = resumed.params if resumed is not None else [(d.W, d.b) for d in net.dense_layers]
    rng = resumed.batch_rng if resumed is not None else net.batch_rng
    dropout = resumed.dropout if resumed is not None else (net.epochs_trained, net.dropout_key)
    n = job.X.shape[0]
    sampled = np.unique(np.linspace(0, n - 1, min(n, SAMPLED_ROWS)).astype(np.int64))
    sampled_rows = net.backend.asarray(sampled)
    xp = net.backend.xp
    for array in (xp.take(job.X, sampled_rows, axis=0), xp.take(job.T, sampled_rows, axis=0)):
        digest.update(np.ascontiguousarray(host(array)).tobytes())
    if job.weights is not None:
        digest.update(job.weights.tobytes())
    for W, b in params:
        digest.update(np.ascontiguousarray(host(W)).tobytes() + np.ascontiguousarray(host(b)).tobytes())
    described = {"X": [list(job.X.shape), str(job.X.dtype)], "epochs": job.epochs, "batch_size": job.batch_size,
                 "shuffle": bool(job.shuffle), "loss": job.loss.name, "optimizer": job.optimizer.config(),
                 "rng": rng.bit_generator.state, "dropout": [int(v) for v in dropout],
                 "epoch": None if resumed is None else resumed.epoch,
                 "validation": None if job.validation_data is None else list(job.validation_data[0].shape)}
    digest.update(json.dumps(described, sort_keys=True, default=str).encode())
    return digest.digest()


def _train(net, ranks, job) -> History:
    """fit's epoch loop over the ranks (see ``Training.fit`` for the one-process loop)."""
    from . import io

    loud = job.verbose and ranks.rank == 0
    net.loss, net.optimizer = job.loss, job.optimizer
    history, first_epoch = History(), 0
    if job.resumed is not None:
        first_epoch, history = io.apply_checkpoint(net, job.resumed, loud)
    machine = ranks.comm.Split_type(ranks.MPI.COMM_TYPE_SHARED)  # the ranks on this one (a collective)
    with notices.shown(loud):  # the backend's notices (a compile, which path), from rank 0
        # after the checkpoint: the steps take the optimizer (and its state) it gave the model
        job.steps = compiled_steps(net, ranks, job, job.epochs - first_epoch, machine.Get_size())
        job.device = ranks.everywhere(device_buffers(net.backend))  # the same way on every rank
        could = not job.device and could_run_whole_epochs(ranks, job, machine.Get_size())
        job.batch_sum = None if job.device else BatchSum(
            ranks, _gradient_values(net, job) + 2, net.dtype, machine,  # the gradients, two flags
            state=job.steps.size if could else 0)  # (room for the parameters only where they go there)
        job.whole_epochs = could and whole_epochs(ranks, job)
        history.path = path_in_words(ranks.size, job.steps is not None, job.whole_epochs)
        if loud:
            print(f"fit: backend {net.backend.name}, {history.path}", file=sys.stderr)
        history = _epochs(net, ranks, job, history, first_epoch)
    # Freed only after a fit that ended well: an error's traceback keeps its frames' locals, views of
    # the shared window among them (a debugger reading them after a free would crash); after an
    # error the window stays until MPI finalizes.
    if job.batch_sum is not None:
        if job.whole_epochs:
            job.steps.leave_ranks()  # (its views of the window go first)
        job.batch_sum.free()
    machine.Free()
    return history


def _gradient_values(net, job) -> int:
    """How many values each batch's gradient has (as the path that runs lays them out)."""
    if job.steps is not None:
        return job.steps.size
    return sum(d.W.size + d.b.size for d in net.dense_layers)


def _epochs(net, ranks, job, history, first_epoch) -> History:
    """``_train``'s epoch loop, its set-up done."""
    from . import io

    loud = job.verbose and ranks.rank == 0
    n, total_weight = job.X.shape[0], job.X.shape[0] if job.weights is None else float(job.weights.sum())
    net.stop_training = False
    for callback in job.callbacks:
        callback.set_model(net)
        ranks.run(callback.on_train_begin, {})
    for epoch in range(first_epoch, job.epochs):
        for callback in job.callbacks:
            ranks.run(callback.on_epoch_begin, epoch + 1, {})
        saved = net._snapshot()
        started = time.perf_counter()
        order = net.batch_rng.permutation(n) if job.shuffle else np.arange(n)
        run_epoch = _epoch if job.steps is None else compiled_epoch
        loss_sum, correct = run_epoch(net, ranks, job, order, epoch, saved)
        mean_loss = loss_sum / total_weight
        if not math.isfinite(mean_loss):  # the same sum on every rank: every rank raises
            net._restore(saved)
            from .training import TrainingDiverged
            raise TrainingDiverged(f"fit: the loss became {mean_loss} in epoch {epoch + 1}; "
                                   f"weights restored to the end of epoch {epoch}")
        logs = {"loss": mean_loss, **({} if job.regression else {"accuracy": correct / n}),
                "lr": float(net.optimizer.lr)}
        if job.validation_data is not None:
            logs.update(_validation_on_rank_0(net, ranks, job))
        logs["seconds"] = time.perf_counter() - started
        net.epochs_trained += 1
        history.append(epoch + 1, logs)
        if job.checkpoint and ranks.rank == 0:
            ranks.run(io.save_checkpoint, net, job.checkpoint, epoch + 1, history, job.batch_size, job.shuffle)
        if loud:
            print(history.line(-1, n), file=sys.stderr)
        for callback in job.callbacks:
            ranks.run(callback.on_epoch_end, epoch + 1, dict(logs))
        net.stop_training = _epoch_agreement(net, ranks)
        if net.stop_training:
            break
    for callback in job.callbacks:
        ranks.run(callback.on_train_end, {"epochs": len(history), "interrupted": False})
    ranks.agree()
    return history


def _epoch(net, ranks, job, order, epoch, saved) -> tuple[float, int]:
    """One epoch: ``(loss_sum, n_correct)`` over every rank's rows, the same on every rank.
    Each global batch: this rank's share forward and backward, ONE sum over the ranks of every
    gradient (plus two flags: a rank failed, a loss was NaN/inf), the optimizer's step."""
    backend = net.backend
    layers, dense = net.training_layers(job.loss), net.dense_layers
    sizes = [(d.W.size, d.W.shape, d.b.size, d.b.shape) for d in dense]
    n_grads = sum(w + b for w, _, b, _ in sizes)
    failed = n_grads  # the two flags (a rank failed, a loss was NaN/inf) follow the gradients
    step = job.batch_size * ranks.size
    n, local_loss, local_correct = job.X.shape[0], 0.0, 0
    device = job.device
    # one buffer for every batch's sum: the gradients, then the two flags; on the host the
    # sum's total is copied out (the layers keep their dW and db: no view of a shared window)
    sums = backend.xp.empty(n_grads + 2, dtype=np.dtype(net.dtype)) if device else job.batch_sum.mine
    summed = sums if device else np.empty_like(sums)
    flags = np.zeros(2, np.dtype(net.dtype))
    with net._dropout_batches(layers, net.epochs_trained) as set_rows:
        for batch, start in enumerate(range(0, n, step)):
            rows = order[start:min(start + step, n)]
            lo, hi = share(len(rows), ranks.size, ranks.rank)
            mine = rows[lo:hi]
            batch_weight = len(rows) if job.weights is None else float(job.weights[rows].sum())
            sums[:] = 0
            done = ranks.run(_local_step, net, job, layers, dense, set_rows, mine, batch_weight, sums)
            if done is not None:
                local_loss += done[0]
                local_correct += done[1]
            flags[:] = ranks.error is not None, done is not None and done[2]
            if batch_weight == 0:  # weighs zero on every rank: no step; a failure waits for the epoch's end
                continue
            if device:  # the flags to the device, and the device's work done before MPI reads it
                sums[failed:] = backend.asarray(flags)
                backend.synchronize()
                ranks.sum(sums)
                flags[:] = backend.to_numpy(sums[failed:])
            else:
                sums[failed:] = flags
                np.copyto(summed, job.batch_sum.sum())
                flags[:] = summed[failed:]
            if flags[0]:
                ranks.agree(failed_somewhere=True)
            if flags[1] and backend.check_every_batch:
                net._restore_if_not_finite(saved)
                raise diverged(epoch, batch)
            at = 0
            for layer, (w, w_shape, b, b_shape) in zip(dense, sizes):
                layer.dW = backend.asarray(summed[at:at + w].reshape(w_shape), dtype=net.dtype)
                layer.db = backend.asarray(summed[at + w:at + w + b].reshape(b_shape), dtype=net.dtype)
                at += w + b
            net.optimizer.step(backend, dense)
    return ranks.totals(local_loss, local_correct)


def _local_step(net, job, layers, dense, set_rows, mine, batch_weight, sums):
    """Forward and backward on this rank's rows ``mine`` (host indices) of a global batch weighing
    ``batch_weight``: their gradient sums, each row's scaled by ``wᵢ / batch_weight``, written into
    ``sums``; returns ``(loss · batch_weight, correct, loss not finite)`` of these rows."""
    if len(mine) == 0:  # a short last batch leaves this rank none: zeros, and it still joins the sum
        return 0.0, 0, False
    backend, xp = net.backend, net.backend.xp
    idx = backend.asarray(mine)
    set_rows(idx)
    Xb, Tb = net._batch_rows(job.X, job.T, idx)
    if batch_weight == 0:  # no step: only the outputs, for accuracy (a regression has none)
        if job.regression:
            return 0.0, 0, False
        Y = net._run(layers, Xb)
        return 0.0, int(net._n_correct(Y, xp.take(job.labels, idx, axis=0), job.loss)), False
    if job.weights is None:  # the local mean, times this rank's share of the global batch's rows
        value, Y = net._forward_backward(layers, Xb, Tb, job.loss)
        value, factor = float(value) * len(mine) / batch_weight, len(mine) / batch_weight
    else:  # _forward_backward's scale is wᵢ·B/Σw over its B rows; here Σw is the whole global batch's
        scale = backend.asarray(job.weights[mine] * (len(mine) / batch_weight), dtype=net.dtype)
        value, Y = net._forward_backward(layers, Xb, Tb, job.loss, scale)
        value, factor = float(value), 1.0
    host, at = backend.to_numpy, 0
    for layer in dense:
        for grad in (layer.dW, layer.db):
            if isinstance(sums, np.ndarray):
                np.multiply(host(grad).reshape(-1), factor, out=sums[at:at + grad.size])
            else:  # device buffers (a CUDA-aware MPI): no copy to the host
                xp.multiply(grad.reshape(-1), factor, out=sums[at:at + grad.size])
            at += grad.size
    correct = 0 if job.regression else int(net._n_correct(Y, xp.take(job.labels, idx, axis=0), job.loss))
    return value * batch_weight, correct, not math.isfinite(value)


def _validation_on_rank_0(net, ranks, job) -> dict[str, float]:
    """``val_loss`` (and ``val_accuracy``) computed on rank 0, broadcast to every rank."""
    scores = np.full(3, np.nan)  # failed, val_loss, val_accuracy (NaN: none)
    if ranks.rank == 0:
        result = ranks.run(net.evaluate, *job.validation_data, loss=job.loss)
        if result is not None:
            scores[1] = result["loss"]
            scores[2] = result.get("accuracy", np.nan)
        scores[0] = ranks.error is not None
    ranks.comm.Bcast(scores, root=0)
    if scores[0]:
        ranks.agree(failed_somewhere=True)
    logs = {"val_loss": float(scores[1])}
    if not np.isnan(scores[2]):  # a regression has no accuracy
        logs["val_accuracy"] = float(scores[2])
    return logs


def _epoch_agreement(net, ranks) -> bool:
    """Collective, after the callbacks: raise if any rank failed (its checkpoint, a callback) or
    the weights differ; return rank 0's ``stop_training``, every rank's from now on."""
    host = net.backend.to_numpy
    crc = 0
    for layer in net.dense_layers:
        crc = zlib.crc32(np.ascontiguousarray(host(layer.b)).tobytes(),
                         zlib.crc32(np.ascontiguousarray(host(layer.W)).tobytes(), crc))
    mine = np.array([ranks.error is not None, bool(net.stop_training), crc], np.int64)
    every = np.zeros((ranks.size, 3), np.int64)
    ranks.comm.Allgather(mine, every)
    if every[:, 0].any():
        ranks.agree(failed_somewhere=True)
    if not np.all(every[:, 2] == every[0, 2]):
        raise RuntimeError("fit over MPI: the weights differ between ranks after an epoch (the "
                           "gradient sums were not bit-identical on every rank)")
    return bool(every[0, 1])
