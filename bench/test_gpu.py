"""GPU epochs: workload B (784-128-10 relu/cross_entropy/lr 0.1, 60,000 samples) at batch 10 and 128.

fastnn's cupy backend (``Sequential.fit``, the data set moved to the GPU once) against
PyTorch eager on CUDA (``nn.Sequential`` + ``optim.SGD``, the data on the GPU once,
batches by device indexing). Both start from ``initial_params``; each timed epoch
ends with a device synchronize, inside the timing; the first epoch (kernel compiles,
graph capture, cuBLAS handles) is a warm-up timed apart as ``first_call_s``.

The entries are not in ``workloads.IMPLS`` (so ``bench.run``'s ``--impl`` deselects
them): run ``pytest bench/test_gpu.py``. Without CuPy/a GPU or CUDA PyTorch they
skip with the reason.
"""
import numpy as np
import pytest

from .entries import Entry
from .timing import first_call
from .workloads import DATA_SEED, EPOCH_BUDGET_S, NETS, epoch_flops, initial_params, mnist_like

CASES = [pytest.param(("B", bs), id=f"B-{bs}") for bs in (10, 128)]
GPU_ENTRIES = [pytest.param(Entry("fastnn-cupy"), id="fastnn-cupy"),
               pytest.param(Entry("torch-cuda"), id="torch-cuda")]
LABELS = {"fastnn-cupy": "fastnn cupy", "torch-cuda": "PyTorch (CUDA)"}


def unavailable_reason(impl):
    if impl == "fastnn-cupy":
        import fastnn
        usable, reason = fastnn.available_backends().get("cupy", (False, "not registered"))
        return None if usable else f"backend 'cupy' unavailable: {reason}"
    try:
        import torch
    except ImportError as exc:
        return f"PyTorch is not installed ({exc}); pip install 'fastnn[bench]'"
    if not torch.cuda.is_available():
        return f"PyTorch {torch.__version__} sees no CUDA device (CPU-only build or no GPU)"
    return None


class FastnnCupy:
    def __init__(self, net, params, X, labels, batch_size):
        import cupy
        import fastnn
        self.sync = cupy.cuda.Device().synchronize
        backend = fastnn.get_backend("cupy")
        layers = [fastnn.Dense(net.sizes[0], net.sizes[1]), fastnn.ReLU(), fastnn.Dense(net.sizes[1], net.sizes[2])]
        self.model = fastnn.Sequential(*layers, backend=backend, seed=0, dtype=str(X.dtype))
        for dense, W, b in zip(self.model.dense_layers, params[0::2], params[1::2]):
            dense.W, dense.b = W, b
        self.X = backend.asarray(X)  # on the GPU once; fit takes it where it is
        self.labels, self.net, self.batch_size = labels, net, batch_size

    def epoch(self):
        self.model.fit(self.X, self.labels, epochs=1, batch_size=self.batch_size, loss=self.net.loss,
                       lr=self.net.lr)
        self.sync()


class TorchCuda:
    def __init__(self, net, params, X, labels, batch_size):
        import torch
        from torch import nn
        self.torch, dev = torch, torch.device("cuda")
        self.model = nn.Sequential(nn.Linear(net.sizes[0], net.sizes[1]), nn.ReLU(),
                                   nn.Linear(net.sizes[1], net.sizes[2])).to(dev)
        with torch.no_grad():  # torch stores W as (n_out, n_in)
            for linear, W, b in zip(self.model[::2], params[0::2], params[1::2]):
                linear.weight.copy_(torch.from_numpy(W.T.copy()))
                linear.bias.copy_(torch.from_numpy(b))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=net.lr)
        self.X, self.labels = torch.from_numpy(X).to(dev), torch.from_numpy(labels).to(dev)
        self.batch_size, self.dev = batch_size, dev
        self.rng = np.random.default_rng(DATA_SEED + 1)

    def epoch(self):
        torch = self.torch
        F = torch.nn.functional
        order = torch.from_numpy(self.rng.permutation(self.X.shape[0])).to(self.dev)
        for start in range(0, order.shape[0], self.batch_size):
            idx = order[start:start + self.batch_size]
            self.optimizer.zero_grad()
            loss = F.cross_entropy(self.model(self.X[idx]), self.labels[idx])
            loss.backward()
            self.optimizer.step()
        torch.cuda.synchronize()


@pytest.mark.gpu
@pytest.mark.parametrize("entry", GPU_ENTRIES)
@pytest.mark.parametrize("case", CASES)
def test_gpu_epoch(benchmark, case, entry, epoch_rounds):
    reason = unavailable_reason(entry.impl)
    if reason:
        pytest.skip(f"{entry.id}: {reason}")
    net, batch_size = NETS[case[0]], case[1]
    X, labels = mnist_like()
    make = FastnnCupy if entry.impl == "fastnn-cupy" else TorchCuda
    trainer = make(net, initial_params(net), X, labels, batch_size)
    first = first_call(trainer.epoch)  # the warm-up epoch, outside the timing
    rounds = max(1, min(epoch_rounds, int(EPOCH_BUDGET_S / first)))
    benchmark.group = f"gpu epoch {net.name} b={batch_size}"
    benchmark.extra_info.update(impl=entry.impl, variant="", label=LABELS[entry.impl], first_call_s=first,
                                suite="gpu-epoch", net=net.name, net_desc=net.describe(),
                                batch_size=batch_size, samples=X.shape[0], flops=epoch_flops(net, X.shape[0]))
    benchmark.pedantic(trainer.epoch, rounds=rounds, iterations=1, warmup_rounds=0)
