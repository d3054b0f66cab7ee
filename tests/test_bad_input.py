"""Bad input gets a clear ValueError/TypeError naming the argument and what was expected,
raised at the public entry point, before any work (never from inside a kernel), and the
same on every backend. Inputs that are merely inconvenient (integer or float64 X,
non-contiguous arrays, lists) are accepted and converted.
"""
import numpy as np
import pytest

import fastnn

N_IN, N_OUT = 4, 3


def _net(backend="numpy", n_out=N_OUT, dtype="float32"):
    return fastnn.Sequential(fastnn.Dense(N_IN, 5), fastnn.Sigmoid(), fastnn.Dense(5, n_out),
                             backend=backend, seed=0, dtype=dtype)


@pytest.fixture
def Xy():
    g = np.random.default_rng(0)
    return g.standard_normal((12, N_IN)).astype(np.float32), g.integers(0, N_OUT, 12)


def _weights(net):
    return [net.backend.to_numpy(p).copy() for d in net.dense_layers for p in (d.W, d.b)]


def _clean(excinfo):
    """Raised by fastnn itself: nothing from NumPy/numba chained underneath."""
    err = excinfo.value
    return err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


# ---- building a model ------------------------------------------------------------
def test_shapes_that_do_not_chain():
    with pytest.raises(ValueError, match=r"layer 2 Dense\(784, 30.*expects 784 inputs, but the layer before it gives 100"):
        fastnn.Sequential(fastnn.Dense(10, 100), fastnn.Sigmoid(), fastnn.Dense(784, 30))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(n_in=0, n_out=3), ValueError, "n_in must be a positive integer, got 0"),
    (dict(n_in=3, n_out=-1), ValueError, "n_out must be a positive integer, got -1"),
    (dict(n_in=2.0, n_out=3), ValueError, "n_in must be a positive integer, got 2.0"),
    (dict(n_in=True, n_out=3), ValueError, "n_in must be a positive integer"),
    (dict(n_in=3, n_out=2, init="xavier"), ValueError,
     "unknown init 'xavier'; expected one of normal, lecun_normal, glorot_uniform, he_normal"),
])
def test_bad_dense(kwargs, error, match):
    with pytest.raises(error, match=match):
        fastnn.Dense(**kwargs)


@pytest.mark.parametrize("build, error, match", [
    (lambda: fastnn.Sequential(), ValueError, "at least one layer"),
    (lambda: fastnn.Sequential(fastnn.Sigmoid()), ValueError, "at least one Dense layer"),
    (lambda: fastnn.Sequential(fastnn.Dense(3, 2), "relu"), TypeError, "layer 1 is str, not a fastnn layer"),
    (lambda: fastnn.Sequential(fastnn.Dense(3, 2), dtype="float16"), ValueError,
     "dtype must be 'float32' or 'float64', got 'float16'"),
    (lambda: fastnn.Sequential(fastnn.Dense(3, 2), seed="abc"), TypeError, "seed must be None or a non-negative integer"),
    (lambda: fastnn.Sequential(fastnn.Dense(3, 2), seed=-1), TypeError, "seed must be None or a non-negative integer"),
    (lambda: fastnn.Sequential(fastnn.Dense(3, 2), backend="tensorflow"), ValueError,
     "unknown backend 'tensorflow'; known backends: .*numpy"),
    (lambda: fastnn.Sequential(fastnn.Dense(3, 2), backend=3.5), TypeError, "backend must be a name or a Backend"),
])
def test_bad_model(build, error, match):
    with pytest.raises(error, match=match) as info:
        build()
    assert _clean(info)


# ---- X ---------------------------------------------------------------------------------
BAD_X = {
    "wrong_width": (np.ones((5, N_IN + 1)), ValueError, rf"X: expected {N_IN} columns \(the model's input width\), got {N_IN + 1}"),
    "one_d": (np.ones(N_IN), ValueError, r"X: expected a 2-D array \(B, 4\), got shape \(4,\)"),
    "three_d": (np.ones((2, N_IN, 1)), ValueError, r"X: expected a 2-D array"),
    "scalar": (3.0, ValueError, r"X: expected a 2-D array"),
    "empty": (np.ones((0, N_IN)), ValueError, r"X: is empty \(0 rows\)"),
    "nan": (np.array([[0.0] * N_IN, [0.0, np.nan, 0.0, 0.0]]), ValueError, r"X: contains NaN or inf \(first in row 1\)"),
    "inf": (np.full((2, N_IN), np.inf), ValueError, r"X: contains NaN or inf"),
    "strings": (np.full((2, N_IN), "a"), TypeError, r"X: expected numbers, got dtype <U1"),
    "objects": ([[1, 2, None, 4]], TypeError, r"X: expected numbers, got dtype object"),
    "none": (None, TypeError, r"X: expected numbers"),
    "ragged": ([[1.0, 2.0], [3.0]], TypeError, r"X: expected an array"),
}


@pytest.mark.parametrize("case", BAD_X)
@pytest.mark.parametrize("entry", ["fit", "predict", "predict_proba", "forward", "evaluate", "backprop"])
def test_bad_X(backend_name, entry, case, Xy):
    X, error, match = BAD_X[case]
    _, y = Xy
    net = _net(backend_name)
    rows = len(X) if isinstance(X, (list, np.ndarray)) else 1
    y = y[:rows] if entry in ("fit", "evaluate", "backprop") else None
    call = {
        "fit": lambda: net.fit(X, y, epochs=1, lr=0.1),
        "predict": lambda: net.predict(X),
        "predict_proba": lambda: net.predict_proba(X),
        "forward": lambda: net(X),
        "evaluate": lambda: net.evaluate(X, y),
        "backprop": lambda: net.backprop(X, y),
    }[entry]
    before = _weights(net)
    with pytest.raises(error, match=match) as info:
        call()
    assert _clean(info)
    for a, b in zip(before, _weights(net)):
        np.testing.assert_array_equal(a, b)


def test_bad_X_already_on_the_backend(backend):
    """An array already on the backend is checked where it lives, with the same messages."""
    net = _net(backend)
    with pytest.raises(ValueError, match="X: contains NaN or inf"):
        net.predict(backend.asarray(np.full((2, N_IN), np.nan, dtype=np.float32)))
    with pytest.raises(ValueError, match=rf"X: expected .*{N_IN}"):
        net.predict(backend.asarray(np.ones((2, N_IN + 2), dtype=np.float32)))


# ---- inconvenient but fine: converted, not refused ---------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_integer_and_float64_X_are_converted(backend_name, dtype, Xy):
    X, y = Xy
    Xi = np.round(X * 3).astype(np.int64)
    net = _net(backend_name, dtype=dtype)
    expected = net.predict_proba(Xi.astype(dtype))
    for given in (Xi, Xi.astype(np.int32), Xi.astype(np.float64), Xi.astype(np.float32), Xi.tolist()):
        P = net.predict_proba(given)
        assert P.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(P, expected)
    history = net.fit(Xi, y, epochs=1, batch_size=4, loss="cross_entropy", lr=0.1)
    assert np.isfinite(history["loss"][0])


def test_non_contiguous_arrays_are_accepted(backend_name, Xy):
    X, y = Xy
    wide = np.zeros((12, 2 * N_IN), dtype=np.float32)
    wide[:, ::2] = X
    layouts = {"fortran": np.asfortranarray(X), "strided": wide[:, ::2], "reversed": X[::-1][::-1]}
    y_strided = np.zeros(24, dtype=y.dtype)
    y_strided[::2] = y
    reference = _net(backend_name)
    reference.fit(X, y, epochs=2, batch_size=5, loss="cross_entropy", lr=0.1)
    for name, given in layouts.items():
        assert not given.flags.c_contiguous or name == "reversed"
        net = _net(backend_name)
        net.fit(given, y_strided[::2], epochs=2, batch_size=5, loss="cross_entropy", lr=0.1)
        for a, b in zip(_weights(reference), _weights(net)):
            np.testing.assert_array_equal(a, b, err_msg=name)
        np.testing.assert_array_equal(net.predict_proba(given), reference.predict_proba(X))


def test_the_callers_arrays_are_left_alone(backend_name, Xy):
    X, y = Xy
    X_copy, y_copy = X.copy(), y.copy()
    net = _net(backend_name)
    net.fit(X, y, epochs=1, batch_size=4, loss="cross_entropy", lr=0.1, validation_data=(X, y))
    net.predict(X)
    np.testing.assert_array_equal(X, X_copy)
    np.testing.assert_array_equal(y, y_copy)


# ---- y ---------------------------------------------------------------------------------
BAD_Y = {
    "too_short": (lambda y: y[:-1], ValueError, r"y: expected 12 targets \(one per row of X\), got shape \(11,\)"),
    "too_long": (lambda y: np.concatenate([y, y]), ValueError, r"y: expected 12 targets"),
    "scalar": (lambda y: 1, ValueError, r"y: expected 12 targets"),
    "label_too_big": (lambda y: np.where(np.arange(12) == 3, N_OUT, y), ValueError,
                      rf"y: labels must be in \[0, {N_OUT - 1}\] for a model with {N_OUT} outputs; got 0..{N_OUT}"),
    "negative_label": (lambda y: np.where(np.arange(12) == 3, -1, y), ValueError, r"y: labels must be in \[0, 2\]"),
    "fractional": (lambda y: y + 0.5, TypeError, r"y: 1-D targets must be integer class labels"),
    "nan_label": (lambda y: np.where(np.arange(12) == 0, np.nan, y), TypeError, r"y: 1-D targets must be integer"),
    "wrong_columns": (lambda y: np.ones((12, N_OUT + 1)), ValueError,
                      rf"y: target rows must have {N_OUT} columns \(the model's output width\), got {N_OUT + 1}"),
    "nan_rows": (lambda y: np.full((12, N_OUT), np.nan), ValueError, r"y: contains NaN or inf"),
    "strings": (lambda y: np.array(["cat"] * 12), TypeError, r"y: expected labels or target rows, got dtype <U3"),
    "none": (lambda y: None, TypeError, r"y: expected labels or target rows"),
    "three_d": (lambda y: np.ones((12, N_OUT, 1)), ValueError, r"y: expected 1-D labels or 2-D target rows"),
}


@pytest.mark.parametrize("case", BAD_Y)
@pytest.mark.parametrize("entry", ["fit", "evaluate", "backprop"])
def test_bad_y(backend_name, entry, case, Xy):
    X, y = Xy
    make, error, match = BAD_Y[case]
    net = _net(backend_name)
    call = {"fit": lambda: net.fit(X, make(y), epochs=1, lr=0.1),
            "evaluate": lambda: net.evaluate(X, make(y)),
            "backprop": lambda: net.backprop(X, make(y))}[entry]
    with pytest.raises(error, match=match) as info:
        call()
    assert _clean(info)


def test_labels_of_a_one_output_model(Xy):
    X, _ = Xy
    net = _net(n_out=1)
    net.fit(X, np.arange(12) % 2, epochs=1, loss="binary_cross_entropy", lr=0.1)  # 0/1: fine
    with pytest.raises(ValueError, match=r"y: labels must be in \[0, 1\] for a model with 1 output; got 0..2"):
        net.fit(X, np.arange(12) % 3, epochs=1, loss="binary_cross_entropy", lr=0.1)


def test_float_labels_that_are_integers_are_accepted(Xy):
    X, y = Xy
    a, b = _net(), _net()
    a.fit(X, y, epochs=1, lr=0.1)
    b.fit(X, y.astype(np.float64), epochs=1, lr=0.1)
    for p, q in zip(_weights(a), _weights(b)):
        np.testing.assert_array_equal(p, q)


# ---- fit's settings -----------------------------------------------------------------------
BAD_FIT = {
    "batch_size_0": (dict(batch_size=0), ValueError, r"batch_size must be an integer >= 1, got 0"),
    "batch_size_negative": (dict(batch_size=-5), ValueError, r"batch_size must be an integer >= 1, got -5"),
    "batch_size_float": (dict(batch_size=2.5), ValueError, r"batch_size must be an integer >= 1, got 2.5"),
    "epochs_negative": (dict(epochs=-1), ValueError, r"epochs must be an integer >= 0, got -1"),
    "epochs_float": (dict(epochs=1.5), ValueError, r"epochs must be an integer >= 0, got 1.5"),
    "lr_zero": (dict(lr=0), ValueError, r"lr must be a positive number, got 0"),
    "lr_negative": (dict(lr=-0.1), ValueError, r"lr must be a positive number, got -0.1"),
    "lr_nan": (dict(lr=float("nan")), ValueError, r"lr must be a positive number, got nan"),
    "lr_inf": (dict(lr=float("inf")), ValueError, r"lr must be a positive number, got inf"),
    "lr_string": (dict(lr="0.1"), ValueError, r"lr must be a positive number, got '0.1'"),
    "unknown_loss": (dict(loss="hinge"), ValueError,
                     r"loss: unknown loss 'hinge'; expected one of mse, cross_entropy, binary_cross_entropy"),
    "loss_not_a_name": (dict(loss=3), ValueError, r"loss: unknown loss 3"),
    "lr_and_optimizer": (dict(lr=0.1, optimizer=fastnn.SGD(0.1)), ValueError, r"give optimizer= or lr=, not both"),
    "optimizer_name": (dict(optimizer="adam"), TypeError, r"optimizer: expected fastnn.SGD or fastnn.Adam, got str"),
    "validation_not_a_pair": (dict(validation_data=np.ones((3, N_IN))), ValueError,
                              r"validation_data: expected a pair \(X_val, y_val\)"),
    "validation_X_width": (dict(validation_data=(np.ones((3, N_IN + 1)), np.zeros(3, int))), ValueError,
                           rf"validation_data X_val: expected {N_IN} columns"),
    "validation_X_nan": (dict(validation_data=(np.full((3, N_IN), np.nan), np.zeros(3, int))), ValueError,
                         r"validation_data X_val: contains NaN"),
    "validation_y_length": (dict(validation_data=(np.ones((3, N_IN)), np.zeros(2, int))), ValueError,
                            r"validation_data y_val: expected 3 targets"),
    "validation_y_label": (dict(validation_data=(np.ones((3, N_IN)), np.array([0, 1, 7]))), ValueError,
                           r"validation_data y_val: labels must be in \[0, 2\]"),
    "resume_without_checkpoint": (dict(resume=True), ValueError, r"resume=True needs checkpoint="),
}


@pytest.mark.parametrize("case", BAD_FIT)
def test_bad_fit_settings(backend_name, case, Xy):
    X, y = Xy
    kwargs, error, match = BAD_FIT[case]
    net = _net(backend_name)
    net.fit(X, y, epochs=1, batch_size=4, loss="mse", optimizer=fastnn.SGD(0.1, momentum=0.9))
    before, optimizer, loss = _weights(net), net.optimizer, net.loss
    with pytest.raises(error, match=match) as info:
        net.fit(X, y, **{"epochs": 1, **kwargs})
    assert _clean(info)
    # refused before any work: weights, optimizer (and its momentum) and loss as they were
    for a, b in zip(before, _weights(net)):
        np.testing.assert_array_equal(a, b)
    assert net.optimizer is optimizer and net.loss is loss


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=0), r"batch_size must be an integer >= 1, got 0"),
    (dict(loss="hinge"), r"loss: unknown loss 'hinge'"),
])
def test_bad_evaluate_settings(kwargs, match, Xy):
    X, y = Xy
    with pytest.raises(ValueError, match=match):
        _net().evaluate(X, y, **kwargs)


def test_bad_backprop_loss(Xy):
    X, y = Xy
    with pytest.raises(ValueError, match=r"loss: unknown loss 'l1'"):
        _net().backprop(X, y, loss="l1")


# ---- optimizers ---------------------------------------------------------------------------
@pytest.mark.parametrize("build, match", [
    (lambda: fastnn.SGD(0), r"SGD: lr must be a positive number, got 0"),
    (lambda: fastnn.SGD(-1.0), r"SGD: lr must be a positive number"),
    (lambda: fastnn.SGD(0.1, momentum=1.0), r"SGD: momentum must be in \[0, 1\), got 1.0"),
    (lambda: fastnn.SGD(0.1, momentum=-0.1), r"SGD: momentum must be in \[0, 1\)"),
    (lambda: fastnn.SGD(0.1, nesterov=True), r"SGD: nesterov=True needs momentum > 0"),
    (lambda: fastnn.SGD(0.1, weight_decay=-1), r"SGD: weight_decay must be a non-negative number, got -1"),
    (lambda: fastnn.Adam(0), r"Adam: lr must be a positive number, got 0"),
    (lambda: fastnn.Adam(betas=(0.9,)), r"Adam: betas must be a pair \(beta1, beta2\)"),
    (lambda: fastnn.Adam(betas=(0.9, 1.0)), r"Adam: beta2 must be in \[0, 1\), got 1.0"),
    (lambda: fastnn.Adam(eps=0), r"Adam: eps must be a positive number, got 0"),
    (lambda: fastnn.Adam(weight_decay=float("nan")), r"Adam: weight_decay must be a non-negative number"),
])
def test_bad_optimizer(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# ---- assigned weights ------------------------------------------------------------------------
@pytest.mark.parametrize("name, value, error, match", [
    ("W", np.ones((5, N_IN)), ValueError, r"Dense\(4, 5.*\.W: expected shape \(4, 5\), got \(5, 4\)"),
    ("b", np.ones(4), ValueError, r"\.b: expected shape \(5,\), got \(4,\)"),
    ("W", np.full((N_IN, 5), np.nan), ValueError, r"\.W: contains NaN or inf"),
    ("b", np.full(5, np.inf), ValueError, r"\.b: contains NaN or inf"),
    ("W", np.full((N_IN, 5), "a"), TypeError, r"\.W: expected an array of numbers, got dtype <U1"),
    ("W", [[1.0] * 5, [2.0]], TypeError, r"\.W: expected an array, got list"),
    ("W", [[1.0] * 5] * 3, ValueError, r"\.W: expected shape \(4, 5\), got \(3, 5\)"),
])
def test_bad_assigned_weights(backend_name, name, value, error, match):
    net = _net(backend_name)
    layer = net.dense_layers[0]
    before = _weights(net)
    with pytest.raises(error, match=match):
        setattr(layer, name, value)
    for a, b in zip(before, _weights(net)):
        np.testing.assert_array_equal(a, b)


def test_assigned_lists_and_integers_are_converted(backend_name, Xy):
    X, _ = Xy
    net = _net(backend_name)
    layer = net.dense_layers[0]
    layer.W = [[1, 0, 0, 0, 1]] * N_IN
    layer.b = np.arange(5)
    W = net.backend.to_numpy(layer.W)
    assert W.dtype == np.float32 and W.shape == (N_IN, 5)
    np.testing.assert_array_equal(net.backend.to_numpy(layer.b), np.arange(5, dtype=np.float32))


# ---- the rest of the API -----------------------------------------------------------------------
def test_gradcheck_needs_float64(Xy):
    X, y = Xy
    with pytest.raises(ValueError, match=r"gradcheck: needs a float64 model"):
        fastnn.gradcheck(_net(), X, y)


def test_unknown_activation_name_in_a_backend_op():
    be = fastnn.get_backend("numpy")
    with pytest.raises(ValueError, match=r"unknown activation 'swish'; expected one of identity, sigmoid, relu, tanh, "):
        be.bias_act(be.asarray(np.ones((2, 2))), None, "swish")
    with pytest.raises(ValueError, match=r"activation 'leaky_relu' takes the settings \('alpha',\), got \(\)"):
        be.bias_act(be.asarray(np.ones((2, 2))), None, "leaky_relu")


def test_unknown_backend_name():
    with pytest.raises(ValueError, match=r"unknown backend 'gpu'; known backends: .*cupy.*numba.*numpy.*auto"):
        fastnn.get_backend("gpu")
    with pytest.raises(ValueError, match=r"unknown backend 'gpu'"):
        _net().to("gpu")


def test_numpy_scalars_are_numbers(Xy):
    """Settings from a NumPy grid (np.float32 lr, np.int64 epochs) are accepted as the numbers they are."""
    X, y = Xy
    optimizer = fastnn.SGD(np.float32(0.5), momentum=np.float64(0.5), weight_decay=np.float32(0))
    assert optimizer.lr == pytest.approx(0.5) and type(optimizer.lr) is float
    assert fastnn.Adam(np.float32(0.01), betas=(np.float32(0.9), np.float64(0.99))).betas[0] == pytest.approx(0.9)
    history = _net().fit(X, y, epochs=np.int64(2), batch_size=np.int32(4), lr=np.float32(0.1))
    assert len(history) == 2
    with pytest.raises(ValueError, match=r"SGD: lr must be a positive number, got True"):
        fastnn.SGD(True)


@pytest.mark.parametrize("row", [0, 5999], ids=["first-half", "second-half"])
def test_nan_in_a_large_X_is_found_in_either_half(row):
    """A training set of millions of values is checked in two halves at once: both count."""
    X = np.zeros((6000, 784), np.float32)  # 4.7 M values: above the size checked in parallel
    X[row, 700] = np.nan
    net = fastnn.Sequential(fastnn.Dense(784, 2), seed=0)
    with pytest.raises(ValueError, match=rf"X: contains NaN or inf \(first in row {row}\)"):
        net.fit(X, np.zeros(6000, np.int64), epochs=1, batch_size=100, lr=0.1)
