"""The JAX peer: a jitted step per batch, or the whole epoch under ``jax.lax.scan``.

Written as a user who knows JAX writes it, in conditions fair to it: the data
lives on the device once, batches are gathered inside the compiled code, the
parameters are donated (updated in place), and compilation happens in the
benchmark's warm-up round. ``jax_enable_x64`` is on so that float64 products
really run in float64; training stays float32 (checked in test_peers_agree).
"""
from __future__ import annotations

import functools

from .workloads import one_hot

VARIANTS = ("step", "scan")


def unavailable_reason():
    try:
        import jax  # noqa: F401
    except ImportError as exc:
        return f"JAX is not installed ({exc}); pip install 'fastnn[bench]'"
    return None


def _jax():
    import jax
    jax.config.update("jax_enable_x64", True)
    return jax


def matmul(product, A, B):
    jax = _jax()
    A, B = jax.device_put(A), jax.device_put(B)

    @jax.jit
    def product_fn(A, B):
        return (A.T if product.trans_a else A) @ (B.T if product.trans_b else B)

    return lambda: product_fn(A, B).block_until_ready()


def _loss(params, X, T, net):
    import jax
    import jax.numpy as jnp
    W1, b1, W2, b2 = params
    Z1 = X @ W1 + b1                                   # (B, 784) @ (784, h) -> (B, h)
    A1 = jax.nn.sigmoid(Z1) if net.act == "sigmoid" else jax.nn.relu(Z1)
    Z2 = A1 @ W2 + b2                                  # (B, h) @ (h, 10) -> (B, 10)
    if net.loss == "mse":                              # Nielsen's ½‖σ(Z2) − T‖², batch mean
        D = jax.nn.sigmoid(Z2) - T
        return jnp.sum(D * D) / (2 * X.shape[0])
    return jnp.mean(jax.nn.logsumexp(Z2, axis=1) - jnp.sum(T * Z2, axis=1))


def _sgd(params, X, T, net):
    import jax
    grads = jax.grad(lambda params: _loss(params, X, T, net))(params)
    return tuple(p - net.lr * g for p, g in zip(params, grads))


class Trainer:
    """``variant="step"``: one jitted call per batch; ``"scan"``: full batches in one
    ``lax.scan`` call, then one jitted step for the last partial batch."""

    def __init__(self, net, params, X, labels, batch_size, variant="step"):
        jax = _jax()
        import jax.numpy as jnp
        if variant not in VARIANTS:
            raise ValueError(f"JAX trainer: variant must be one of {VARIANTS}, got {variant!r}")
        self.net, self.batch_size, self.variant = net, batch_size, variant
        self.params = tuple(jax.device_put(p) for p in params)
        self.X = jax.device_put(X)
        self.T = jax.device_put(one_hot(labels, X.dtype))
        self._jnp = jnp

        def scan_epoch(params, X, T, idx):  # idx (n_batches, batch_size)
            def body(params, rows):
                return _sgd(params, X[rows], T[rows], net), None
            return jax.lax.scan(body, params, idx)[0]

        self._scan_epoch = jax.jit(scan_epoch, donate_argnums=0)
        self._steps = {}  # batch rows -> jitted step (the last partial batch has its own)

    def _step_at(self, size):
        """A jitted step on the ``size`` rows ``order[start:start + size]`` of the device data."""
        if size not in self._steps:
            jax, net = _jax(), self.net

            def step(params, X, T, order, start):
                rows = jax.lax.dynamic_slice(order, (start,), (size,))
                return _sgd(params, X[rows], T[rows], net)

            self._steps[size] = jax.jit(step, donate_argnums=0)
        return self._steps[size]

    def make_step(self, Xb, labels_b):
        jax = _jax()
        Xb, Tb = jax.device_put(Xb), jax.device_put(one_hot(labels_b, Xb.dtype))
        sgd = jax.jit(functools.partial(_sgd, net=self.net), donate_argnums=0)

        def run():
            self.params = sgd(self.params, Xb, Tb)
            self.synchronize()
        return run

    def epoch(self, order):
        jnp = self._jnp
        n, bs = order.shape[0], self.batch_size
        full = n // bs * bs
        order_dev = jnp.asarray(order, dtype=jnp.int32)
        if self.variant == "scan":
            if full:
                idx = order_dev[:full].reshape(n // bs, bs)
                self.params = self._scan_epoch(self.params, self.X, self.T, idx)
            starts = range(full, n, bs)
        else:
            starts = range(0, n, bs)
        for start in starts:
            size = min(bs, n - start)
            self.params = self._step_at(size)(self.params, self.X, self.T, order_dev, start)
        self.synchronize()

    def weights(self):
        import numpy as np
        return [np.asarray(p) for p in self.params]

    def synchronize(self):
        for p in self.params:
            p.block_until_ready()
