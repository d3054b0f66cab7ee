"""The NumPy peer: `@` for the products, and training hand-written the way Nielsen's book does it.

Vectorised over the batch (Nielsen's ``network.py`` loops over samples; this is its
matrix form), batches as rows: ``X (B, 784) @ W1 (784, h) -> (B, h)``.
"""
from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from .workloads import batches, one_hot

#: Best of these BLAS thread counts is the peer's figure (small products lose with 2 threads).
THREADS = (1, 2)


def unavailable_reason():
    return None


def threads(count):
    """A context limiting OpenBLAS to ``count`` threads (all BLAS libraries loaded so far)."""
    return threadpool_limits(count, user_api="blas")


def matmul(product, A, B):
    """A zero-argument callable computing ``op(A) @ op(B)`` with NumPy's own matmul."""
    A = A.T if product.trans_a else A
    B = B.T if product.trans_b else B
    return lambda: A @ B


def _sigmoid(Z):
    return 1.0 / (1.0 + np.exp(-Z))


class Trainer:
    """SGD on a two-layer net, forward and backward written out by hand."""

    def __init__(self, net, params, X, labels, batch_size):
        self.net, self.batch_size = net, batch_size
        self.W1, self.b1, self.W2, self.b2 = (p.copy() for p in params)
        self.X, self.T = X, one_hot(labels, X.dtype)

    def _step(self, X, T):
        net, lr = self.net, self.net.lr
        B = X.shape[0]
        Z1 = X @ self.W1                     # (B, 784) @ (784, h) -> (B, h)
        Z1 += self.b1
        A1 = _sigmoid(Z1) if net.act == "sigmoid" else np.maximum(Z1, 0)
        Z2 = A1 @ self.W2                    # (B, h) @ (h, 10) -> (B, 10)
        Z2 += self.b2
        if net.loss == "mse":                # ½‖σ(Z2) − T‖², averaged over the batch
            Y = _sigmoid(Z2)
            dZ2 = (Y - T) * Y * (1 - Y) / B
        else:                                # softmax cross-entropy on logits
            E = np.exp(Z2 - Z2.max(axis=1, keepdims=True))
            dZ2 = (E / E.sum(axis=1, keepdims=True) - T) / B
        dA1 = dZ2 @ self.W2.T                # (B, 10) @ (10, h) -> (B, h)
        dZ1 = dA1 * A1 * (1 - A1) if net.act == "sigmoid" else dA1 * (A1 > 0)
        self.W2 -= lr * (A1.T @ dZ2)         # (h, B) @ (B, 10) -> (h, 10)
        self.b2 -= lr * dZ2.sum(axis=0)
        self.W1 -= lr * (X.T @ dZ1)          # (784, B) @ (B, h) -> (784, h)
        self.b1 -= lr * dZ1.sum(axis=0)

    def make_step(self, Xb, labels_b):
        Tb = one_hot(labels_b, Xb.dtype)
        return lambda: self._step(Xb, Tb)

    def epoch(self, order):
        for idx in batches(order, self.batch_size):
            self._step(self.X[idx], self.T[idx])

    def weights(self):
        return [self.W1, self.b1, self.W2, self.b2]

    def synchronize(self):
        pass
