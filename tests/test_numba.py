"""The numba backend: its kernels against NumPy, its fallbacks, its knobs, and training parity.

Speed is not tested here (see bench/). Shapes are tiny, and few distinct kernel
specialisations are compiled, so a cold numba cache stays inside the time budget.
"""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("numba", reason="numba is not installed: pip install 'fastnn[numba]'")
pytest.importorskip("scipy", reason="scipy is not installed: pip install 'fastnn[numba]'")

import fastnn  # noqa: E402
import fastnn.backend  # noqa: E402
from fastnn import (GELU, SGD, Adam, AdamW, Dense, LeakyReLU, ReLU, RMSprop, Sequential, Sigmoid,  # noqa: E402
                    SiLU, Softmax, Softplus, Tanh)
from fastnn.backend import Backend, BackendUnavailable  # noqa: E402
from fastnn.backends.numba import backend as numba_backend  # noqa: E402

from conftest import blobs  # noqa: E402

DTYPES = ("float32", "float64")
TOL = {"float32": dict(rtol=1e-4, atol=1e-5), "float64": dict(rtol=1e-11, atol=1e-12)}


@pytest.fixture
def nb():
    return fastnn.get_backend("numba")


@pytest.fixture
def ref():
    return fastnn.get_backend("numpy")


@pytest.fixture
def reference_calls(monkeypatch):
    """Counts calls of the reference ops (``super()``), to see which branch ran."""
    calls = []
    for op in ("gemm", "bias_act", "act_backward", "softmax_xent", "sigmoid_xent", "update", "sum_rows"):
        original = getattr(Backend, op)

        def spy(self, *args, _op=op, _original=original, **kwargs):
            calls.append(_op)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(Backend, op, spy)
    return calls


def operands(rng, dtype, m, p, n, trans_a, trans_b):
    A = rng.standard_normal((p, m) if trans_a else (m, p)).astype(dtype)
    B = rng.standard_normal((n, p) if trans_b else (p, n)).astype(dtype)
    return A, B


def product(A, B, trans_a, trans_b):
    """The exact product, in float64."""
    A, B = A.astype(np.float64), B.astype(np.float64)
    return (A.T if trans_a else A) @ (B.T if trans_b else B)


def product_tol(dtype, p):
    """Rounding of a sum of p products of N(0, 1) numbers grows with p."""
    eps = 1e-7 if dtype == "float32" else 1e-16
    return dict(rtol=100 * eps, atol=10 * eps * p)


# ---- gemm: every path against NumPy -------------------------------------

@pytest.fixture
def kernel_calls(monkeypatch, nb):
    """Which gemm kernels the backend called (tiles, parallel tiles, SciPy's BLAS).

    The backend's handle on the kernels module is swapped for a recording proxy;
    the module itself is untouched (compiled kernels look their callees up there).
    """
    kernels = numba_backend._kernels
    calls = []

    class Recorder:
        def __getattr__(self, name):
            kernel = getattr(kernels, name)
            if name not in ("gemm_tiles", "gemm_tiles_parallel", "blas_gemm"):
                return kernel
            return lambda *args: (calls.append(name), kernel(*args))[1]

    monkeypatch.setattr(numba_backend, "_kernels", Recorder())
    return calls


# (m, p, n): small batches -> register tiles (wide and narrow, 4- and 2-row, a partial last
# vector, rows past M); a large batch -> BLAS
SMALL = [(1, 1, 1), (3, 5, 7), (10, 30, 10), (4, 20, 70), (7, 9, 100), (6, 7, 100), (32, 784, 30)]
LARGE = [(40, 33, 20)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,p,n", SMALL + LARGE)
def test_gemm_matches_numpy(nb, rng, reference_calls, kernel_calls, monkeypatch, dtype, m, p, n):
    monkeypatch.setattr(numba_backend, "TILE_MIN_WORK", 0)  # tiles for every small batch here,
    monkeypatch.setattr(nb, "_tile_batch_max", numba_backend.TILE_BATCH_MAX)  # also on AVX2 (BLAS there)
    monkeypatch.setattr(numba_backend, "PARALLEL_MIN_WORK", 10**12)
    for trans_a in (False, True):
        for trans_b in (False, True):
            A, B = operands(rng, dtype, m, p, n, trans_a, trans_b)
            kernel_calls.clear()
            got = nb.gemm(A, B, trans_a=trans_a, trans_b=trans_b)
            assert got.shape == (m, n) and got.dtype == dtype
            np.testing.assert_allclose(got, product(A, B, trans_a, trans_b), **product_tol(dtype, p))
            tiles = m <= numba_backend.TILE_BATCH_MAX and not trans_a and not trans_b
            assert kernel_calls == (["gemm_tiles"] if tiles else [])  # else NumPy's matmul
            # the scaled, accumulating form updates C in place: C = -0.5·op(A)op(B) + 2·C
            C = rng.standard_normal((m, n)).astype(dtype)
            want = -0.5 * product(A, B, trans_a, trans_b) + 2.0 * C
            kernel_calls.clear()
            out = nb.gemm(A, B, trans_a=trans_a, trans_b=trans_b, alpha=-0.5, beta=2.0, C=C)
            assert out is C
            np.testing.assert_allclose(C, want, **product_tol(dtype, p))
            assert kernel_calls == (["gemm_tiles"] if tiles else ["blas_gemm"])
    assert reference_calls == []  # every case ran a kernel or BLAS


def test_gemm_tiny_products_go_to_numpy(nb, rng, kernel_calls):
    A, B = operands(rng, "float32", 10, 30, 10, False, False)
    np.testing.assert_allclose(nb.gemm(A, B), A @ B, rtol=1e-5, atol=1e-5)
    assert kernel_calls == []  # below TILE_MIN_WORK the call overhead decides


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_parallel_tiles(rng, monkeypatch, kernel_calls, dtype):
    nb = fastnn.get_backend("numba", num_threads=min(2, fastnn.get_backend("numba").max_threads))
    if nb.num_threads < 2:
        pytest.skip("only one numba thread here (NUMBA_NUM_THREADS=1): no parallel path")
    monkeypatch.setattr(numba_backend, "TILE_MIN_WORK", 0)
    monkeypatch.setattr(nb, "_tile_batch_max", numba_backend.TILE_BATCH_MAX)  # also on AVX2
    monkeypatch.setattr(numba_backend, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(nb, "_blas_threaded", False)  # as with BLAS at one thread: prange may run
    for m, n in ((9, 70), (2, 130), (1, 3)):  # more tiles than threads, as many, fewer
        A, B = operands(rng, dtype, m, 6, n, False, False)
        np.testing.assert_allclose(nb.gemm(A, B), product(A, B, False, False), **product_tol(dtype, 6))
    assert kernel_calls == ["gemm_tiles_parallel"] * 3
    assert nb.info()["threading_layer"] in ("omp", "tbb", "workqueue")


def test_gemm_transposed_views_take_the_fast_path(nb, rng, reference_calls):
    A = rng.standard_normal((6, 4)).astype(np.float32)
    B = rng.standard_normal((5, 4)).astype(np.float32)
    # A.T.T-style views: an F-contiguous operand is a transposed C-contiguous one
    got = nb.gemm(np.asfortranarray(A), B.T)
    np.testing.assert_allclose(got, A @ B.T, rtol=1e-5, atol=1e-6)
    assert reference_calls == []


@pytest.mark.parametrize("case", ["strided", "int", "mixed", "C_overlaps", "C_wrong_dtype"])
def test_gemm_falls_back_to_the_reference(nb, ref, rng, reference_calls, monkeypatch, case):
    monkeypatch.setattr(nb, "_tile_batch_max", numba_backend.TILE_BATCH_MAX)  # a small batch: tiles, also on AVX2
    A = rng.standard_normal((6, 8))
    B = rng.standard_normal((8, 5))
    C = None
    if case == "strided":
        A = rng.standard_normal((6, 16))[:, ::2]
    elif case == "int":
        A, B = (A * 10).astype(np.int64), (B * 10).astype(np.int64)
    elif case == "mixed":
        A = A.astype(np.float32)
    elif case == "C_overlaps":
        A = rng.standard_normal((5, 5))
        B, C = A[:, :], A
        A = A.copy()
    elif case == "C_wrong_dtype":
        C = np.zeros((6, 5), np.float32)
    want = ref.gemm(A, B, C=None if C is None else C.copy(), beta=1.0)
    got = nb.gemm(A, B, C=C, beta=1.0)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert reference_calls.count("gemm") == 2  # the numpy backend's call and the fallback


@pytest.mark.parametrize("trans_a", [False, True])
def test_gemm_shape_mismatch_gives_the_reference_error(nb, ref, trans_a):
    A, B = (np.ones((4, 3)) if trans_a else np.ones((3, 4))), np.ones((5, 2))
    with pytest.raises(ValueError) as expected:
        ref.gemm(A, B, trans_a=trans_a)
    with pytest.raises(ValueError) as got:
        nb.gemm(A, B, trans_a=trans_a)
    assert str(got.value) == str(expected.value)


# ---- element-wise ops ---------------------------------------------------

#: The settings each activation with settings is tested with (not the layers' defaults).
ACT_PARAMS = {"leaky_relu": (0.2,)}


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_act_and_backward_match_numpy(nb, ref, rng, reference_calls, dtype):
    """Every activation of the table, through the generated kernels: the same values as the reference."""
    from fastnn.ops import activations
    Z = (rng.standard_normal((7, 33)) * 4).astype(dtype)
    Z[0, :3] = (0.0, 60.0, -60.0)
    b = rng.standard_normal(33).astype(dtype)
    dY = rng.standard_normal((7, 33)).astype(dtype)
    for act in fastnn.ACTIVATIONS:
        params = ACT_PARAMS.get(act, ())
        assert len(params) == len(activations.BY_NAME[act].params), f"settings for {act} in ACT_PARAMS"
        for bias in (b, None):
            got = nb.bias_act(Z, bias, act, params)
            assert got.dtype == Z.dtype and got.shape == Z.shape
            np.testing.assert_allclose(got, ref.bias_act(Z, bias, act, params), **TOL[dtype], err_msg=act)
        V = ref.bias_act(Z, b, act, params) if activations.BY_NAME[act].needs == "Y" else Z + b
        got = nb.act_backward(V, dY, act, params)
        assert got.dtype == Z.dtype
        np.testing.assert_allclose(got, ref.act_backward(V, dY, act, params), **TOL[dtype], err_msg=act)
    assert set(reference_calls) <= {"bias_act", "act_backward"}
    # only the numpy backend's own calls reached the reference: 2 bias_act per act (3 where the
    # derivative reads Y, made here by the reference), 1 act_backward
    n, from_y = len(fastnn.ACTIVATIONS), sum(rule.needs == "Y" for rule in activations.RULES)
    assert reference_calls.count("bias_act") == 2 * n + from_y and reference_calls.count("act_backward") == n


@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_settings_reach_the_kernels(nb, ref, reference_calls, dtype):
    """LeakyReLU's alpha is an argument of the generated kernel, not a constant baked into it."""
    Z = np.array([[-3.0, -1.0, 0.0, 2.0]], dtype)
    for alpha in (0.01, 0.2, 0.7):
        np.testing.assert_allclose(nb.bias_act(Z, None, "leaky_relu", (alpha,)), [[-3 * alpha, -alpha, 0.0, 2.0]],
                                   **TOL[dtype])
        np.testing.assert_allclose(nb.act_backward(Z, np.ones_like(Z), "leaky_relu", (alpha,)),
                                   [[alpha, alpha, alpha, 1.0]], **TOL[dtype])
    assert reference_calls == []


def test_float32_sigmoid_exp_is_accurate_over_the_whole_range(nb):
    Z = np.linspace(-120, 120, 20001, dtype=np.float32).reshape(1, -1)
    exact = 1 / (1 + np.exp(-Z.astype(np.float64)))
    got = nb.bias_act(Z, None, "sigmoid")
    np.testing.assert_allclose(got, exact, rtol=1e-6, atol=1e-37)


def test_elementwise_fallbacks_and_nan(nb, ref, rng, reference_calls):
    Z = rng.standard_normal((6, 10))[:, ::2]  # not contiguous
    np.testing.assert_allclose(nb.bias_act(Z, None, "tanh"), np.tanh(Z))
    assert reference_calls == ["bias_act"]
    with pytest.raises(ValueError, match="unknown activation"):
        nb.bias_act(np.ones((2, 2)), None, "swish")
    # NaN goes through the fused kernels as through the reference
    Z = np.array([[np.nan, -1.0, 2.0]])
    assert np.isnan(nb.bias_act(Z, None, "relu")[0, 0])
    assert np.isnan(nb.bias_act(Z.astype(np.float32), None, "sigmoid")[0, 0])
    assert np.isnan(nb.act_backward(np.array([[0.0]]), np.array([[np.nan]]), "relu")[0, 0])
    for act in fastnn.ACTIVATIONS:  # every generated loop, both dtypes: NaN where the reference has it
        params = ACT_PARAMS.get(act, ())
        for dtype in DTYPES:
            V, ones = np.array([[np.nan, 1.0, -1.0]], dtype), np.ones((1, 3), dtype)
            assert np.isnan(nb.bias_act(V, None, act, params)[0, 0]), act
            np.testing.assert_allclose(nb.bias_act(V, None, act, params), ref.bias_act(V, None, act, params),
                                       **TOL[dtype])  # (NaN only where the reference has NaN)
            np.testing.assert_allclose(nb.act_backward(V, ones, act, params), ref.act_backward(V, ones, act, params),
                                       **TOL[dtype])
            assert np.isnan(nb.act_backward(ones, V, act, params)[0, 0]), act  # a NaN gradient goes through
    T = np.array([[1.0, 0.0, 0.0]])
    assert np.isnan(nb.softmax_xent(Z, T)[0]) and np.isnan(nb.sigmoid_xent(Z, T)[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_losses_and_sum_rows_match_numpy(nb, ref, rng, dtype):
    Z = (rng.standard_normal((9, 5)) * 30).astype(dtype)  # large logits: the stable forms matter
    T = np.eye(5, dtype=dtype)[rng.integers(0, 5, 9)]
    for op in ("softmax_xent", "sigmoid_xent"):
        loss, dZ = getattr(nb, op)(Z, T)
        want_loss, want_dZ = getattr(ref, op)(Z, T)
        assert type(loss) is type(want_loss)
        np.testing.assert_allclose(loss, want_loss, **TOL[dtype])
        np.testing.assert_allclose(dZ, want_dZ, **TOL[dtype])
    np.testing.assert_allclose(nb.sum_rows(Z), ref.sum_rows(Z), **TOL[dtype])


#: rule name -> its optimizer, settings not the defaults (every rule of fastnn.ops.optimizers).
UPDATE_RULES = {
    "sgd": lambda: SGD(0.5, weight_decay=0.01),
    "momentum": lambda: SGD(0.5, momentum=0.9, weight_decay=0.01),
    "nesterov": lambda: SGD(0.5, momentum=0.9, nesterov=True, weight_decay=0.1),
    "adam": lambda: Adam(0.01, betas=(0.9, 0.99), eps=1e-7, weight_decay=0.05),
    "adamw": lambda: AdamW(0.01, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.05),
    "rmsprop": lambda: RMSprop(0.01, alpha=0.9, eps=1e-7, weight_decay=0.05),
    "rmsprop_momentum": lambda: RMSprop(0.01, alpha=0.9, eps=1e-7, momentum=0.5, weight_decay=0.05),
}


def test_every_update_rule_is_tested_here():
    from fastnn.ops import optimizers
    assert set(UPDATE_RULES) == set(optimizers.BY_NAME)
    assert all(UPDATE_RULES[name]().rule.name == name for name in UPDATE_RULES)


@pytest.mark.parametrize("rule_name", list(UPDATE_RULES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_optimizer_steps_match_numpy_in_place(nb, ref, rng, reference_calls, rule_name, dtype):
    """Each rule's generated kernel against the reference: three steps from a state that is not
    zero, with and without decay (a bias), W and every slot in place."""
    optimizer = UPDATE_RULES[rule_name]()
    rule = optimizer.rule
    for shape, decay in (((4, 3), True), ((3,), False), ((1, 1), True)):
        W = rng.standard_normal(shape).astype(dtype)
        grads = [rng.standard_normal(shape).astype(dtype) for _ in range(3)]
        # a state from earlier steps: second moments are never negative
        start = {name: (np.abs(rng.standard_normal(shape)) if name == "V" and "eps" in rule.hyper
                        else rng.standard_normal(shape)).astype(dtype) for name in rule.slots}
        runs = []
        for be in (nb, ref):
            W_, slots = W.copy(), {name: value.copy() for name, value in start.items()}
            arrays = dict(slots)
            for t, G in enumerate(grads, start=1):
                h = optimizer.step_inputs(t)
                out = be.update(rule, W_, G, slots, h if decay else dict(h, weight_decay=0.0))
                assert out[0] is W_ and out[1] is slots
                assert all(slots[name] is arrays[name] for name in rule.slots)
            runs.append((W_, slots))
        (W1, S1), (W2, S2) = runs
        assert not np.array_equal(W1, W)
        np.testing.assert_allclose(W1, W2, **TOL[dtype], err_msg=rule_name)
        assert set(S1) == set(S2) == set(rule.slots)
        for name in rule.slots:
            np.testing.assert_allclose(S1[name], S2[name], **TOL[dtype], err_msg=f"{rule_name} {name}")
    # the kernels ran: the reference saw only the numpy backend's own calls
    assert reference_calls == ["update"] * 9, "numba's update ran the reference's step, not its kernel"


@pytest.mark.parametrize("rule_name", list(UPDATE_RULES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_generated_update_kernels_match_the_reference(rng, rule_name, dtype):
    """Each ``update_<rule>`` kernel of the generated module, called as the backend calls it (flat
    W, G, two slot arrays, the rule's inputs in its order), against the reference step."""
    from fastnn.backends.numba import layer_ops
    optimizer = UPDATE_RULES[rule_name]()
    rule, ref = optimizer.rule, fastnn.get_backend("numpy")
    kernel = getattr(layer_ops.load(), f"update_{rule_name}")
    W = rng.standard_normal((5, 4)).astype(dtype)
    start = {name: np.abs(rng.standard_normal((5, 4))).astype(dtype) for name in rule.slots}
    W1, S1 = W.copy(), {name: value.copy() for name, value in start.items()}
    W2, S2 = W.copy(), {name: value.copy() for name, value in start.items()}
    unused = np.full(W.size, np.nan, dtype)  # a slot the rule does not keep is never read
    for t in (1, 2, 3):
        G = rng.standard_normal((5, 4)).astype(dtype)
        h = optimizer.step_inputs(t)
        flat = [S1[name].reshape(-1) for name in rule.slots] + [unused] * (2 - len(rule.slots))
        kernel(W1.reshape(-1), G.reshape(-1), flat[0], flat[1], np.array([h[name] for name in rule.inputs]))
        ref.update(rule, W2, G, S2, h)
    np.testing.assert_allclose(W1, W2, **TOL[dtype])
    for name in rule.slots:
        np.testing.assert_allclose(S1[name], S2[name], **TOL[dtype])
    assert np.isnan(unused).all()


def test_optimizer_steps_fall_back_for_what_the_kernels_do_not_take(nb, ref, reference_calls):
    """A strided W, a slot of another dtype: the reference's step, with the same result."""
    optimizer = UPDATE_RULES["adamw"]()
    rule, h = optimizer.rule, optimizer.step_inputs(1)
    g = np.random.default_rng(0)
    wide, G = g.standard_normal((3, 8)), g.standard_normal((3, 4))
    W0 = wide[:, ::2].copy()
    want = W0.copy()
    ref.update(rule, want, G, {"M": np.zeros((3, 4)), "V": np.zeros((3, 4))}, h)
    W = wide[:, ::2]
    nb.update(rule, W, G, {"M": np.zeros((3, 4)), "V": np.zeros((3, 4))}, h)
    np.testing.assert_allclose(W, want, rtol=1e-15)
    W32 = W0.astype(np.float32)  # contiguous, but its slots are float64
    nb.update(rule, W32, G.astype(np.float32), {"M": np.zeros((3, 4)), "V": np.zeros((3, 4))}, h)
    assert W32.dtype == np.float32
    np.testing.assert_allclose(W32, want, rtol=1e-5, atol=1e-6)
    assert reference_calls == ["update"] * 3


# ---- training: same seed, same weights as the NumPy reference ------------

def train(backend, layers, dtype, epochs, batch_size, loss, optimizer, n=150):
    X, y = blobs(n=n, n_features=8, n_classes=3, seed=1)
    net = Sequential(*layers(), backend=backend, seed=7, dtype=dtype)
    history = net.fit(X, y, epochs=epochs, batch_size=batch_size, loss=loss, optimizer=optimizer())
    return net, history


def assert_same_training(layers, dtype, epochs, batch_size, loss, optimizer, tol, n=150):
    numba = fastnn.get_backend("numba", compiled=False, defer_compile=False)  # the layer path, its kernels
    a, history_a = train(numba, layers, dtype, epochs, batch_size, loss, optimizer, n)
    b, history_b = train("numpy", layers, dtype, epochs, batch_size, loss, optimizer, n)
    for da, db in zip(a.dense_layers, b.dense_layers):
        np.testing.assert_allclose(da.W, db.W, **tol)
        np.testing.assert_allclose(da.b, db.b, **tol)
    np.testing.assert_allclose(history_a["loss"], history_b["loss"], **tol)
    assert history_a["accuracy"] == history_b["accuracy"]
    return a, history_a


def sigmoid_net():
    return Dense(8, 12), Sigmoid(), Dense(12, 3), Sigmoid()


def relu_net():
    return Dense(8, 12), ReLU(), Dense(12, 6), Tanh(), Dense(6, 3), Softmax()


def linear_head_net():
    return Dense(8, 12), Tanh(), Dense(12, 3)


CASES = [  # (layers, loss, optimizer); batch 32 of 150 rows leaves a partial last batch of 22
    (sigmoid_net, "mse", lambda: SGD(lr=3.0)),
    (relu_net, "cross_entropy", lambda: SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    (linear_head_net, "binary_cross_entropy", lambda: Adam(lr=0.01, weight_decay=1e-3)),
    (relu_net, "cross_entropy", lambda: SGD(lr=0.05, momentum=0.5)),
]


@pytest.mark.parametrize("layers,loss,optimizer", CASES, ids=["mse-sgd", "xent-nesterov", "bce-adam",
                                                             "xent-momentum"])
def test_fit_float64_matches_numpy(layers, loss, optimizer):
    assert_same_training(layers, "float64", epochs=3, batch_size=32, loss=loss, optimizer=optimizer,
                         tol=dict(rtol=1e-9, atol=1e-11))


#: The activations and optimizers added with the op tables (LeakyReLU at a slope not its default).
NEW_ACTIVATIONS = {"leaky_relu": lambda: LeakyReLU(0.1), "gelu": GELU, "silu": SiLU, "softplus": Softplus}
NEW_OPTIMIZERS = {
    "adamw": lambda: AdamW(lr=0.01, weight_decay=0.05),
    "rmsprop": lambda: RMSprop(lr=0.003, weight_decay=1e-3),
    "rmsprop-momentum": lambda: RMSprop(lr=0.002, alpha=0.95, momentum=0.9),
}


@pytest.mark.parametrize("opt", list(NEW_OPTIMIZERS))
@pytest.mark.parametrize("act", list(NEW_ACTIVATIONS))
def test_fit_float64_new_activations_and_optimizers_match_numpy(act, opt):
    """Layer by layer on numba's kernels, 3 epochs: the reference's weights, losses and accuracies."""
    def layers():
        return Dense(8, 12), NEW_ACTIVATIONS[act](), Dense(12, 6), NEW_ACTIVATIONS[act](), Dense(6, 3)
    _, history = assert_same_training(layers, "float64", epochs=3, batch_size=32, loss="cross_entropy",
                                      optimizer=NEW_OPTIMIZERS[opt], tol=dict(rtol=1e-12, atol=1e-12))
    assert history.path.startswith("layer by layer"), history.path
    assert history["loss"][-1] < history["loss"][0]  # it learns: the comparison is not of a stuck net


def test_fit_float64_large_batches_matches_numpy():
    # batches of 64 send the products to BLAS instead of the tile kernels
    assert_same_training(relu_net, "float64", epochs=2, batch_size=64, loss="cross_entropy",
                         optimizer=lambda: SGD(lr=0.1, momentum=0.9), tol=dict(rtol=1e-9, atol=1e-11))


def test_fit_float32_few_batches_matches_numpy():
    # Nielsen's setting (sigmoid, mse, lr 3.0) in float32: compare a few batches, not a chaotic epoch
    assert_same_training(sigmoid_net, "float32", epochs=1, batch_size=10, loss="mse",
                         optimizer=lambda: SGD(lr=3.0), tol=dict(rtol=2e-4, atol=2e-5), n=45)


def test_fit_layer_by_layer_when_not_compiled(capsys):
    numba = fastnn.get_backend("numba", compiled=False)
    net = Sequential(*sigmoid_net(), backend=numba, seed=0)
    assert numba.epoch_trainer(net, fastnn.get_loss("mse"), SGD(lr=1.0)) is None
    X, y = blobs(n=20, n_features=8, n_classes=3)
    net.fit(X, y, epochs=1, batch_size=10, loss="mse", lr=1.0, verbose=1)
    assert "layer by layer" in capsys.readouterr().err


# ---- knobs, availability, info --------------------------------------------

def test_num_threads_knob():
    max_threads = fastnn.get_backend("numba").max_threads
    assert fastnn.get_backend("numba", num_threads=1).num_threads == 1
    assert fastnn.get_backend("numba").num_threads == max_threads
    for bad in (0, max_threads + 1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"num_threads must be an integer from 1 to"):
            numba_backend.NumbaBackend(num_threads=bad)


def test_num_threads_default_follows_the_environment():
    code = ("import fastnn; b = fastnn.get_backend('numba'); print(b.num_threads, b.max_threads)")
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"]


def test_max_threads_follows_numbas_rule_without_importing_numba(monkeypatch):
    """numba's NUMBA_NUM_THREADS (numba/core/config.py): $NUMBA_NUM_THREADS, else the CPUs this
    process may run on; worked out the same way before numba is imported (a deferred job never is)."""
    import numba

    from fastnn.backends.numba import threads

    monkeypatch.delitem(sys.modules, "numba")  # as in a process that has not imported it
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    assert threads.max_threads() == numba.config.NUMBA_DEFAULT_NUM_THREADS
    monkeypatch.setenv("NUMBA_NUM_THREADS", "3")
    assert threads.max_threads() == 3
    with pytest.raises(ValueError, match=r"from 1 to 3 \(NUMBA_NUM_THREADS\), got 4"):
        numba_backend.NumbaBackend(num_threads=4)
    monkeypatch.setitem(sys.modules, "numba", numba)
    assert threads.max_threads() == numba.config.NUMBA_NUM_THREADS  # imported: numba's own value


def test_the_cache_folders_are_numbas_own(tmp_path, monkeypatch):
    """Where numba's cache locators keep the kernels, worked out without numba, as numba names them;
    a folder found there means numba caches them (asked of numba itself)."""
    from numba.core import caching

    from fastnn.backends.numba import cache as numba_cache, numba_cache_folders

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    probe, path = numba_cache._probe, numba_cache.__file__
    mine = numba_cache_folders.candidates()
    assert mine[0] == os.path.join(str(tmp_path), caching._CacheLocator.get_suitable_cache_subpath(path))
    assert mine[1] == caching.InTreeCacheLocator(probe, path).get_cache_path()
    if not sys.platform.startswith("win"):
        assert mine[2] == caching.UserWideCacheLocator(probe, path).get_cache_path()
    assert numba_cache_folders.one_takes_files() and numba_cache._numba_finds_a_folder()


def test_blas_is_capped_at_num_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl", reason="threadpoolctl is not installed")
    if max(lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas") < 2:
        pytest.skip("BLAS runs one thread here: nothing to cap")
    cap = numba_backend._BlasCap(1)
    before = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    with cap:
        inside = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    after = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    assert set(inside) == {1} and after == before


def test_numbas_pool_and_blass_never_both_work(monkeypatch):
    """Layer by layer at batch 10, X@W runs on the register tiles and the other products on
    BLAS. The tiles may share their work between numba's threads (prange) only while BLAS runs
    one thread: two pools spinning over the same cores made a step 40x slower."""
    threadpoolctl = pytest.importorskip("threadpoolctl", reason="threadpoolctl is not installed")

    def blas_threads():
        return {lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"}
    if numba_backend.NumbaBackend().max_threads < 2 or max(blas_threads()) < 2:
        pytest.skip("numba or BLAS runs one thread here: no two pools to keep apart")
    kernels, calls = numba_backend._kernels, []

    class Recorder:  # which tile kernels ran
        def __getattr__(self, name):
            kernel = getattr(kernels, name)
            if name not in ("gemm_tiles", "gemm_tiles_parallel"):
                return kernel
            return lambda *args: (calls.append(name), kernel(*args))[1]

    monkeypatch.setattr(numba_backend, "_kernels", Recorder())
    X, y = blobs(n=40, n_features=784, n_classes=10)

    def fit():
        be = numba_backend.NumbaBackend(num_threads=2, compiled=False)
        be._tile_batch_max = numba_backend.TILE_BATCH_MAX  # the tiles also where BLAS wins (AVX2)
        net = Sequential(Dense(784, 128), ReLU(), Dense(128, 10), backend=be, seed=0)
        net.fit(X, y, epochs=1, batch_size=10, loss="cross_entropy", optimizer=SGD(0.1, momentum=0.9))
        kinds = set(calls)
        calls.clear()
        return kinds
    assert fit() == {"gemm_tiles"}  # BLAS has its pool: the tiles run on the calling thread
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        assert fit() == {"gemm_tiles_parallel"}  # BLAS at one thread: the tiles take numba's


def test_missing_numba_is_unavailable_with_the_install_hint(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "numba" else real_find_spec(name, *args))
    monkeypatch.setattr(fastnn.selection, "_instances", {})
    with pytest.raises(BackendUnavailable) as error:
        fastnn.get_backend("numba")
    assert "numba is not installed" in str(error.value)
    assert "pip install 'fastnn[numba]'" in str(error.value)
    available, reason = fastnn.available_backends()["numba"]
    assert not available and "numba is not installed" in reason


def test_info_names_numba_threads_and_blas(nb):
    info = nb.info()
    assert info["numba"] and info["num_threads"] == nb.num_threads
    assert info["threading_layer"] in ("omp", "tbb", "workqueue")  # the layer numba really runs
    blas = info["blas"]
    assert isinstance(blas, list) and blas and {"internal_api", "version", "num_threads"} <= set(blas[0])


def test_numbas_cache_of_the_kernels_is_keyed_on_simd_py_too(monkeypatch):
    """numba keys its disk cache of a kernel on the kernel's own file only; the kernels of
    kernels.py inline simd.py's intrinsics, so each of them is keyed on simd.py's text as well
    (an edit there alone would otherwise load stale machine code)."""
    import hashlib

    from numba import types
    from numba.core.dispatcher import Dispatcher

    from fastnn.backends.numba import kernels, simd, simd_math
    text = b"".join(open(module.__file__, "rb").read() for module in (simd, simd_math))
    assert kernels.SIMD_DIGEST == hashlib.sha256(text).hexdigest()[:16]
    if not kernels.CACHE:
        pytest.skip("numba has no cache folder for the kernels here")
    own = [value for value in vars(kernels).values()
           if isinstance(value, Dispatcher) and value.py_func.__module__ == kernels.__name__]
    assert {"gemm_tiles", "_tile_4x4", "softmax_xent", "sum_rows"} <= {d.py_func.__name__ for d in own}
    assert all(isinstance(d._cache, kernels._Cache) for d in own)  # a kernel added after the sweep fails here
    cache, sig = kernels.gemm_tiles._cache, (types.float64,)
    codegen = kernels.gemm_tiles.targetctx.codegen()
    key = cache._index_key(sig, codegen)
    monkeypatch.setattr(kernels, "SIMD_DIGEST", "another simd.py")
    other = cache._index_key(sig, codegen)
    assert other != key and other[:-1] == key[:-1]
