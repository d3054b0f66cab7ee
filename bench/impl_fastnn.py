"""fastnn's entries, through the public API only: ``gemm`` of a backend, ``Sequential.fit``."""
from __future__ import annotations

import contextlib
import io

import fastnn
from .workloads import INIT_SEED

#: impl name -> (backend name, get_backend options)
BACKENDS = {
    "fastnn-numpy": ("numpy", {}),
    "fastnn-numba-layers": ("numba", {"compiled": False}),
    "fastnn-numba": ("numba", {"compiled": True}),  # named, not left to the default
}


def unavailable_reason(impl):
    name, options = BACKENDS[impl]
    usable, reason = fastnn.available_backends().get(name, (False, "not registered"))
    if not usable:
        return f"backend {name!r} unavailable: {reason}"
    try:
        fastnn.get_backend(name, **options)
    except TypeError as exc:  # an option the backend does not take (yet)
        return f"fastnn.get_backend({name!r}, **{options}) is not supported: {exc}"
    except fastnn.BackendUnavailable as exc:
        return str(exc)
    return None


def backend(impl):
    name, options = BACKENDS[impl]
    return fastnn.get_backend(name, **options)


def matmul(impl, product, A, B):
    """A zero-argument callable: ``gemm`` on the backend's copies of ``A``, ``B``, synchronized."""
    be = backend(impl)
    A, B = be.asarray(A), be.asarray(B)

    def run():
        C = be.gemm(A, B, trans_a=product.trans_a, trans_b=product.trans_b)
        be.synchronize()
        return C
    return run


class Trainer:
    """A ``fastnn.Sequential`` from the shared initial weights, trained with ``fit``."""

    def __init__(self, impl, net, params, X, labels, batch_size):
        self.backend = backend(impl)
        activation = {"sigmoid": fastnn.Sigmoid, "relu": fastnn.ReLU}[net.act]
        layers = [fastnn.Dense(net.sizes[0], net.sizes[1]), activation(),
                  fastnn.Dense(net.sizes[1], net.sizes[2])]
        if net.out_act == "sigmoid":
            layers.append(fastnn.Sigmoid())
        self.model = fastnn.Sequential(*layers, backend=self.backend, seed=INIT_SEED,
                                       dtype=str(X.dtype))
        for dense, W, b in zip(self.model.dense_layers, params[0::2], params[1::2]):
            dense.W, dense.b = W, b
        self.model.optimizer = fastnn.SGD(net.lr)
        self.net, self.batch_size = net, batch_size
        self.X, self.labels = X, labels
        self.path = None  # what fit says it runs ("layer by layer", or the compiled path)

    def epoch(self, order=None):
        """One ``fit`` epoch; fit draws its own permutation (``order`` is not used)."""
        if self.path is None:  # the first epoch says which path fit takes (verbose=1)
            said = io.StringIO()
            with contextlib.redirect_stderr(said):
                self._fit(verbose=1)
            self.path = _fit_path(said.getvalue())
        else:
            self._fit(verbose=0)
        self.backend.synchronize()

    def _fit(self, verbose):
        self.model.fit(self.X, self.labels, epochs=1, batch_size=self.batch_size,
                       loss=self.net.loss, lr=self.net.lr, verbose=verbose)

    def make_step(self, Xb, labels_b):
        """One step through the public API: ``backprop`` then the optimizer's ``step``."""
        model, loss = self.model, self.net.loss

        def run():
            model.backprop(Xb, labels_b, loss=loss)
            model.optimizer.step(self.backend, model.dense_layers)
            self.backend.synchronize()
        return run

    def weights(self):
        out = []
        for dense in self.model.dense_layers:
            out += [self.backend.to_numpy(dense.W), self.backend.to_numpy(dense.b)]
        return out

    def synchronize(self):
        self.backend.synchronize()


def _fit_path(stderr_text):
    """``"fit: backend numba, <path>"`` -> ``"<path>"``."""
    for line in stderr_text.splitlines():
        if line.startswith("fit: backend "):
            return line.split(",", 1)[1].strip() if "," in line else line
    return "unknown (fit printed no path line)"
