"""``fastnn train``'s memory check: how much a network needs to train, how much this machine has,
and the one-line refusal, before anything is allocated."""
from __future__ import annotations

import contextlib
import os

from .cli_common import N_PIXELS, CLIError

#: ``fastnn train`` refuses, on any machine, a network that needs more memory than this to train.
MAX_TRAIN_BYTES = 1 << 40
#: What a process takes before any network: Python, NumPy, a backend (numba's is the largest).
BASE_BYTES = 200_000_000
#: Rows per batch of an evaluation (``Sequential.evaluate``'s default): the train and test accuracy.
EVAL_ROWS = 4096
#: Images in the training and the test set of --data (sample, else the full MNIST).
DATA_ROWS = {"sample": (4_000, 1_000), "mnist": (60_000, 10_000)}


def training_bytes(sizes, batch_size, optimizer, rows, test_rows, itemsize=4):
    """About how many bytes ``fastnn train`` takes at its peak for layer widths ``sizes``: while
    training, each weight and bias with its gradient, optimizer state and the compiled epoch's copies,
    and the activations of a batch or of an evaluation batch; before, the weights with the float64
    draw of the largest layer's initial values (two arrays); the data and the process all along.
    An upper estimate: a measured peak is at or under it (``test_the_memory_estimate``)."""
    per_layer = [n_in * n_out + n_out for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    slots = len(optimizer.state_slots())
    eval_rows = min(EVAL_ROWS, max(rows, test_rows))
    activations = max(4 * min(batch_size, rows), 3 * eval_rows) * sum(sizes) * itemsize
    training = sum(per_layer) * itemsize * (4 + slots) + activations
    initialising = sum(per_layer) * itemsize + max(per_layer) * 16
    return max(training, initialising) + (rows + test_rows) * N_PIXELS * (itemsize + 1) + BASE_BYTES


def available_memory():
    """Bytes this process may still take, as the system says (the least of /proc/meminfo's
    MemAvailable and the cgroup's limit less its usage; else free physical pages); None if unknown."""
    found = []
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2, then v1
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        with contextlib.suppress(OSError, ValueError):  # "max": no limit
            with open(limit) as f_limit, open(usage) as f_usage:
                found.append(int(f_limit.read()) - int(f_usage.read()))
    if not found:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return max(0, min(found)) if found else None


def _bytes_text(n):
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n / 1e3:.1f} kB"


def _check_size(args, sizes, optimizer, parser_error):
    """Refuse, in one line and before anything is allocated, a network that cannot fit: exit status 2
    above what any machine is expected to hold, 1 above what this one has available."""
    if args.layers:
        flag = "--layers " + ",".join(map(str, sizes))
    else:
        flag = "--hidden " + ",".join(map(str, sizes[1:-1]))
    rows, test_rows = DATA_ROWS["sample" if args.data == "sample" else "mnist"]
    rows = min(rows, args.limit or rows)
    need = training_bytes(sizes, args.batch_size, optimizer, rows, test_rows)
    n = sum(n_in * n_out + n_out for n_in, n_out in zip(sizes[:-1], sizes[1:]))
    what = f"{flag}: a network of {n:,} weights and biases needs about {_bytes_text(need)} of memory to train"
    if need > MAX_TRAIN_BYTES:
        parser_error(f"{what}; fastnn train takes networks up to {_bytes_text(MAX_TRAIN_BYTES)}")
    free = available_memory()
    if free is not None and need > free:
        raise CLIError(f"{what}, and this machine has {_bytes_text(free)} available")
