"""The PyTorch peer, written as a user writes it: eager ``nn.Sequential`` + ``optim.SGD``.

Its figure is the best of 1 and 2 intra-op threads (``torch.set_num_threads``).
"""
from __future__ import annotations

import contextlib

from .workloads import batches, one_hot

THREADS = (1, 2)


def unavailable_reason():
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        return f"PyTorch is not installed ({exc}); pip install 'fastnn[bench]'"
    return None


@contextlib.contextmanager
def threads(count):
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def matmul(product, A, B):
    import torch
    A, B = torch.from_numpy(A), torch.from_numpy(B)
    A = A.T if product.trans_a else A
    B = B.T if product.trans_b else B
    return lambda: torch.matmul(A, B)


class Trainer:
    def __init__(self, net, params, X, labels, batch_size):
        import torch
        from torch import nn
        activation = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}[net.act]
        layers = [nn.Linear(net.sizes[0], net.sizes[1]), activation(), nn.Linear(net.sizes[1], net.sizes[2])]
        if net.out_act == "sigmoid":
            layers.append(nn.Sigmoid())
        self.model = nn.Sequential(*layers)
        with torch.no_grad():  # the shared initial weights; torch stores W as (n_out, n_in)
            for linear, W, b in zip(self.model[::2], params[0::2], params[1::2]):
                linear.weight.copy_(torch.from_numpy(W.T))
                linear.bias.copy_(torch.from_numpy(b))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=net.lr)
        self.net, self.batch_size = net, batch_size
        self.X = torch.from_numpy(X)
        # mse wants one-hot rows; cross_entropy takes the class indices
        self.T = torch.from_numpy(one_hot(labels, X.dtype) if net.loss == "mse" else labels)

    def _step(self, X, T):
        import torch.nn.functional as F
        self.optimizer.zero_grad()
        Y = self.model(X)
        if self.net.loss == "mse":  # Nielsen's ½‖y − t‖², averaged over the batch
            loss = F.mse_loss(Y, T, reduction="sum") / (2 * X.shape[0])
        else:
            loss = F.cross_entropy(Y, T)
        loss.backward()
        self.optimizer.step()

    def make_step(self, Xb, labels_b):
        import torch
        X = torch.from_numpy(Xb)
        T = torch.from_numpy(one_hot(labels_b, Xb.dtype) if self.net.loss == "mse" else labels_b)
        return lambda: self._step(X, T)

    def epoch(self, order):
        import torch
        for idx in batches(torch.from_numpy(order), self.batch_size):
            self._step(self.X[idx], self.T[idx])

    def weights(self):
        out = []
        for linear in self.model[::2]:
            out += [linear.weight.detach().numpy().T, linear.bias.detach().numpy()]
        return out

    def synchronize(self):
        pass
