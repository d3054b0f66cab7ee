"""fastnn's optimizers and activations against PyTorch's, where PyTorch is installed.

The slow formulas of tests/test_ops.py are our reading of PyTorch's documented rules; here the
same numbers go through torch itself: the optimizers stepped with the same gradients (fed to
torch as ``.grad``), the activations' values and derivatives against ``torch.nn.functional`` and
autograd. Float64 on both sides, so agreement is to rounding.
"""
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="torch is not installed (it is in the 'bench' extra, not a test dependency): "
                    "the comparisons with PyTorch's optimizers and activations are skipped")
F = torch.nn.functional

import fastnn  # noqa: E402

# ---- optimizers: the same gradients into fastnn's step and torch.optim's -------------------------
#: name -> (fastnn optimizer, torch.optim class and its arguments); settings away from the defaults.
OPTIMIZERS = {
    "adamw": (lambda: fastnn.AdamW(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1),
              lambda params: torch.optim.AdamW(params, lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)),
    "adamw-defaults": (lambda: fastnn.AdamW(), lambda params: torch.optim.AdamW(params)),
    "rmsprop-momentum": (lambda: fastnn.RMSprop(lr=0.01, alpha=0.9, eps=1e-6, momentum=0.9, weight_decay=0.05),
                         lambda params: torch.optim.RMSprop(params, lr=0.01, alpha=0.9, eps=1e-6, momentum=0.9,
                                                            weight_decay=0.05)),
    "rmsprop": (lambda: fastnn.RMSprop(lr=0.01, weight_decay=0.05),
                lambda params: torch.optim.RMSprop(params, lr=0.01, weight_decay=0.05)),
    "adam": (lambda: fastnn.Adam(lr=0.01, weight_decay=0.1),
             lambda params: torch.optim.Adam(params, lr=0.01, weight_decay=0.1)),
    "sgd-nesterov": (lambda: fastnn.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05),
                     lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05)),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_steps_match_torch_optim(backend_name, name):
    """Six steps of a 4-3 layer's W and b with a fixed gradient sequence. fastnn decays weights only,
    so torch gets two parameter groups: W with the decay, b with none."""
    make, make_torch = OPTIMIZERS[name]
    net = fastnn.Sequential(fastnn.Dense(4, 3), backend=backend_name, seed=0, dtype="float64")
    layer, backend = net.dense_layers[0], net.backend
    W = torch.tensor(backend.to_numpy(layer.W), dtype=torch.float64, requires_grad=True)
    b = torch.tensor(backend.to_numpy(layer.b), dtype=torch.float64, requires_grad=True)
    W0 = W.detach().numpy().copy()
    optimizer = make()
    decay = optimizer.weight_decay
    reference = make_torch([{"params": [W], "weight_decay": decay}, {"params": [b], "weight_decay": 0.0}])
    g = np.random.default_rng(11)
    for step in range(6):
        dW, db = g.standard_normal((4, 3)), g.standard_normal(3)
        layer.dW, layer.db = backend.asarray(dW), backend.asarray(db)
        optimizer.step(backend, [layer])
        W.grad, b.grad = torch.from_numpy(dW), torch.from_numpy(db)
        reference.step()
        np.testing.assert_allclose(backend.to_numpy(layer.W), W.detach().numpy(), rtol=1e-12, atol=1e-14,
                                   err_msg=f"W after step {step + 1}")
        np.testing.assert_allclose(backend.to_numpy(layer.b), b.detach().numpy(), rtol=1e-12, atol=1e-14,
                                   err_msg=f"b after step {step + 1}")
    assert np.max(np.abs(backend.to_numpy(layer.W) - W0)) > 1e-3  # the steps moved it


# ---- activations: values and derivatives against torch.nn.functional and autograd ------------------
#: name -> (fastnn settings, torch's function). GELU in its tanh form; Softplus with torch's beta 1
#: (its threshold 20, above which torch returns x itself, is kept out of the range compared here).
ACTIVATIONS = {
    "gelu": ((), lambda x: F.gelu(x, approximate="tanh")),
    "silu": ((), F.silu),
    "softplus": ((), F.softplus),
    "leaky_relu": ((0.2,), lambda x: F.leaky_relu(x, negative_slope=0.2)),
    "sigmoid": ((), torch.sigmoid),
    "tanh": ((), torch.tanh),
    "relu": ((), F.relu),
}


def _inputs():
    x = np.linspace(-19.5, 19.5, 157)  # steps of 0.25: 0.0 itself is in, the kinks' derivative too
    return np.concatenate([x, [-1e-3, 1e-3, -0.7, 0.3]]).reshape(7, 23)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_activations_match_torch(backend, act, dtype):
    params, reference = ACTIVATIONS[act]
    x = _inputs()
    # float32: 1 − tanh² cancels where tanh saturates (GELU' near −5 is 1e-6 off on both sides)
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == "float64" else dict(rtol=1e-5, atol=1e-5)
    t = torch.tensor(x.astype(dtype), requires_grad=True)
    y_torch = reference(t)
    y_torch.backward(torch.ones_like(t))
    Z = backend.asarray(x, dtype=dtype)
    Y = backend.bias_act(Z, None, act, params)
    np.testing.assert_allclose(backend.to_numpy(Y), y_torch.detach().numpy(), **tol)
    # the derivative from what the entry needs: the output, or the input
    from fastnn.ops import activations
    V = Y if activations.BY_NAME[act].needs == "Y" else Z
    dZ = backend.act_backward(V, backend.asarray(np.ones_like(x), dtype=dtype), act, params)
    np.testing.assert_allclose(backend.to_numpy(dZ), t.grad.numpy(), **tol)


def test_softplus_beyond_torchs_threshold_differs_by_less_than_its_tail(backend):
    """Above 20 torch's Softplus returns x; fastnn keeps log1p(e^-x) ≤ 2.1e-9 on top (and σ'(x) < 1)."""
    x = np.array([[20.5, 25.0, 40.0, 100.0]])
    Y = backend.to_numpy(backend.bias_act(backend.asarray(x), None, "softplus"))
    np.testing.assert_allclose(Y, F.softplus(torch.from_numpy(x)).numpy(), rtol=0, atol=2.1e-9)
    assert np.all(Y >= x)


@pytest.mark.filterwarnings("ignore::fastnn.UnscaledInputWarning")  # inputs to ±19.5, on purpose
def test_the_layers_match_torchs_modules():
    """The layer classes with their settings, in a model: torch.nn's modules on the same input."""
    x = _inputs()
    pairs = [(fastnn.LeakyReLU(alpha=0.05), torch.nn.LeakyReLU(negative_slope=0.05)),
             (fastnn.LeakyReLU(), torch.nn.LeakyReLU()),  # both default to 0.01
             (fastnn.GELU(), torch.nn.GELU(approximate="tanh")), (fastnn.SiLU(), torch.nn.SiLU()),
             (fastnn.Softplus(), torch.nn.Softplus())]
    for layer, module in pairs:
        net = fastnn.Sequential(fastnn.Dense(23, 23, init="normal"), layer, backend="numpy", seed=0, dtype="float64")
        dense = net.dense_layers[0]
        dense.W, dense.b = np.eye(23), np.zeros(23)
        np.testing.assert_allclose(net.predict_proba(x), module(torch.from_numpy(x)).numpy(), rtol=1e-12,
                                   atol=1e-13, err_msg=repr(layer))
