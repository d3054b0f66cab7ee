"""Any array with the DLPack protocol is an input: ``fit``, ``predict``, ``evaluate`` take a torch or
JAX tensor (or any ``__dlpack__`` object) as they take a NumPy array, with the same checks and
messages. Host memory becomes a NumPy view (no copy, read-only exports stay unwritten); GPU memory
is refused on a CPU backend with what to do, and taken where it lies by the cupy backend.
"""
import numpy as np
import pytest

import fastnn
from fastnn import validation as check

N_IN, N_OUT, ROWS = 4, 3, 24
CUDA = 2  # DLPack's kDLCUDA


class DLPackOnly:
    """An array that speaks only DLPack: no ``__array__``, no ``__array_namespace__``, no shape."""

    def __init__(self, array):
        self._array = array

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


class OnGPU:
    """An array whose memory DLPack says lies on CUDA GPU 0; fastnn must not try to read it."""

    def __dlpack__(self, **kwargs):
        raise AssertionError("a CPU backend must not import GPU memory")

    def __dlpack_device__(self):
        return (CUDA, 0)


@pytest.fixture
def data():
    g = np.random.default_rng(0)
    return g.standard_normal((ROWS, N_IN)).astype(np.float32), g.integers(0, N_OUT, ROWS)


def _net(backend="numpy", dtype="float32"):
    return fastnn.Sequential(fastnn.Dense(N_IN, 6), fastnn.Tanh(), fastnn.Dense(6, N_OUT),
                             backend=backend, seed=0, dtype=dtype)


def _trained(backend, X, y, **fit):
    net = _net(backend)
    history = net.fit(X, y, epochs=2, batch_size=8, loss="cross_entropy", lr=0.1, shuffle=False, **fit)
    net.scores = _scores(history)
    return net


def _scores(history):
    """The per-epoch numbers of a fit (its timings left out)."""
    return {key: values for key, values in history.history.items() if key != "seconds"}


def _weights(net):
    return [net.backend.to_numpy(p) for d in net.dense_layers for p in (d.W, d.b)]


@pytest.fixture(params=["numpy", "numba"])
def cpu_backend(request, backend_status):
    """A CPU backend (numpy, numba); one that is not usable here skips with its reason."""
    available, reason = backend_status.get(request.param, (False, "not registered"))
    if not available:
        pytest.skip(f"backend {request.param!r} unavailable: {reason}")
    return request.param


# ---- the protocol alone is enough -------------------------------------------------
def test_fit_predict_evaluate_take_a_dlpack_only_array(backend_name, data):
    X, y = data
    given = X.copy(), y.copy()
    plain = _trained(backend_name, X, y, validation_data=(X, y))
    wrapped = _trained(backend_name, DLPackOnly(X), DLPackOnly(y),
                       validation_data=(DLPackOnly(X), DLPackOnly(y)))
    for a, b in zip(_weights(plain), _weights(wrapped)):
        np.testing.assert_array_equal(a, b)
    assert wrapped.scores == plain.scores and "val_loss" in plain.scores
    np.testing.assert_array_equal(wrapped.predict(DLPackOnly(X)), plain.predict(X))
    np.testing.assert_array_equal(wrapped.predict_proba(DLPackOnly(X)), plain.predict_proba(X))
    w = np.linspace(0.5, 2.0, ROWS)
    assert wrapped.evaluate(DLPackOnly(X), DLPackOnly(y), sample_weight=DLPackOnly(w)) \
        == plain.evaluate(X, y, sample_weight=w)
    np.testing.assert_array_equal(X, given[0])  # read in place, never written
    np.testing.assert_array_equal(y, given[1])


def test_regression_targets_and_validation_split_through_dlpack(cpu_backend, data):
    X, _ = data
    Y = np.tanh(X[:, :N_OUT]).astype(np.float64)  # float target rows: a regression
    runs = []
    for Xi, Yi in ((X, Y), (DLPackOnly(X), DLPackOnly(Y))):
        net = _net(cpu_backend)
        history = net.fit(Xi, Yi, epochs=1, batch_size=8, loss="mse", lr=0.1, validation_split=0.25,
                          shuffle=False)
        runs.append((_scores(history), net.evaluate(Xi, Yi)))
    assert set(runs[1][1]) == {"loss", "mae", "rmse", "r2"}  # y read as float rows, not labels
    assert runs[1] == runs[0] and "val_loss" in runs[0][0]


# ---- without a copy ---------------------------------------------------------------
def test_host_memory_is_used_in_place(cpu_backend, data):
    X, y = data
    net = _net(cpu_backend)
    assert np.shares_memory(check.batch(net, DLPackOnly(X)), X)
    assert np.shares_memory(check.training_set(net, DLPackOnly(X)), X)
    X64 = X.astype(np.float64)  # the model's dtype differs: one conversion, as for a NumPy array
    assert not np.shares_memory(check.batch(net, DLPackOnly(X64)), X64)


def test_read_only_exports_are_never_written(cpu_backend, data):
    # numba types a read-only X apart from a writable one: with a cold cache this fit compiles its
    # epoch once more (~20 s, cached after). The kernels could not write into it if they tried.
    X, y = data
    X, y, w = X.copy(), y.copy(), np.ones(ROWS)
    for a in (X, y, w):
        a.flags.writeable = False
    view = check.batch(_net(cpu_backend), DLPackOnly(X))
    assert np.shares_memory(view, X) and not view.flags.writeable  # NumPy >= 2.1 marks the export
    before = X.copy(), y.copy()
    net = _trained(cpu_backend, DLPackOnly(X), DLPackOnly(y), validation_data=(DLPackOnly(X), DLPackOnly(y)))
    net.predict(DLPackOnly(X))
    net.evaluate(DLPackOnly(X), DLPackOnly(y), sample_weight=DLPackOnly(w))
    np.testing.assert_array_equal(X, before[0])
    np.testing.assert_array_equal(y, before[1])


# ---- the usual checks, with the usual messages -------------------------------------
@pytest.mark.parametrize("spoil", [
    lambda X: X[:, :3],                                  # too few columns
    lambda X: X[:, 0],                                   # 1-D
    lambda X: X[:0],                                     # no rows
    lambda X: np.where(np.arange(N_IN) == 2, np.nan, X).astype(np.float32),  # NaN
], ids=["width", "1-D", "empty", "nan"])
def test_bad_x_gets_the_message_a_numpy_array_gets(spoil, data):
    X, y = data
    bad = np.ascontiguousarray(spoil(X))
    messages = []
    for given in (bad, DLPackOnly(bad)):
        with pytest.raises((ValueError, TypeError)) as excinfo:
            _net().predict(given)
        messages.append((type(excinfo.value), str(excinfo.value)))
    assert messages[1] == messages[0]


def test_bad_labels_get_the_message_a_numpy_array_gets(data):
    X, y = data
    for bad in (y + N_OUT, y[:-1]):
        messages = []
        for given in (bad, DLPackOnly(bad)):
            with pytest.raises(ValueError) as excinfo:
                _net().evaluate(X, given)
            messages.append(str(excinfo.value))
        assert messages[1] == messages[0]


def test_unscaled_pixels_warn_as_numpy_pixels_do(data):
    _, y = data
    pixels = np.random.default_rng(1).integers(0, 256, (ROWS, N_IN), dtype=np.uint8)
    with pytest.warns(fastnn.UnscaledInputWarning, match="divide by 255") as caught:
        _net().fit(DLPackOnly(pixels), y, epochs=1, lr=0.1)
    assert caught[0].filename == __file__  # it points at the user's line, as for NumPy input


# ---- GPU memory on a CPU backend --------------------------------------------------
@pytest.mark.parametrize("where", ["X", "y", "validation_data X_val", "sample_weight"])
def test_gpu_memory_on_a_cpu_backend_says_what_to_do(cpu_backend, data, where):
    X, y = data
    net = _net(cpu_backend)
    calls = {
        "X": lambda: net.predict(OnGPU()),
        "y": lambda: net.fit(X, OnGPU(), epochs=1, lr=0.1),
        "validation_data X_val": lambda: net.fit(X, y, epochs=1, lr=0.1, validation_data=(OnGPU(), y)),
        "sample_weight": lambda: net.evaluate(X, y, sample_weight=OnGPU()),
    }
    with pytest.raises(TypeError, match=rf"^{where}: OnGPU lies on a CUDA GPU \(DLPack device type 2\).*"
                                        rf"move it to the host first \(a torch tensor: \.cpu\(\)\)"):
        calls[where]()


def test_the_cpu_backend_error_offers_the_gpu_backend(cpu_backend):
    with pytest.raises(TypeError, match=rf"backend '{cpu_backend}' computes on the CPU.*backend='cupy'"):
        _net(cpu_backend).predict(OnGPU())


# ---- torch ------------------------------------------------------------------------
@pytest.mark.parametrize("x_dtype", ["float32", "float64", "uint8"])
@pytest.mark.parametrize("y_dtype", ["int64", "int32", "uint8"])
def test_torch_cpu_tensors(cpu_backend, data, x_dtype, y_dtype):
    torch = pytest.importorskip("torch", reason="torch is not installed: its tensors cannot be tested")
    X, y = data
    X = (X > 0).astype(x_dtype)  # 0/1: scaled for every dtype, uint8 included
    y = y.astype(y_dtype)
    plain = _trained(cpu_backend, X, y)
    tensors = _trained(cpu_backend, torch.from_numpy(X), torch.from_numpy(y),
                       validation_data=(torch.from_numpy(X), torch.from_numpy(y)))
    for a, b in zip(_weights(plain), _weights(tensors)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(tensors.predict(torch.from_numpy(X)), plain.predict(X))
    assert tensors.evaluate(torch.from_numpy(X), torch.from_numpy(y)) == plain.evaluate(X, y)


def test_torch_tensors_are_read_in_place(cpu_backend, data):
    torch = pytest.importorskip("torch", reason="torch is not installed: its tensors cannot be tested")
    X, _ = data
    t = torch.from_numpy(X.copy())
    assert np.shares_memory(check.batch(_net(cpu_backend), t), t.numpy())


def test_torch_tensor_that_requires_grad_is_refused_clearly(data):
    torch = pytest.importorskip("torch", reason="torch is not installed: its tensors cannot be tested")
    X, _ = data
    with pytest.raises(TypeError, match=r"^X: Tensor could not be read through DLPack .*detach\(\)"):
        _net().predict(torch.from_numpy(X).requires_grad_())


# ---- JAX --------------------------------------------------------------------------
def test_jax_cpu_arrays(cpu_backend, data):
    jnp = pytest.importorskip("jax.numpy", reason="JAX is not installed: its arrays cannot be tested")
    X, y = data
    jX, jy = jnp.asarray(X), jnp.asarray(y.astype(np.int32))
    if jX.__dlpack_device__()[0] != 1:
        pytest.skip("JAX's default device here is not the CPU")
    plain = _trained(cpu_backend, X, y)
    from_jax = _trained(cpu_backend, jX, jy)
    for a, b in zip(_weights(plain), _weights(from_jax)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(from_jax.predict(jX), plain.predict(X))


# ---- the cupy backend -------------------------------------------------------------
@pytest.fixture
def cupy_backend(backend_status):
    pytest.importorskip("cupy", reason="CuPy is not installed: the GPU backend's DLPack paths cannot be tested")
    available, reason = backend_status.get("cupy", (False, "not registered"))
    if not available:
        pytest.skip(f"backend 'cupy' unavailable: {reason}")
    return "cupy"


@pytest.mark.gpu
def test_cupy_takes_gpu_memory_where_it_lies(cupy_backend, data):
    import cupy
    X, y = data
    on_gpu = cupy.asarray(X)
    net = _net(cupy_backend)
    placed = check.batch(net, DLPackOnly(on_gpu))
    assert isinstance(placed, cupy.ndarray) and placed.data.ptr == on_gpu.data.ptr  # no copy
    wrapped = _trained(cupy_backend, DLPackOnly(on_gpu), DLPackOnly(cupy.asarray(y)))
    plain = _trained(cupy_backend, X, y)
    for a, b in zip(_weights(plain), _weights(wrapped)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_cupy_takes_host_memory_as_it_takes_numpy_arrays(cupy_backend, data):
    import cupy
    X, y = data
    net = _net(cupy_backend)
    placed = check.batch(net, DLPackOnly(X))  # one copy to the GPU at the model's boundary
    assert isinstance(placed, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(placed), X)


@pytest.mark.gpu
def test_torch_cuda_tensors_on_cupy(cupy_backend, data):
    torch = pytest.importorskip("torch", reason="torch is not installed: its tensors cannot be tested")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    import cupy
    X, y = data
    tX, ty = torch.from_numpy(X).cuda(), torch.from_numpy(y).cuda()
    placed = check.batch(_net(cupy_backend), tX)
    assert isinstance(placed, cupy.ndarray) and placed.data.ptr == tX.data_ptr()
    net = _trained(cupy_backend, tX, ty)
    assert set(net.evaluate(tX, ty, sample_weight=torch.ones(ROWS, device="cuda"))) == {"loss", "accuracy"}


@pytest.mark.gpu
def test_a_cupy_array_on_a_cpu_backend_says_what_to_do(cupy_backend, data):
    import cupy
    X, _ = data
    with pytest.raises(TypeError, match=r"ndarray lies on a CUDA GPU.*\.cpu\(\).*backend='cupy'"):
        _net("numpy").predict(cupy.asarray(X))
