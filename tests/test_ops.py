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
from fastnn.backend import ACTIVATIONS, Backend, BackendUnavailable, _BUILTIN, _load_class

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


def ref_act(Z, act):
    out = np.empty_like(Z)
    for idx, z in np.ndenumerate(Z):
        if act == "sigmoid":
            out[idx] = ref_sigmoid(z)
        elif act == "relu":
            out[idx] = z if z > 0 else 0.0
        elif act == "tanh":
            out[idx] = math.tanh(z)
        else:
            out[idx] = z
    return out


def ref_act_derivative(Y, act):
    """act'(z) written with the output y = act(z)."""
    if act == "sigmoid":
        return Y * (1 - Y)
    if act == "relu":
        return (Y > 0).astype(np.float64)
    if act == "tanh":
        return 1 - Y ** 2
    return np.ones_like(Y)


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
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_act(backend, act, with_bias, B, layout, dtype, rng):
    Z = rng.standard_normal((B, 9)) * 3
    Z[0, :3] = (0.0, 40.0, -40.0)  # a zero (the ReLU kink) and saturated values
    b = rng.standard_normal(9) if with_bias else None
    pre = as64(Z, dtype) + (as64(b, dtype) if with_bias else 0.0)
    # the bias add happens in the array's dtype, as the backend does it
    pre = pre.astype(dtype).astype(np.float64)
    dZ = put(backend, Z, dtype, layout)
    db = put(backend, b, dtype, layout) if with_bias else None
    Y = backend.bias_act(dZ, db, act)
    assert_close(backend, Y, ref_act(pre, act), dtype)
    np.testing.assert_array_equal(get(backend, dZ), Z.astype(dtype))  # Z is not overwritten


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_act_backward(backend, act, B, layout, dtype, rng):
    Y = ref_act(rng.standard_normal((B, 8)) * 2, act)  # a real activation output (ReLU: zeros too)
    if act == "relu":
        Y[0, :2] = (0.0, 1.5)
    dY = rng.standard_normal((B, 8))
    expected = as64(dY, dtype) * ref_act_derivative(as64(Y, dtype), act)
    ddY = put(backend, dY, dtype, layout)
    dZ = backend.act_backward(put(backend, Y, dtype, layout), ddY, act)
    assert_close(backend, dZ, expected, dtype)
    np.testing.assert_array_equal(get(backend, ddY), dY.astype(dtype))


def test_unknown_activation(backend):
    Z = backend.asarray(np.ones((2, 3)))
    with pytest.raises(ValueError, match="unknown activation 'softplus'"):
        backend.bias_act(Z, None, "softplus")
    with pytest.raises(ValueError, match="unknown activation 'softplus'"):
        backend.act_backward(Z, Z, "softplus")


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


# ---- optimizer steps -----------------------------------------------------------------
SGD_CASES = {
    "plain": dict(momentum=0.0, nesterov=False, weight_decay=0.0),
    "momentum": dict(momentum=0.9, nesterov=False, weight_decay=0.0),
    "nesterov": dict(momentum=0.9, nesterov=True, weight_decay=0.0),
    "weight_decay": dict(momentum=0.0, nesterov=False, weight_decay=0.05),
    "all": dict(momentum=0.5, nesterov=True, weight_decay=0.05),
}


def ref_sgd(W, grads, lr, momentum, nesterov, weight_decay):
    """Element by element: g = dW + wd·W; v = μv + g; w -= lr·(g + μv if nesterov else v, or g)."""
    W, V = W.copy(), np.zeros_like(W)
    for dW in grads:
        for k in np.ndindex(W.shape):
            g = dW[k] + weight_decay * W[k]
            if momentum:
                V[k] = momentum * V[k] + g
                step = g + momentum * V[k] if nesterov else V[k]
            else:
                step = g
            W[k] -= lr * step
    return W, V


@pytest.mark.parametrize("case", SGD_CASES)
@pytest.mark.parametrize("shape", [(5, 6), (6,), (1, 3)], ids=["W", "b", "one_row"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_update(backend, case, shape, layout, dtype, rng):
    opts = SGD_CASES[case]
    W0 = rng.standard_normal(shape)
    grads = [rng.standard_normal(shape) for _ in range(3)]
    lr = 0.1
    W = put(backend, W0, dtype, layout)
    V = put(backend, np.zeros(shape), dtype, layout) if opts["momentum"] else None
    for dW in grads:
        W_out, V_out = backend.sgd_update(W, put(backend, dW, dtype, layout), lr, V, **opts)
        if isinstance(W, np.ndarray):  # host arrays: updated in place, and returned
            assert W_out is W and V_out is V
        W, V = W_out, V_out
    ref_W, ref_V = ref_sgd(as64(W0, dtype), [as64(g, dtype) for g in grads], lr, **opts)
    assert_close(backend, W, ref_W, dtype)
    if opts["momentum"]:
        assert_close(backend, V, ref_V, dtype)
    else:
        assert V is None


def test_sgd_update_in_place_through_a_view(backend):
    """In place means in place: a strided view of a larger buffer is updated where it lives."""
    wide = backend.asarray(np.ones((3, 8)))
    W = wide[:, ::2]
    out, _ = backend.sgd_update(W, backend.asarray(np.ones((3, 4))), 0.5)
    assert_close(backend, out, np.full((3, 4), 0.5), "float64")
    if isinstance(W, np.ndarray):
        expected = np.ones((3, 8))
        expected[:, ::2] = 0.5
        np.testing.assert_array_equal(get(backend, wide), expected)


def ref_adam(W, grads, lr, beta1, beta2, eps, weight_decay):
    W, M, V = W.copy(), np.zeros_like(W), np.zeros_like(W)
    for t, dW in enumerate(grads, start=1):
        for k in np.ndindex(W.shape):
            g = dW[k] + weight_decay * W[k]
            M[k] = beta1 * M[k] + (1 - beta1) * g
            V[k] = beta2 * V[k] + (1 - beta2) * g * g
            m_hat = M[k] / (1 - beta1 ** t)
            v_hat = V[k] / (1 - beta2 ** t)
            W[k] -= lr * m_hat / (math.sqrt(v_hat) + eps)
    return W, M, V


@pytest.mark.parametrize("opts", [dict(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0),
                                  dict(beta1=0.5, beta2=0.9, eps=1e-3, weight_decay=0.1)],
                         ids=["default", "custom"])
@pytest.mark.parametrize("shape", [(5, 6), (6,)], ids=["W", "b"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_update(backend, opts, shape, layout, dtype, rng):
    W0 = rng.standard_normal(shape)
    grads = [rng.standard_normal(shape) for _ in range(4)]
    lr = 0.01
    W = put(backend, W0, dtype, layout)
    M, V = put(backend, np.zeros(shape), dtype, layout), put(backend, np.zeros(shape), dtype, layout)
    for t, dW in enumerate(grads, start=1):
        out = backend.adam_update(W, put(backend, dW, dtype, layout), lr, M, V, t, **opts)
        if isinstance(W, np.ndarray):
            assert out[0] is W and out[1] is M and out[2] is V
        W, M, V = out
    ref_W, ref_M, ref_V = ref_adam(as64(W0, dtype), [as64(g, dtype) for g in grads], lr, **opts)
    assert_close(backend, W, ref_W, dtype)
    assert_close(backend, M, ref_M, dtype)
    assert_close(backend, V, ref_V, dtype)


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
