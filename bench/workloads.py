"""What the suite measures: the networks, batch sizes, matrix shapes, data, and who runs them.

Everything here is plain NumPy, so the report and every peer share one definition.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

N_SAMPLES = 60_000  # one epoch of MNIST
N_IN, N_OUT = 784, 10
DATA_SEED = 1234
INIT_SEED = 0
#: Set on some of these machines (Haswell kernels for OpenBLAS: slower); read by OpenBLAS only.
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
#: The CPU share other processes may take during a run without spoiling its timings.
QUIET_SHARE = 0.05


@dataclass(frozen=True)
class Net:
    """A two-layer network ``N_IN -> hidden -> N_OUT`` and how it is trained."""

    name: str
    hidden: int
    act: str          # hidden activation: "sigmoid" or "relu"
    loss: str         # "mse" (sigmoid output, Nielsen) or "cross_entropy" (softmax on logits)
    lr: float

    @property
    def sizes(self):
        return (N_IN, self.hidden, N_OUT)

    @property
    def out_act(self):
        """The output layer's activation: sigmoid under mse (Nielsen), none under cross-entropy."""
        return "sigmoid" if self.loss == "mse" else "identity"

    @property
    def n_params(self):
        return sum(n_in * n_out + n_out for n_in, n_out in zip(self.sizes, self.sizes[1:]))

    def describe(self):
        return f"{'-'.join(map(str, self.sizes))} {self.act}/{self.loss}/lr {self.lr:g}"


NETS = {
    "A": Net("A", 30, "sigmoid", "mse", 3.0),              # Nielsen's network.py
    "B": Net("B", 128, "relu", "cross_entropy", 0.1),
}

#: The epoch (and single-step) cases: (net, batch size).
SGD_CASES = [("A", 10), ("A", 128), ("B", 10), ("B", 128), ("B", 1024)]

#: Epoch benchmarks: rounds after one warm-up epoch (which holds any JIT compile).
EPOCH_ROUNDS = 5
#: An entry whose warm-up epoch is slow gets fewer rounds (at least one), about this many seconds.
EPOCH_BUDGET_S = 60.0


def epoch_flops(net, n_samples=N_SAMPLES):
    """The conventional training cost: 6 × parameters × samples (forward 2, backward 4)."""
    return 6 * net.n_params * n_samples


# ---- matrix products -------------------------------------------------------

@dataclass(frozen=True)
class Product:
    """``op(A) @ op(B)`` with ``A``, ``B`` stored as given (so transposes are views)."""

    name: str          # "Z", "dW", "dX" (the three products of a Dense layer) or "square"
    a_shape: tuple
    b_shape: tuple
    trans_a: bool = False
    trans_b: bool = False

    @property
    def mnk(self):
        m = self.a_shape[1] if self.trans_a else self.a_shape[0]
        k = self.a_shape[0] if self.trans_a else self.a_shape[1]
        n = self.b_shape[0] if self.trans_b else self.b_shape[1]
        return m, n, k

    @property
    def flops(self):
        m, n, k = self.mnk
        return 2 * m * n * k

    @property
    def formula(self):
        return {"Z": "X@W", "dW": "Xᵀ@dZ", "dX": "dZ@Wᵀ"}.get(self.name, "A@B")

    @property
    def key(self):
        """``"dW-784x10x30"``: the name and ``m x k x n``; usable in ``pytest -k``."""
        m, n, k = self.mnk
        return f"{self.name}-{m}x{k}x{n}"


def dense_products(batch, n_in, n_out):
    """The three products of a Dense layer's training step."""
    X, W, dZ = (batch, n_in), (n_in, n_out), (batch, n_out)
    return [
        Product("Z", X, W),                        # (B, nI) @ (nI, nO) -> (B, nO)
        Product("dW", X, dZ, trans_a=True),        # (nI, B) @ (B, nO) -> (nI, nO)
        Product("dX", dZ, W, trans_b=True),        # (B, nO) @ (nO, nI) -> (B, nI)
    ]


def matmul_products():
    """First layers of A and B at batch 10/128/1024, and a square 1024³."""
    products = []
    for net in NETS.values():
        for batch in (10, 128, 1024):
            products += dense_products(batch, N_IN, net.hidden)
    products.append(Product("square", (1024, 1024), (1024, 1024)))
    return products


MATMUL_DTYPES = ("float32", "float64")
PEAK_SIZE = 2048  # the float32 GEMM peak: a 2048³ sgemm


def matmul_operands(product, dtype, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal(product.a_shape).astype(dtype)
    B = rng.standard_normal(product.b_shape).astype(dtype)
    return A, B


# ---- data and initial weights ------------------------------------------------

@functools.cache
def mnist_like(n=N_SAMPLES, seed=DATA_SEED):
    """MNIST-shaped data: ``X (n, 784)`` float32 in [0, 1] (random bytes / 255), labels 0..9."""
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (n, N_IN), dtype=np.uint8).astype(np.float32) / np.float32(255)
    labels = rng.integers(0, N_OUT, n)
    return X, labels


def one_hot(labels, dtype=np.float32):
    T = np.zeros((labels.shape[0], N_OUT), dtype=dtype)
    T[np.arange(labels.shape[0]), labels] = 1
    return T


def initial_params(net, dtype=np.float32, seed=INIT_SEED):
    """``[W1, b1, W2, b2]`` in fastnn's layout (``W (n_in, n_out)``): Glorot-uniform, zero biases.

    Every implementation starts from these, so their results can be compared.
    """
    rng = np.random.default_rng(seed)
    params = []
    for n_in, n_out in zip(net.sizes, net.sizes[1:]):
        limit = np.sqrt(6.0 / (n_in + n_out))
        params += [rng.uniform(-limit, limit, (n_in, n_out)).astype(dtype), np.zeros(n_out, dtype)]
    return params


def batches(order, batch_size):
    """The index arrays of one epoch's batches; the last partial batch is kept."""
    return [order[start:start + batch_size] for start in range(0, order.shape[0], batch_size)]


# ---- who runs -----------------------------------------------------------------

#: Every implementation, in report order. Each runs in its own process under
#: ``python -m bench.run`` (thread pools of different libraries in one process fight over the cores).
#: GPU entries (fastnn-cupy, torch-cuda) slot in here when they exist.
IMPLS = {
    "fastnn-numpy": "fastnn, numpy backend",
    "fastnn-numba-layers": "fastnn, numba backend, layer by layer",
    "fastnn-numba": "fastnn, numba backend, compiled epoch",
    "numpy": "NumPy as a user writes it (matmul: `@`; training: hand-written, Nielsen-style)",
    "torch": "PyTorch eager (nn.Sequential + optim.SGD)",
    "jax": "JAX (jit; epoch: a jitted step per batch, or the whole epoch in lax.scan)",
}
