"""The per-batch sum of a data-parallel fit: one flat buffer (the gradients and two flags) summed
over every rank, through memory that the ranks on one machine share.

An MPI Allreduce moves each rank's buffer through MPI's own copies; ranks on one machine can
instead write their buffers into one MPI-3 shared window, each add its share of the columns over
every rank's slot, and read the total where it lies (for network B's 101,770 float32 gradients
between two ranks here: ~25 µs against the Allreduce's 90-180 µs, which was most of a batch's
cost at 64 rows per rank). Across machines one rank per machine (its leader) Allreduces its
machine's total with the other leaders': the hierarchical allreduce of MPICH, NCCL and Horovod.
Every rank reads the same total, added in the same order, so the weights stay identical.

``FASTNN_MPI_SHARED_SUM=0`` turns the shared window off (a plain Allreduce per batch). So does a
``/dev/shm`` with too little free room for it (a container's default is 64 MB; the window takes
ranks-on-the-machine + 1 times the gradient's bytes, and, for ranks that run whole epochs in it,
three times the parameters' more where there is room), with a warning: MPI libraries on Linux keep
the window there, and a page they cannot back ends the process with SIGBUS, not an error.
"""
from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

#: "0": every batch's sum is a plain MPI Allreduce (no shared window)
SHARED_SUM = "FASTNN_MPI_SHARED_SUM"
#: bytes each slot starts on (a cache line: no two ranks write one line)
ALIGN = 64
#: where Linux MPI libraries put shared windows; the free room asked of it, times the window's bytes
SHM, ROOM_FACTOR = "/dev/shm", 2


def room_for(nbytes: int, warn: bool = True) -> bool:
    """False (and, with ``warn``, a warning) where ``SHM`` has less than ``ROOM_FACTOR × nbytes``
    free; True where there is room, or no ``SHM`` to ask (another system: left to its MPI library)."""
    try:
        stats = os.statvfs(SHM)
    except OSError:
        return True
    free = stats.f_bavail * stats.f_frsize
    if free >= ROOM_FACTOR * nbytes:
        return True
    if warn:
        warnings.warn(f"fit over MPI: {SHM} has {free / 2**20:.0f} MB free, too little for the gradients' shared "
                      f"window ({nbytes / 2**20:.0f} MB): each batch's sum is a plain Allreduce (slower). A larger "
                      f"{SHM} (docker run --shm-size=...) brings the window back.", RuntimeWarning, stacklevel=2)
    return False


class BatchSum:
    """Collective: ``mine`` (``size`` values of ``dtype``) is this rank's to write; after the
    collective :meth:`sum`, ``total`` holds every rank's ``mine`` added, the same on every rank,
    until the next :meth:`sum`. :meth:`free` (collective) ends it: no view of ``mine`` or
    ``total`` may outlive it. ``ranks``: the communicator's ``mpi_ranks.Ranks``; ``node``: its
    ranks that share memory with this one (``comm.Split_type(MPI.COMM_TYPE_SHARED)``: this
    machine's; a test may split one machine into several); the caller frees it.

    ``state`` (the same on every rank) > 0, where every rank is on one machine with another and
    ``/dev/shm`` has room for it: the window also holds ``shared`` (three arrays of ``state``
    values: parameters and two optimizer slots) and ``sync`` (int64, ``8 × (ranks + 2)``, zeros),
    and ``slots`` is every rank's ``mine`` in one flat array (rank k's at ``k × stride``): a
    compiled epoch's ranks sum and step there without MPI (``distributed_compiled``). Otherwise
    ``shared`` is None."""

    def __init__(self, ranks: Any, size: int, dtype: Any, node: Any, state: int = 0) -> None:
        self.comm, self.MPI, self.size, self.dtype, self.node = ranks.comm, ranks.MPI, int(size), np.dtype(dtype), node
        comm, MPI = self.comm, self.MPI
        here, me = node.Get_size(), node.Get_rank()
        slot = -(-self.size * self.dtype.itemsize // ALIGN) * ALIGN
        one_machine = comm.Get_size() == here > 1
        state_bytes = -(-int(state) * self.dtype.itemsize // ALIGN) * ALIGN
        # the state only where every rank is on one machine and there is room for it too (without it,
        # the sum still goes through the window)
        if state_bytes and not ranks.everywhere(one_machine and room_for(self._bytes(here, slot, state_bytes),
                                                                         warn=False)):
            state_bytes = 0
        window_bytes = self._bytes(here, slot, state_bytes)
        switched_on = os.environ.get(SHARED_SUM, "").strip() != "0"
        fits = here == 1 or room_for(window_bytes, warn=me == 0)  # (one warning per machine)
        wanted = ranks.everywhere(switched_on and fits)  # every rank takes the same way
        self.window: Any = None  # MPI.Win of the slots and the total, where the machine has 2+ ranks
        self.leaders: Any = None  # one rank per machine, where there are 2+ machines
        self._slots: list[np.ndarray] = []
        self.mine: Any
        self.total: Any
        self.shared: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.slots: Any = None
        self.sync: Any = None
        self.stride, self.me, self.here = slot // self.dtype.itemsize, me, here
        self._plain = not wanted
        if self._plain or here == 1:  # (a rank alone on its machine: its own total)
            self.mine = self.total = np.zeros(self.size, self.dtype)
        else:
            # rank 0 of the machine allocates every slot and the total (plus room to align them)
            self.window = MPI.Win.Allocate_shared(window_bytes if me == 0 else 0, 1, comm=node)
            self.window.Lock_all(MPI.MODE_NOCHECK)  # loads and stores from now on; Sync orders them
            memory, _ = self.window.Shared_query(0)
            raw = np.frombuffer(memory, np.uint8)
            skip = -raw.ctypes.data % ALIGN
            self._slots = [raw[skip + k * slot: skip + k * slot + self.size * self.dtype.itemsize].view(self.dtype)
                           for k in range(here + 1)]
            self.mine, self.total = self._slots[me], self._slots[here]
            self.mine[:] = 0
            if state_bytes:
                self.slots = raw[skip: skip + here * slot].view(self.dtype)
                at = skip + (here + 1) * slot
                self.shared = tuple(raw[at + k * state_bytes: at + k * state_bytes + int(state) * self.dtype.itemsize]
                                    .view(self.dtype) for k in range(3))  # type: ignore[assignment]
                at += 3 * state_bytes
                self.sync = raw[at: at + self._sync_bytes(here)].view(np.int64)
                if me == 0:
                    self.sync[:] = 0
                self.meet()  # the counts zero before any rank reads them
            self._lo, self._hi = self.size * me // here, self.size * (me + 1) // here
        if not self._plain and comm.Get_size() > here:  # other machines: their totals through the leaders
            self.leaders = comm.Split(0 if me == 0 else MPI.UNDEFINED, comm.Get_rank())

    @staticmethod
    def _sync_bytes(here: int) -> int:
        return 8 * 8 * (here + 2)  # a cache line of int64 per rank, and two more (see ``sync``)

    @classmethod
    def _bytes(cls, here: int, slot: int, state_bytes: int) -> int:
        """The window's bytes: a slot per rank and the total, the state and ``sync`` (where asked),
        and room to align the first slot."""
        return (here + 1) * slot + (3 * state_bytes + cls._sync_bytes(here) if state_bytes else 0) + ALIGN

    def sum(self) -> np.ndarray:
        """Collective: ``total`` = every rank's ``mine`` added (returned)."""
        MPI = self.MPI
        if self._plain:
            self.comm.Allreduce(MPI.IN_PLACE, self.total, op=MPI.SUM)
            return self.total
        if self.window is not None:
            self.meet()  # every slot written
            lo, hi, slots = self._lo, self._hi, self._slots
            np.add(slots[0][lo:hi], slots[1][lo:hi], out=self.total[lo:hi])
            for slot in slots[2:-1]:  # (the same order on every rank: the same rounding)
                np.add(self.total[lo:hi], slot[lo:hi], out=self.total[lo:hi])
            self.meet()  # the machine's total complete (and every slot read: writable again)
        if self.leaders is not None:
            if self.leaders != MPI.COMM_NULL:
                self.leaders.Allreduce(MPI.IN_PLACE, self.total, op=MPI.SUM)
            if self.window is not None:
                self.meet()  # the leader's Allreduce done: every machine's total in it
        return self.total

    def meet(self) -> None:
        """Collective over the machine's ranks (with a window): a barrier that also orders their
        loads and stores of the window (MPI-3's shared memory: sync, barrier, sync)."""
        self.window.Sync()
        self.node.Barrier()
        self.window.Sync()

    def free(self) -> None:
        """Collective: the shared window freed; ``mine`` and ``total`` no longer usable."""
        self.mine = self.total = self.slots = self.sync = self.shared = None
        self._slots = []
        if self.window is not None:
            self.window.Unlock_all()
            self.window.Free()
            self.window = None
        if self.leaders is not None and self.leaders != self.MPI.COMM_NULL:
            self.leaders.Free()
        self.leaders = None
