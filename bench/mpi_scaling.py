"""Data-parallel fit over MPI beside one process: epochs of network B (784-128-10, ReLU) on 60,000
MNIST-shaped float32 rows (synthetic), at global batch 128 and 1024.

    python -m bench.mpi_scaling               # launches every run itself (mpiexec included)
    python -m bench.mpi_scaling --epochs 3 --rounds 5 --backend numpy

Runs, each a fresh process (thread counts must be set before NumPy loads its BLAS):

- 2 MPI ranks × batch 64 (global 128) and × 512 (global 1024), one BLAS/numba thread per rank;
- 1 process × batch 128 and × 1024, with 1 thread and with 2 threads.

Every run uses one backend (``--backend``): on ``numba`` (the default) one process trains with the
compiled whole epoch and the ranks with its data-parallel steps (one native call per epoch on each
rank, on parameters the ranks share; ``FASTNN_MPI_SHARED_SUM=0``: one per batch, a plain
Allreduce between); on ``numpy`` all of them train layer by layer. An epoch's time is the best of ``--epochs``
(``History``'s ``seconds``; for MPI, the slower rank's). The three runs go in turns ``--rounds``
times (default 3); each figure is the median over the rounds, with its range, and each ratio is
taken within a round. Ratios above 1: the 2-rank run is faster.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

ROWS, SHAPE, BATCHES = 60_000, (784, 128, 10), (128, 1024)


def _epoch_seconds(batch_size: int, epochs: int, backend: str, comm=None) -> float:
    import numpy as np

    import fastnn

    rng = np.random.default_rng(0)
    X = rng.random((ROWS, SHAPE[0]), dtype=np.float32)
    y = rng.integers(0, SHAPE[2], ROWS)
    net = fastnn.Sequential(fastnn.Dense(SHAPE[0], SHAPE[1]), fastnn.ReLU(), fastnn.Dense(SHAPE[1], SHAPE[2]),
                            seed=0, backend=backend)
    history = net.fit(X, y, epochs=epochs, batch_size=batch_size, lr=0.05, comm=comm)
    return min(history.history["seconds"])


def _one_run(args) -> None:
    """Inside a launched process: print ``{global batch: seconds per epoch}`` as JSON (rank 0)."""
    comm, ranks = None, 1
    if args.mpi:
        from mpi4py import MPI
        comm, ranks = MPI.COMM_WORLD, MPI.COMM_WORLD.Get_size()
    result = {}
    for batch in BATCHES:
        seconds = _epoch_seconds(batch // ranks, args.epochs, args.backend, comm)
        if comm is not None:
            seconds = comm.allreduce(seconds, op=MPI.MAX)
        result[batch] = seconds
    if comm is None or comm.Get_rank() == 0:
        print(json.dumps(result))


def _launch(command: list[str], threads: int) -> dict[str, float]:
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="the three runs in turns, this many times")
    parser.add_argument("--backend", choices=("numba", "numpy"), default="numba")
    parser.add_argument("--run", action="store_true", help=argparse.SUPPRESS)  # inside a launched process
    parser.add_argument("--mpi", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        return _one_run(args)
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    mpiexec = mpiexec if os.path.exists(mpiexec) else shutil.which("mpiexec")
    if mpiexec is None:
        raise SystemExit("no mpiexec beside Python nor on PATH: pip install mpi4py mpich")
    if args.backend == "numba":  # compiled (or loaded) once here, before any timing: not in the figures
        import time

        from fastnn.backends.numba.epoch_shared import warmup, warmup_ranks
        started = time.perf_counter()
        warmup(("float32",))
        warmup_ranks(("float32",))
        print(f"numba kernels compiled or loaded from the cache: {time.perf_counter() - started:.1f} s")
    me = [sys.executable, "-m", "bench.mpi_scaling", "--run", "--epochs", str(args.epochs), "--backend", args.backend]
    commands = {"1 process, 1 thread": (me, 1), "1 process, 2 threads": (me, 2),
                "2 ranks, 1 thread each": ([mpiexec, "-n", "2", *me, "--mpi"], 1)}
    # the three runs in turns, round after round: the machine drifts by tens of percent in minutes
    rounds = [{name: _launch(*command) for name, command in commands.items()} for _ in range(args.rounds)]
    how = "compiled epoch" if args.backend == "numba" else "layer by layer"
    print(f"network B {SHAPE}, {ROWS:,} rows float32, {args.backend} backend ({how}); seconds per epoch, "
          f"median of {args.rounds} round(s) [range]")
    print(f"{'':<40}" + "".join(f"{f'global batch {b}':>24}" for b in BATCHES))
    for name in commands:
        print(f"{name:<40}" + "".join(_spread([r[name][str(b)] for r in rounds], "s") for b in BATCHES))
    for name in ("1 process, 1 thread", "1 process, 2 threads"):  # each round's own ratio
        print(f"{'speed-up vs ' + name:<40}" + "".join(
            _spread([r[name][str(b)] / r["2 ranks, 1 thread each"][str(b)] for r in rounds], "x") for b in BATCHES))


def _spread(values: list[float], unit: str) -> str:
    """``median [low-high]`` in 24 columns."""
    middle = statistics.median(values)
    text = f"{middle:.3f}{unit}" if unit == "s" else f"{middle:.2f}{unit}"
    if len(values) > 1:
        text += f" [{min(values):.2f}-{max(values):.2f}]"
    return f"{text:>24}"


if __name__ == "__main__":
    main()
