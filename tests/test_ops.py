"""Conformance: every op of the backend contract against a slow, obvious formula.

The expected values are computed here, in float64, with Python loops or plain
NumPy broadcasting, never through a backend. Every op runs on every backend
(the ``backend`` fixture: unavailable ones skip with the reason), in float32 and
float64, on contiguous and non-contiguous inputs (a transposed view, a strided
slice: every op must accept them; a faster backend may hand them to the
reference), and with a one-row batch. Inputs reach a backend through
``backend.asarray`` and results come back through ``backend.to_numpy``, so the
same test checks a device backend.
"""
import inspect
import math
import warnings

import numpy as np
import pytest

import fastnn
from fastnn.backend import ACTIVATIONS, Backend, BackendUnavailable
from fastnn.selection import _BUILTIN, _load_class

DTYPES = ("float32", "float64")
#: Relative tolerance per dtype; the absolute one is this times the size of the expected values.
TOL = {"float32": 1e-5, "float64": 1e-12}
LAYOUTS = ("contiguous", "transposed", "strided")
BATCHES = (1, 7)


# ---- moving test data in and out ---------------------------------------------
def put(backend, host, dtype, layout="contiguous"):
    """``host`` as a backend array of ``dtype``, laid out as asked (non-contiguous made on the backend)."""
    host = np.array(host, dtype=dtype)  # a copy: in-place ops must not reach the caller's data
    xp = backend.xp
    if layout == "contiguous" or host.ndim == 0:
        A = backend.asarray(host)
    elif layout == "transposed" and host.ndim == 2:
        A = xp.matrix_transpose(backend.asarray(np.ascontiguousarray(host.T)))
    else:  # every other element of a twice-as-wide array
        wide = np.zeros(host.shape[:-1] + (2 * host.shape[-1],), dtype=dtype)
        wide[..., ::2] = host
        A = backend.asarray(wide)[..., ::2]
    if isinstance(A, np.ndarray) and layout != "contiguous" and min(A.shape) > 1:
        # (a transposed single row is contiguous either way)
        assert not A.flags.c_contiguous, "the test meant to pass a non-contiguous array"
    return A


def get(backend, A):
    host = backend.to_numpy(A)
    assert isinstance(host, np.ndarray)
    return host


def assert_close(backend, actual, expected, dtype):
    """``actual`` (a backend array) has ``dtype``, the expected shape, and the expected values."""
    got = get(backend, actual)
    expected = np.asarray(expected, dtype=np.float64)
    assert got.dtype == np.dtype(dtype), f"result dtype {got.dtype}, expected {dtype}"
    assert got.shape == expected.shape
    rtol = TOL[dtype]
    atol = rtol * max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)


def as64(A, dtype):
    """The values the backend actually received (rounded to ``dtype``), in float64."""
    return np.asarray(A, dtype=dtype).astype(np.float64)


# ---- the slow, obvious formulas --------------------------------------------------
def ref_matmul(A, B):
    # (M, P, 1) * (1, P, N) summed over P: the definition of a product, no BLAS
    return np.sum(A[:, :, None] * B[None, :, :], axis=1)


def ref_sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def ref_leaky_relu(z, alpha):
    return z if z > 0 else alpha * z


def ref_gelu(z):
    """GELU in its tanh form (Hendrycks & Gimpel; PyTorch's approximate="tanh")."""
    return 0.5 * z * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z ** 3)))


def ref_silu(z):
    return z * ref_sigmoid(z)  # z / (1 + e^-z), without overflow for very negative z


#: name -> act(z, *settings), one element at a time. Every entry of fastnn.ACTIVATIONS needs one
#: (a new activation without a formula here fails, it is never taken for the identity).
REF_ACT = {
    "identity": lambda z: z,
    "sigmoid": ref_sigmoid,
    "relu": lambda z: z if z > 0 else 0.0,
    "tanh": math.tanh,
    "leaky_relu": ref_leaky_relu,
    "gelu": ref_gelu,
    "silu": ref_silu,
    "softplus": lambda z: ref_softplus(z),
}


def ref_gelu_derivative(z):
    c = math.sqrt(2.0 / math.pi)
    t = math.tanh(c * (z + 0.044715 * z ** 3))
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * z * z)


#: name -> (what the derivative is written with: "Y" the output, "Z" the input; act'(v, *settings))
REF_DERIVATIVE = {
    "identity": ("Y", lambda y: 1.0),
    "sigmoid": ("Y", lambda y: y * (1.0 - y)),
    "relu": ("Y", lambda y: 1.0 if y > 0 else 0.0),
    "tanh": ("Y", lambda y: 1.0 - y * y),
    "leaky_relu": ("Z", lambda z, alpha: 1.0 if z > 0 else alpha),  # PyTorch's slope at 0: alpha
    "gelu": ("Z", ref_gelu_derivative),
    "silu": ("Z", lambda z: ref_sigmoid(z) * (1.0 + z * (1.0 - ref_sigmoid(z)))),
    "softplus": ("Z", ref_sigmoid),
}
#: The settings each activation is tested with (not the layers' defaults).
ACT_PARAMS = {"leaky_relu": (0.2,)}


def ref_act(Z, act, params=()):
    out = np.empty_like(Z, dtype=np.float64)
    for idx, z in np.ndenumerate(Z):
        out[idx] = REF_ACT[act](float(z), *params)
    return out


def ref_act_derivative(V, act, params=()):
    """act' element by element, from V: the output or the input, as REF_DERIVATIVE says."""
    _, derivative = REF_DERIVATIVE[act]
    out = np.empty_like(V, dtype=np.float64)
    for idx, v in np.ndenumerate(V):
        out[idx] = derivative(float(v), *params)
    return out


def ref_softmax_xent(Z, T):
    B, n = Z.shape
    loss, dZ = 0.0, np.empty_like(Z)
    for i in range(B):
        m = max(Z[i])
        lse = m + math.log(math.fsum(math.exp(z - m) for z in Z[i]))
        loss += math.fsum(T[i, j] * (lse - Z[i, j]) for j in range(n))
        t_sum = math.fsum(T[i])
        for j in range(n):
            dZ[i, j] = (math.exp(Z[i, j] - lse) * t_sum - T[i, j]) / B
    return loss / B, dZ


def ref_softplus(x):
    """ln(1 + e^x) without overflow."""
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))


def ref_sigmoid_xent(Z, T):
    # −[t ln σ(z) + (1−t) ln(1−σ(z))], with ln σ(z) = −softplus(−z) and ln(1−σ(z)) = −softplus(z)
    B = Z.shape[0]
    terms = [t * ref_softplus(-z) + (1 - t) * ref_softplus(z) for z, t in zip(Z.ravel(), T.ravel())]
    dZ = np.array([(ref_sigmoid(z) - t) / B for z, t in zip(Z.ravel(), T.ravel())]).reshape(Z.shape)
    return math.fsum(terms) / B, dZ


# ---- asarray, to_numpy, synchronize ----------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_asarray_to_numpy_round_trip(backend, dtype, rng):
    host = rng.standard_normal((4, 3))
    for given in (host, host.tolist(), np.asfortranarray(host), host[:, ::-1][:, ::-1]):
        for spec in (dtype, backend.dtype(dtype)):
            A = backend.asarray(given, dtype=spec)
            back = get(backend, A)
            assert back.dtype == np.dtype(dtype) and back.shape == (4, 3)
            np.testing.assert_array_equal(back, host.astype(dtype))
    # without a dtype the data keeps its own
    assert get(backend, backend.asarray(host.astype(dtype))).dtype == np.dtype(dtype)


def test_asarray_is_c_ordered(backend, rng):
    """The contract: asarray gives a C-ordered array, whatever the input's layout."""
    A = backend.asarray(np.asfortranarray(rng.standard_normal((5, 3))))
    back = backend.to_numpy(A)
    if isinstance(A, np.ndarray):
        assert A.flags.c_contiguous
    np.testing.assert_array_equal(back, np.asarray(back, order="C"))


def test_to_numpy_is_a_host_array(backend):
    A = backend.asarray(np.arange(6.0).reshape(2, 3))
    host = backend.to_numpy(A)
    assert type(host) is np.ndarray
    np.testing.assert_array_equal(host, np.arange(6.0).reshape(2, 3))
    assert backend.to_numpy(backend.xp.sum(A)).shape == ()  # 0-d results come back too


def test_synchronize(backend):
    A = backend.gemm(backend.asarray(np.ones((3, 4))), backend.asarray(np.ones((4, 2))))
    assert backend.synchronize() is None
    np.testing.assert_array_equal(get(backend, A), np.full((3, 2), 4.0))


def test_dtype_names(backend):
    for name in DTYPES:
        A = backend.xp.zeros((2,), dtype=backend.dtype(name))
        assert get(backend, A).dtype == np.dtype(name)


# ---- gemm ------------------------------------------------------------------------
# (M, P, N): a one-row batch as M (X @ W) and as P (Xᵀ @ dZ), a small batch, and one
# large enough that a faster backend takes its big-product path.
GEMM_SHAPES = [(1, 5, 6), (5, 1, 6), (7, 5, 6), (40, 33, 70)]


@pytest.mark.parametrize("shape", GEMM_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("trans_a", [False, True], ids=["A", "At"])
@pytest.mark.parametrize("trans_b", [False, True], ids=["B", "Bt"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm(backend, shape, trans_a, trans_b, layout, dtype, rng):
    M, P, N = shape
    A = rng.standard_normal((P, M) if trans_a else (M, P))
    B = rng.standard_normal((N, P) if trans_b else (P, N))
    opA, opB = as64(A, dtype), as64(B, dtype)
    expected = ref_matmul(opA.T if trans_a else opA, opB.T if trans_b else opB)
    dA, dB = put(backend, A, dtype, layout), put(backend, B, dtype, layout)
    out = backend.gemm(dA, dB, trans_a=trans_a, trans_b=trans_b)
    assert_close(backend, out, expected, dtype)
    # the inputs are left alone
    np.testing.assert_array_equal(get(backend, dA), A.astype(dtype))
    np.testing.assert_array_equal(get(backend, dB), B.astype(dtype))


@pytest.mark.parametrize("shape", GEMM_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("trans_a", [False, True], ids=["A", "At"])
@pytest.mark.parametrize("trans_b", [False, True], ids=["B", "Bt"])
@pytest.mark.parametrize("alpha, beta", [(-0.5, 1.0), (2.0, 0.0), (0.25, 0.5)])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_accumulate(backend, shape, trans_a, trans_b, alpha, beta, layout, dtype, rng):
    """``alpha·op(A) @ op(B) + beta·C`` into C; the returned array holds the result."""
    M, P, N = shape
    A = rng.standard_normal((P, M) if trans_a else (M, P))
    B = rng.standard_normal((N, P) if trans_b else (P, N))
    C = rng.standard_normal((M, N))
    opA, opB = as64(A, dtype), as64(B, dtype)
    expected = alpha * ref_matmul(opA.T if trans_a else opA, opB.T if trans_b else opB) \
        + beta * as64(C, dtype)
    dC = put(backend, C, dtype, layout)
    out = backend.gemm(put(backend, A, dtype, layout), put(backend, B, dtype, layout),
                       trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, C=dC)
    assert_close(backend, out, expected, dtype)
    if isinstance(dC, np.ndarray):  # host arrays allow it: C itself is updated and returned
        assert out is dC


@pytest.mark.parametrize("shape", GEMM_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gemm_beta_zero_does_not_read_c(backend, shape, layout, rng):
    """As in BLAS: with beta=0, C is output only, so an uninitialised buffer (NaN, inf) is fine."""
    M, P, N = shape
    A, B = rng.standard_normal((M, P)), rng.standard_normal((P, N))
    C = np.full((M, N), np.nan)
    C[0, 0] = np.inf
    out = backend.gemm(put(backend, A, "float64"), put(backend, B, "float64"), alpha=0.5, beta=0.0,
                       C=put(backend, C, "float64", layout))
    assert_close(backend, out, 0.5 * ref_matmul(A, B), "float64")


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_alpha_without_c(backend, dtype, rng):
    A, B = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    out = backend.gemm(put(backend, A, dtype), put(backend, B, dtype), alpha=-3.0)
    assert_close(backend, out, -3.0 * ref_matmul(as64(A, dtype), as64(B, dtype)), dtype)


# ---- bias_act and act_backward -------------------------------------------------------
def test_every_activation_has_a_formula_here():
    """The formulas above cover the table: each activation, what its derivative reads, its settings."""
    from fastnn.ops import activations
    assert set(REF_ACT) == set(REF_DERIVATIVE) == set(ACTIVATIONS) == set(activations.BY_NAME)
    for name, rule in activations.BY_NAME.items():
        assert REF_DERIVATIVE[name][0] == rule.needs, name
        assert len(ACT_PARAMS.get(name, ())) == len(rule.params), name


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_the_derivative_formulas_here_match_finite_differences(act):
    """The test's own derivatives against central differences of its own forward formulas."""
    params = ACT_PARAMS.get(act, ())
    needs, derivative = REF_DERIVATIVE[act]
    h = 1e-6
    for z in (-7.0, -2.5, -1.0, -0.3, 0.2, 0.9, 1.7, 4.0, 9.0):  # none within h of a kink
        numeric = (REF_ACT[act](z + h, *params) - REF_ACT[act](z - h, *params)) / (2 * h)
        v = REF_ACT[act](z, *params) if needs == "Y" else z
        assert derivative(v, *params) == pytest.approx(numeric, rel=1e-7, abs=1e-9), (act, z)


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_act(backend, act, with_bias, B, layout, dtype, rng):
    params = ACT_PARAMS.get(act, ())
    Z = rng.standard_normal((B, 9)) * 3
    Z[0, :3] = (0.0, 40.0, -40.0)  # a zero (the ReLU kink) and saturated values
    b = rng.standard_normal(9) if with_bias else None
    pre = as64(Z, dtype) + (as64(b, dtype) if with_bias else 0.0)
    # the bias add happens in the array's dtype, as the backend does it
    pre = pre.astype(dtype).astype(np.float64)
    dZ = put(backend, Z, dtype, layout)
    db = put(backend, b, dtype, layout) if with_bias else None
    Y = backend.bias_act(dZ, db, act, params)
    assert_close(backend, Y, ref_act(pre, act, params), dtype)
    np.testing.assert_array_equal(get(backend, dZ), Z.astype(dtype))  # Z is not overwritten


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_act_backward(backend, act, B, layout, dtype, rng):
    """``dZ = dY · act'`` from what the activation's entry needs: its output Y or its input Z."""
    params = ACT_PARAMS.get(act, ())
    Z = rng.standard_normal((B, 8)) * 2
    Z[0, :3] = (0.0, 30.0, -30.0)  # the kink of ReLU/LeakyReLU and saturated values
    needs = REF_DERIVATIVE[act][0]
    V = ref_act(as64(Z, dtype), act, params) if needs == "Y" else Z  # a real output (ReLU: zeros too)
    if act == "relu":
        V[0, :2] = (0.0, 1.5)
    dY = rng.standard_normal((B, 8))
    expected = as64(dY, dtype) * ref_act_derivative(as64(V, dtype), act, params)
    dV, ddY = put(backend, V, dtype, layout), put(backend, dY, dtype, layout)
    dZ = backend.act_backward(dV, ddY, act, params)
    assert_close(backend, dZ, expected, dtype)
    np.testing.assert_array_equal(get(backend, ddY), dY.astype(dtype))  # the inputs are left alone
    np.testing.assert_array_equal(get(backend, dV), V.astype(dtype))


@pytest.mark.parametrize("alpha", [0.0, 0.01, 1.5, -0.5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_leaky_relu_takes_its_alpha(backend, alpha, dtype):
    """The setting reaches the op, forward and backward (a kernel must not bake in a default)."""
    Z = np.array([[-2.0, -0.5, 0.0, 0.5, 3.0]])
    Y = backend.bias_act(put(backend, Z, dtype), None, "leaky_relu", (alpha,))
    assert_close(backend, Y, [[-2.0 * alpha, -0.5 * alpha, 0.0, 0.5, 3.0]], dtype)
    dZ = backend.act_backward(put(backend, Z, dtype), put(backend, np.full_like(Z, 2.0), dtype), "leaky_relu",
                              (alpha,))
    assert_close(backend, dZ, [[2 * alpha, 2 * alpha, 2 * alpha, 2.0, 2.0]], dtype)


def test_unknown_activation(backend):
    Z = backend.asarray(np.ones((2, 3)))
    with pytest.raises(ValueError, match="unknown activation 'mish'"):
        backend.bias_act(Z, None, "mish")
    with pytest.raises(ValueError, match="unknown activation 'mish'"):
        backend.act_backward(Z, Z, "mish")


def test_activation_settings_are_checked(backend):
    """An activation's settings, exactly as many as its entry names: none is guessed or dropped."""
    Z = backend.asarray(np.ones((2, 3)))
    for call in (lambda p: backend.bias_act(Z, None, "leaky_relu", p),
                 lambda p: backend.act_backward(Z, Z, "leaky_relu", p)):
        with pytest.raises(ValueError, match=r"activation 'leaky_relu' takes the settings \('alpha',\), got \(\)"):
            call(())
        with pytest.raises(ValueError, match="activation 'leaky_relu' takes the settings"):
            call((0.1, 0.2))
    with pytest.raises(ValueError, match="activation 'gelu' takes the settings none, got \\(0.1,\\)"):
        backend.bias_act(Z, None, "gelu", (0.1,))
    with pytest.raises(ValueError, match="activation 'relu' takes the settings none"):
        backend.act_backward(Z, Z, "relu", (0.1,))


# ---- losses --------------------------------------------------------------------------
def _one_hot(rng, B, n):
    T = np.zeros((B, n))
    T[np.arange(B), rng.integers(0, n, B)] = 1
    return T


def _soft(rng, B, n):
    T = rng.random((B, n)) + 0.1
    return T / T.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("targets", ["one_hot", "soft"])
@pytest.mark.parametrize("scale", [1.0, 100.0], ids=["logits", "large_logits"])
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent(backend, targets, scale, B, layout, dtype, rng):
    Z = rng.standard_normal((B, 5)) * scale
    if scale > 1:
        Z[0, :2] = (100.0, -100.0)
    T = _one_hot(rng, B, 5) if targets == "one_hot" else _soft(rng, B, 5)
    loss, dZ = backend.softmax_xent(put(backend, Z, dtype, layout), put(backend, T, dtype, layout))
    ref_loss, ref_dZ = ref_softmax_xent(as64(Z, dtype), as64(T, dtype))
    assert_close(backend, loss, ref_loss, dtype)
    assert_close(backend, dZ, ref_dZ, dtype)


@pytest.mark.parametrize("targets", ["binary", "soft"])
@pytest.mark.parametrize("scale", [1.0, 100.0], ids=["logits", "large_logits"])
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_xent(backend, targets, scale, B, layout, dtype, rng):
    Z = rng.standard_normal((B, 4)) * scale
    if scale > 1:
        Z[0, :] = (100.0, -100.0, 100.0, -100.0)
    T = rng.integers(0, 2, (B, 4)).astype(float) if targets == "binary" else rng.random((B, 4))
    if scale > 1 and targets == "binary":
        T[0, :] = (1.0, 0.0, 0.0, 1.0)  # right and (very) wrong at ±100
    loss, dZ = backend.sigmoid_xent(put(backend, Z, dtype, layout), put(backend, T, dtype, layout))
    ref_loss, ref_dZ = ref_sigmoid_xent(as64(Z, dtype), as64(T, dtype))
    assert_close(backend, loss, ref_loss, dtype)
    assert_close(backend, dZ, ref_dZ, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_logits_are_quiet(backend, dtype):
    """Saturated logits are the normal case for a confident model: no overflow warnings, no NaN."""
    Z = backend.asarray(np.array([[-1000.0, -100.0, 0.0, 100.0, 1000.0]]), dtype=dtype)
    T = backend.asarray(np.array([[0.0, 1.0, 1.0, 0.0, 1.0]]), dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outputs = [*backend.sigmoid_xent(Z, T), *backend.softmax_xent(Z, T),
                   backend.bias_act(Z, None, "sigmoid"), backend.bias_act(Z, None, "tanh")]
    for out in outputs:
        assert np.all(np.isfinite(get(backend, out)))
    np.testing.assert_allclose(get(backend, outputs[4]), [[0.0, 0.0, 0.5, 1.0, 1.0]], atol=1e-30)


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_activation_is_quiet_and_finite_far_out(backend, act, dtype):
    """A saturated unit (e^1000 overflows, 1000³ does not in float32) is no warning and no NaN,
    forward or backward; the values are the formulas' limits."""
    params = ACT_PARAMS.get(act, ())
    Z = np.array([[-1000.0, -100.0, 0.0, 100.0, 1000.0]])
    needs = REF_DERIVATIVE[act][0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Y = backend.bias_act(put(backend, Z, dtype), None, act, params)
        V = Y if needs == "Y" else put(backend, Z, dtype)
        dZ = backend.act_backward(V, put(backend, np.ones_like(Z), dtype), act, params)
    assert_close(backend, Y, ref_act(Z, act, params), dtype)
    assert_close(backend, dZ, ref_act_derivative(ref_act(Z, act, params) if needs == "Y" else Z, act, params), dtype)


# ---- optimizer steps: backend.update, one rule of fastnn.ops.optimizers at a time -----------
# PyTorch's documented update rules (torch.optim.SGD, Adam, AdamW, RMSprop; dampening 0, not
# centered, not amsgrad), written element by element as its pseudo-code reads. ``t`` counts from 1;
# ``state`` holds the slots under the names of the table (SGD's momentum_buffer "V"; Adam's exp_avg
# "M" and exp_avg_sq "V"; RMSprop's square_avg "V" and momentum_buffer "B").
def ref_step(kind, w, g, state, t, lr, weight_decay, momentum=0.0, nesterov=False, beta1=0.9, beta2=0.999,
             eps=1e-8, alpha=0.99):
    """One step of one element: ``(new w, new state)``."""
    state = dict(state)
    if kind == "sgd":
        if weight_decay:
            g = g + weight_decay * w
        if momentum:
            b = g if t == 1 else momentum * state["V"] + g
            state["V"] = b
            g = g + momentum * b if nesterov else b
        return w - lr * g, state
    if kind in ("adam", "adamw"):
        if kind == "adamw":
            w = w - lr * weight_decay * w  # decoupled: θ ← θ − γλθ, and no decay in g
        elif weight_decay:
            g = g + weight_decay * w
        state["M"] = beta1 * state["M"] + (1 - beta1) * g
        state["V"] = beta2 * state["V"] + (1 - beta2) * g * g
        m_hat = state["M"] / (1 - beta1 ** t)
        v_hat = state["V"] / (1 - beta2 ** t)
        return w - lr * m_hat / (math.sqrt(v_hat) + eps), state
    if kind == "rmsprop":
        if weight_decay:
            g = g + weight_decay * w
        state["V"] = alpha * state["V"] + (1 - alpha) * g * g
        if momentum > 0:
            state["B"] = momentum * state["B"] + g / (math.sqrt(state["V"]) + eps)
            return w - lr * state["B"], state
        return w - lr * g / (math.sqrt(state["V"]) + eps), state
    raise AssertionError(kind)


def ref_run(kind, W, grads, slots, settings):
    """Every step over every element: ``(W, {slot: array})``, slots starting at zero."""
    W = W.astype(np.float64).copy()
    state = {name: np.zeros_like(W) for name in slots}
    for t, dW in enumerate(grads, start=1):
        for k in np.ndindex(W.shape):
            W[k], new = ref_step(kind, W[k], dW[k], {name: state[name][k] for name in slots}, t, **settings)
            for name in slots:
                state[name][k] = new[name]
    return W, state


#: rule name -> (optimizer class, settings, the formula above that gives it). Every rule of
#: fastnn.ops.optimizers needs one; settings are not the defaults, so each must reach the step.
UPDATE_CASES = {
    "sgd": (fastnn.SGD, dict(lr=0.1), "sgd"),
    "momentum": (fastnn.SGD, dict(lr=0.1, momentum=0.9), "sgd"),
    "nesterov": (fastnn.SGD, dict(lr=0.1, momentum=0.7, nesterov=True), "sgd"),
    "adam": (fastnn.Adam, dict(lr=0.01, betas=(0.5, 0.9), eps=1e-3), "adam"),
    "adamw": (fastnn.AdamW, dict(lr=0.01, betas=(0.5, 0.9), eps=1e-3), "adamw"),
    "rmsprop": (fastnn.RMSprop, dict(lr=0.01, alpha=0.9, eps=1e-3), "rmsprop"),
    "rmsprop_momentum": (fastnn.RMSprop, dict(lr=0.01, alpha=0.9, eps=1e-3, momentum=0.8), "rmsprop"),
}


def _update_case(rule_name, weight_decay):
    """``(rule, optimizer, the formula's settings)``; the optimizer picks the rule."""
    from fastnn.ops import optimizers
    cls, settings, kind = UPDATE_CASES[rule_name]
    optimizer = cls(**settings, weight_decay=weight_decay)
    rule = optimizers.BY_NAME[rule_name]
    assert optimizer.rule is rule
    ref = dict(settings, weight_decay=weight_decay)
    if "betas" in ref:
        ref["beta1"], ref["beta2"] = ref.pop("betas")
    return rule, optimizer, kind, ref


def test_every_update_rule_has_a_formula_here():
    from fastnn.ops import optimizers
    assert set(UPDATE_CASES) == set(optimizers.BY_NAME)
    for name, rule in optimizers.BY_NAME.items():
        assert set(rule.inputs) >= {"lr", "weight_decay"}
        _, optimizer, _, _ = _update_case(name, 0.0)
        assert set(optimizer.step_inputs(1)) == set(rule.inputs)  # every input, nothing else


@pytest.mark.parametrize("rule_name", list(UPDATE_CASES))
@pytest.mark.parametrize("weight_decay", [0.0, 0.1], ids=["nodecay", "decay"])
@pytest.mark.parametrize("shape", [(5, 6), (6,), (1, 3)], ids=["W", "b", "one_row"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_update(backend, rule_name, weight_decay, shape, layout, dtype, rng):
    """Four steps of ``backend.update`` against PyTorch's rule, W and every slot updated in place."""
    rule, optimizer, kind, settings = _update_case(rule_name, weight_decay)
    W0 = rng.standard_normal(shape)
    grads = [rng.standard_normal(shape) for _ in range(4)]
    W = put(backend, W0, dtype, layout)
    slots = {name: put(backend, np.zeros(shape), dtype, layout) for name in rule.slots}
    arrays = dict(slots)
    for t, dW in enumerate(grads, start=1):
        G = put(backend, dW, dtype, layout)
        W_out, slots_out = backend.update(rule, W, G, slots, optimizer.step_inputs(t))
        if isinstance(W, np.ndarray):  # host arrays: updated in place, and returned
            assert W_out is W and slots_out is slots
            assert all(slots[name] is arrays[name] for name in rule.slots)
        np.testing.assert_array_equal(get(backend, G), dW.astype(dtype))  # the gradient is left alone
        W, slots = W_out, slots_out
    assert set(slots) == set(rule.slots)
    ref_W, ref_slots = ref_run(kind, as64(W0, dtype), [as64(g, dtype) for g in grads], rule.slots, settings)
    assert_close(backend, W, ref_W, dtype)
    for name in rule.slots:
        assert_close(backend, slots[name], ref_slots[name], dtype)


@pytest.mark.parametrize("rule_name", list(UPDATE_CASES))
def test_weight_decay_matters_at_these_settings(rule_name, rng):
    """The formulas' decay is far from a no-op at the settings above: test_update sees it in float32."""
    _, _, kind, settings = _update_case(rule_name, 0.1)
    _, _, _, plain = _update_case(rule_name, 0.0)
    slots = _update_case(rule_name, 0.0)[0].slots
    W0, grads = rng.standard_normal((2, 3)), [rng.standard_normal((2, 3)) for _ in range(4)]
    decayed, not_decayed = ref_run(kind, W0, grads, slots, settings)[0], ref_run(kind, W0, grads, slots, plain)[0]
    assert np.max(np.abs(decayed - not_decayed)) > 1e-3


@pytest.mark.parametrize("rule_name", list(UPDATE_CASES))
@pytest.mark.parametrize("view", ["strided", "rows"])
def test_update_in_place_through_a_view(backend, rule_name, view):
    """In place means in place: a view of a larger buffer (W and each slot) is updated where it
    lives, the rest of the buffer untouched; a strided view, and a contiguous block of rows."""
    rule, optimizer, kind, settings = _update_case(rule_name, 0.05)
    g = np.random.default_rng(3)

    def buffer():
        return backend.asarray(np.full((6, 8), 7.0))

    def part(A):
        return A[:, ::2] if view == "strided" else A[2:5]

    W0 = g.standard_normal((6, 8))
    wide = backend.asarray(W0.copy())  # (NumPy's asarray would share W0)
    wides = {name: buffer() for name in rule.slots}
    W = part(wide)
    slots = {name: part(A) for name, A in wides.items()}
    for name in rule.slots:  # zero state, as a new optimizer's
        slots[name][...] = 0.0
    grads = [g.standard_normal(tuple(W.shape)) for _ in range(2)]
    for t, dW in enumerate(grads, start=1):
        out, _ = backend.update(rule, W, backend.asarray(dW), slots, optimizer.step_inputs(t))
    ref_W, ref_slots = ref_run(kind, part(W0), grads, rule.slots, settings)
    assert_close(backend, out, ref_W, "float64")
    if isinstance(W, np.ndarray):
        expected = W0.copy()
        part(expected)[...] = ref_W
        np.testing.assert_allclose(get(backend, wide), expected, rtol=1e-12, atol=1e-12)
        for name, A in wides.items():
            expected = np.full((6, 8), 7.0)
            part(expected)[...] = ref_slots[name]
            np.testing.assert_allclose(get(backend, A), expected, rtol=1e-12, atol=1e-12)


def test_step_inputs_are_the_settings_and_the_bias_corrections():
    """Adam's per-step scalars: c1 = 1/(1−β1^t), c2 = 1/(1−β2^t); settings as floats."""
    for cls in (fastnn.Adam, fastnn.AdamW):
        opt = cls(lr=0.02, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.3)
        for t in (1, 2, 10):
            h = opt.step_inputs(t)
            assert h == pytest.approx(dict(lr=0.02, weight_decay=0.3, beta1=0.8, beta2=0.95, eps=1e-6,
                                           c1=1 / (1 - 0.8 ** t), c2=1 / (1 - 0.95 ** t)), rel=1e-15)
            assert all(type(value) is float for value in h.values())
    assert fastnn.RMSprop(lr=0.1, alpha=0.5, momentum=0.25).step_inputs(3) == \
        dict(lr=0.1, weight_decay=0.0, alpha=0.5, eps=1e-8, momentum=0.25)


# ---- sum_rows ------------------------------------------------------------------------
@pytest.mark.parametrize("B", (1, 7, 100))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_rows(backend, B, layout, dtype, rng):
    X = rng.standard_normal((B, 6))
    expected = [math.fsum(col) for col in as64(X, dtype).T]
    assert_close(backend, backend.sum_rows(put(backend, X, dtype, layout)), expected, dtype)


# ---- every backend keeps the base class's signatures ----------------------------------
def _public_ops():
    return {name: member for name, member in vars(Backend).items()
            if not name.startswith("_") and callable(member)}


@pytest.mark.parametrize("name", sorted(_BUILTIN))
def test_backend_signatures_match_the_contract(name):
    """A backend may override an op, never change how it is called (thinc's test)."""
    try:
        cls = _load_class(name)
    except BackendUnavailable as exc:
        pytest.skip(f"backend {name!r}: module not importable: {exc}")
    assert issubclass(cls, Backend)
    checked = 0
    for op, base in _public_ops().items():
        mine = getattr(cls, op)
        assert inspect.signature(mine) == inspect.signature(base), \
            f"{cls.__name__}.{op}{inspect.signature(mine)} != Backend.{op}{inspect.signature(base)}"
        checked += 1
    assert checked >= 12  # the contract's ops were all seen
