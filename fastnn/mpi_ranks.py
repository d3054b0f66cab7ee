"""The ranks of an MPI communicator as ``fastnn.distributed`` uses them: who is who, how rows are
shared out, and the rule that turns a failure on one rank into the same error on every rank
instead of a hang. Nothing is pickled: every exchange is a NumPy buffer."""
from __future__ import annotations

from typing import Any

import numpy as np

#: bytes of an error message sent to the other ranks (longer ones are cut)
MESSAGE_BYTES = 2000


def share(rows: int, size: int, rank: int) -> tuple[int, int]:
    """``(start, stop)`` of rank's contiguous share of ``rows``: the first ``rows % size`` ranks
    take one more (as ``numpy.array_split``)."""
    base, extra = divmod(rows, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


class Ranks:
    """The ranks of a communicator, and the rule that keeps them from hanging: a rank that
    fails keeps joining every collective step (doing no work) until the next agreement point,
    where every rank raises the same error."""

    def __init__(self, comm: Any) -> None:
        from mpi4py import MPI  # only here: importing fastnn never imports mpi4py
        self.MPI, self.comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.error: BaseException | None = None

    def run(self, fn, *args, **kwargs):
        """``fn(...)``, or None when it raises (the error is held for :meth:`agree`) or an earlier
        step of this rank already failed."""
        if self.error is not None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - held, then raised on every rank
            self.error = error
            return None

    def agree(self, failed_somewhere: bool | None = None) -> None:
        """Collective: raise on every rank if any rank holds an error. ``failed_somewhere``: what a
        sum already exchanged says (True: skip the flag exchange; every rank knows)."""
        if failed_somewhere is None:
            flag = np.array([self.error is not None], np.int64)
            self.comm.Allreduce(self.MPI.IN_PLACE, flag, op=self.MPI.SUM)
            failed_somewhere = bool(flag[0])
        if not failed_somewhere:
            return
        mine = np.zeros(MESSAGE_BYTES, np.uint8)
        if self.error is not None:
            text = f"{type(self.error).__name__}: {self.error}".encode()[:MESSAGE_BYTES]
            mine[:len(text)] = np.frombuffer(text, np.uint8)
        every = np.zeros((self.size, MESSAGE_BYTES), np.uint8)
        self.comm.Allgather(mine, every)
        failures = [f"rank {k} failed: " + bytes(row).rstrip(b"\0").decode(errors="replace")
                    for k, row in enumerate(every) if row.any()]
        raise RuntimeError("fit over MPI: " + "; ".join(failures)) from self.error

    def same(self, digest: bytes, what: str) -> None:
        """Collective: ValueError on every rank unless every rank's ``digest`` (32 bytes) is equal."""
        mine = np.frombuffer(digest, np.uint8)
        every = np.zeros((self.size, mine.size), np.uint8)
        self.comm.Allgather(mine, every)
        differ = [k for k in range(self.size) if not np.array_equal(every[k], every[0])]
        if differ:
            raise ValueError(f"fit over MPI: {what} differ between ranks (rank 0 vs rank(s) "
                             f"{', '.join(map(str, differ))}); every rank must pass the same data, "
                             f"model (seed), settings and checkpoint file")

    def totals(self, loss_sum: float, correct: int) -> tuple[float, int]:
        """Collective, at an epoch's end: ``(loss_sum, correct)`` summed over the ranks; raises on
        every rank if any rank holds an error."""
        totals = self.sum(np.array([loss_sum, correct, self.error is not None], np.float64))
        if totals[2]:
            self.agree(failed_somewhere=True)
        return float(totals[0]), int(totals[1])

    def everywhere(self, mine: bool) -> bool:
        """Collective: True when ``mine`` is True on every rank (one decision for all of them)."""
        return bool(self.sum(np.array([bool(mine)], np.int64))[0] == self.size)

    def least(self, mine: int) -> int:
        """Collective: the smallest of every rank's ``mine``."""
        value = np.array([mine], np.int64)
        self.comm.Allreduce(self.MPI.IN_PLACE, value, op=self.MPI.MIN)
        return int(value[0])

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Collective: the element-wise sum over ranks, in place."""
        self.comm.Allreduce(self.MPI.IN_PLACE, values, op=self.MPI.SUM)
        return values
