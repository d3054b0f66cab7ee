"""Model files and checkpoints: round trips across backends, refusal of anything
that is not a fastnn model (pickles above all), atomic writes, exact resume, Ctrl-C.
"""
import io
import json
import os
import pickle
import stat
import zipfile

import re

import numpy as np
import pytest

import fastnn
from fastnn import io as fio
from conftest import BACKENDS, blobs, model_meta


def _net(backend="numpy", seed=0, dtype="float32", hidden=8):
    return fastnn.Sequential(fastnn.Dense(20, hidden), fastnn.ReLU(), fastnn.Dense(hidden, 4),
                             backend=backend, seed=seed, dtype=dtype)


def _weights(net):
    return [net.backend.to_numpy(a).copy() for d in net.dense_layers for a in (d.W, d.b)]


def _assert_same_weights(a, b):
    for x, y in zip(_weights(a), _weights(b), strict=True):
        np.testing.assert_array_equal(x, y)


def _clean_error(err):
    """Raised by fastnn itself: no NumPy/zipfile exception chained into the traceback."""
    return err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


@pytest.fixture(params=[pytest.param(n, marks=[pytest.mark.gpu] if n == "cupy" else [], id=f"to-{n}")
                        for n in BACKENDS])
def load_backend_name(request):
    """A second, independent backend parameter: where the saved model is loaded."""
    available, reason = fastnn.available_backends().get(request.param, (False, "not registered"))
    if not available:
        pytest.skip(f"backend {request.param!r} unavailable: {reason}")
    return request.param


@pytest.fixture
def trained():
    X, y = blobs(n=120)
    net = _net()
    net.fit(X, y, epochs=2, batch_size=16, loss="cross_entropy", lr=0.05)
    return net, X


@pytest.fixture
def model_file(tmp_path, trained):
    path = tmp_path / "model.npz"
    trained[0].save(path)
    return path


# ---- round trips -------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_across_backends(tmp_path, backend_name, load_backend_name, dtype):
    X, y = blobs(n=120)
    net = _net(backend_name, dtype=dtype)
    net.fit(X, y, epochs=1, batch_size=16, loss="cross_entropy", lr=0.05)
    path = tmp_path / "model.npz"
    net.save(path)
    back = fastnn.load(path, backend=load_backend_name)
    assert back.backend.name == load_backend_name
    assert back.dtype == dtype and back.loss.name == "cross_entropy"
    assert [layer.config() for layer in back.layers] == [layer.config() for layer in net.layers]
    for a, b in zip(_weights(net), _weights(back)):
        np.testing.assert_array_equal(a, b)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(back.predict_proba(X), net.predict_proba(X), rtol=tol, atol=tol)
    np.testing.assert_array_equal(back.predict(X), net.predict(X))


#: The activation layers added with the op tables (LeakyReLU at a slope not its default).
NEW_ACTIVATIONS = {"leaky_relu": lambda: fastnn.LeakyReLU(alpha=0.3), "gelu": fastnn.GELU, "silu": fastnn.SiLU,
                   "softplus": fastnn.Softplus}


@pytest.mark.parametrize("act", list(NEW_ACTIVATIONS))
def test_a_model_with_each_new_activation_saves_and_loads(tmp_path, backend_name, act):
    """Trained on numpy, loaded on every backend: the same layers (LeakyReLU's alpha with them),
    weights and predictions."""
    X, y = blobs(n=120)
    net = fastnn.Sequential(fastnn.Dense(20, 8), NEW_ACTIVATIONS[act](), fastnn.Dense(8, 6), NEW_ACTIVATIONS[act](),
                            fastnn.Dense(6, 4), backend="numpy", seed=0, dtype="float64")
    net.fit(X, y, epochs=1, batch_size=16, loss="cross_entropy", optimizer=fastnn.Adam(0.01))
    path = tmp_path / "model.npz"
    net.save(path)
    back = fastnn.load(path, backend=backend_name)
    assert [type(layer) for layer in back.layers] == [type(layer) for layer in net.layers]
    assert [layer.config() for layer in back.layers] == [layer.config() for layer in net.layers]
    if act == "leaky_relu":
        assert [layer.alpha for layer in back.layers[1::2]] == [0.3, 0.3]
        assert back.layers[1].params == (0.3,) and repr(back.layers[1]) == "LeakyReLU(alpha=0.3)"
    _assert_same_weights(net, back)
    np.testing.assert_allclose(back.predict_proba(X), net.predict_proba(X), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(back.predict(X), net.predict(X))


def test_leaky_relus_alpha_is_in_the_file_and_changes_the_model(tmp_path):
    """Two models alike but for alpha predict differently, and each file keeps its own."""
    X, _ = blobs(n=40)
    outputs = []
    for alpha in (0.01, 0.5):
        net = fastnn.Sequential(fastnn.Dense(20, 8), fastnn.LeakyReLU(alpha), fastnn.Dense(8, 4), seed=0,
                                backend="numpy")
        net.save(tmp_path / f"{alpha}.npz")
        with np.load(tmp_path / f"{alpha}.npz") as data:
            meta = json.loads(data["meta"].tobytes())
        assert meta["layers"][1] == {"type": "LeakyReLU", "alpha": alpha}
        outputs.append(fastnn.load(tmp_path / f"{alpha}.npz").predict_proba(X))
    assert not np.allclose(outputs[0], outputs[1])


def _edit_layers(path, edit):
    """Rewrite the model file at ``path`` with ``edit(layers)`` applied to its description's layers."""
    with np.load(path) as data:
        found = {name: data[name] for name in data.files}
    description = json.loads(found.pop("meta").tobytes())
    edit(description["layers"])
    found["meta"] = np.frombuffer(json.dumps(description).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **found)


@pytest.mark.parametrize("edit, fragment", [
    (lambda layers: layers[1].pop("alpha"), r"layer LeakyReLU: expected the settings \['alpha'\], got \[\]"),
    (lambda layers: layers[1].update(alpha="0.1"), "LeakyReLU: alpha must be a finite number"),
    (lambda layers: layers[1].update(alpha=True), "LeakyReLU: alpha must be a finite number"),
    (lambda layers: layers[1].update(alpha=float("inf")), "LeakyReLU: alpha must be a finite number, got inf"),
    (lambda layers: layers[1].update(beta=1.0), r"expected the settings \['alpha'\], got \['alpha', 'beta'\]"),
    (lambda layers: layers[3].update(alpha=0.1), r"layer GELU: expected the settings none, got \['alpha'\]"),
], ids=["no alpha", "alpha as text", "alpha true", "alpha infinite", "unknown setting", "setting of another"])
def test_a_model_file_with_wrong_activation_settings_is_refused(tmp_path, edit, fragment):
    net = fastnn.Sequential(fastnn.Dense(20, 8), fastnn.LeakyReLU(0.2), fastnn.Dense(8, 4), fastnn.GELU(), seed=0,
                            backend="numpy")
    path = tmp_path / "model.npz"
    net.save(path)
    _edit_layers(path, edit)
    with pytest.raises(fastnn.ModelFileError, match=fragment) as info:
        fastnn.load(path)
    assert "the architecture cannot be rebuilt" in str(info.value) and _clean_error(info.value)


def test_file_layout_is_plain_arrays_and_json(model_file):
    with zipfile.ZipFile(model_file) as z:
        names = sorted(z.namelist())
    assert names == ["meta.npy", "param.0.W.npy", "param.0.b.npy", "param.1.W.npy", "param.1.b.npy"]
    with np.load(model_file, allow_pickle=False) as data:
        meta = json.loads(data["meta"].tobytes())
    assert meta["format"] == "fastnn-model" and meta["version"] == fio.VERSION
    assert meta["dtype"] == "float32" and meta["loss"] == "cross_entropy"
    assert [c["type"] for c in meta["layers"]] == ["Dense", "ReLU", "Dense"]


def test_path_is_used_exactly_as_given(tmp_path, trained):
    net, X = trained
    net.save(tmp_path / "model")  # np.savez would have written model.npz
    assert os.listdir(tmp_path) == ["model"]
    np.testing.assert_array_equal(fastnn.load(tmp_path / "model").predict(X), net.predict(X))
    with pytest.raises(FileNotFoundError, match="model.npz"):
        fastnn.load(tmp_path / "model.npz")
    net.save(str(tmp_path / "other.npz"))
    with pytest.raises(FileNotFoundError, match="there is a .*other.npz"):
        fastnn.load(tmp_path / "other")


def test_save_to_missing_folder_or_a_folder_is_a_clear_error(tmp_path, trained):
    with pytest.raises(FileNotFoundError, match="folder .*nowhere does not exist"):
        trained[0].save(tmp_path / "nowhere" / "model.npz")
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        trained[0].save(tmp_path)
    assert os.listdir(tmp_path) == []


def test_saved_file_gets_ordinary_permissions(tmp_path, trained):
    old = os.umask(0o022)
    try:
        trained[0].save(tmp_path / "new.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new.npz").st_mode) == 0o644  # not mkstemp's 0o600
    os.chmod(tmp_path / "new.npz", 0o600)
    trained[0].save(tmp_path / "new.npz")
    assert stat.S_IMODE(os.stat(tmp_path / "new.npz").st_mode) == 0o600  # an overwrite keeps them


def test_unknown_backend_on_load_is_not_a_file_error(model_file):
    with pytest.raises(ValueError, match="unknown backend|nope") as info:
        fastnn.load(model_file, backend="nope")
    assert not isinstance(info.value, fastnn.ModelFileError)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        fastnn.load(tmp_path / "absent.npz")


# ---- files that are not fastnn models --------------------------------------------
def _npz_bytes(**arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


_W, _b = np.zeros((2, 3), np.float32), np.zeros(3, np.float32)


def _zip_with_rawmodel_meta():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("meta", b'{"format": "fastnn-model"}')
    return buffer.getvalue()


FOREIGN = {
    "empty": (lambda good: b"", "empty"),
    "text": (lambda good: b"layers: 784, 30, 10\n", "not a .npz"),
    "random bytes": (lambda good: np.random.default_rng(0).bytes(4096), "not a .npz"),
    "pickle": (lambda good: pickle.dumps({"W": [1, 2, 3]}), "pickle"),
    "npy": (lambda good: _npy_bytes(), "single .npy"),
    "truncated": (lambda good: good[: len(good) // 2], "corrupt or truncated"),
    "truncated to 3 bytes": (lambda good: good[:3], "truncated"),
    "flipped bytes": (lambda good: _flip_middle(good), "corrupt"),
    "npz without meta": (lambda good: _npz_bytes(W=_W), "no fastnn description"),
    "meta not json": (lambda good: _npz_bytes(meta=np.frombuffer(b"\xff{", np.uint8)), "description is corrupt"),
    "meta of other format": (lambda good: _npz_bytes(meta=model_meta(format="keras")), "not a fastnn model"),
    "meta as floats": (lambda good: _npz_bytes(meta=np.zeros(4)), "no fastnn description"),
    "meta not an npy member": (lambda good: _zip_with_rawmodel_meta(), "not an array"),
    "version missing": (lambda good: _npz_bytes(meta=model_meta(version=None)), "format version"),
    "version newer": (lambda good: _npz_bytes(meta=model_meta(version=99), **{"param.0.W": _W, "param.0.b": _b}),
                      "newer fastnn"),
    "param missing": (lambda good: _npz_bytes(meta=model_meta(), **{"param.0.W": _W}), "param.0.b is missing"),
    "param wrong shape": (lambda good: _npz_bytes(meta=model_meta(), **{"param.0.W": _W.T, "param.0.b": _b}),
                          r"shape \(3, 2\)"),
    "param not float": (lambda good: _npz_bytes(meta=model_meta(), **{"param.0.W": _W.astype("U1"), "param.0.b": _b}),
                        "not float"),
    "param with nan": (lambda good: _npz_bytes(meta=model_meta(), **{"param.0.W": _W + np.nan, "param.0.b": _b}),
                       "NaN"),
    "huge layer claimed": (lambda good: _npz_bytes(meta=model_meta(layers=[{"type": "Dense", "n_in": 10**6,
                                                                       "n_out": 10**6}]),
                                                   **{"param.0.W": _W, "param.0.b": _b}), "architecture says"),
    "layers garbage": (lambda good: _npz_bytes(meta=model_meta(layers=["Dense"])), "layer list"),
    "unknown layer": (lambda good: _npz_bytes(meta=model_meta(layers=[{"type": "Conv"}])), "cannot be rebuilt"),
    "bad dtype": (lambda good: _npz_bytes(meta=model_meta(dtype="int8"), **{"param.0.W": _W, "param.0.b": _b}),
                  "cannot be rebuilt"),
    "unknown loss": (lambda good: _npz_bytes(meta=model_meta(loss="hinge"), **{"param.0.W": _W, "param.0.b": _b}),
                     "cannot be rebuilt"),
}


def _npy_bytes():
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(3))
    return buffer.getvalue()


def _flip_middle(good):
    """Damage the stored array data (not the zip directory): the CRC check must catch it."""
    data = bytearray(good)
    middle = len(data) // 3
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    return bytes(data)


@pytest.mark.parametrize("kind", list(FOREIGN))
def test_foreign_or_damaged_file_is_a_model_file_error(tmp_path, model_file, kind):
    make, message = FOREIGN[kind]
    path = tmp_path / "bad.npz"
    path.write_bytes(make(model_file.read_bytes()))
    with pytest.raises(fastnn.ModelFileError, match=message) as info:
        fastnn.load(path)
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value)
    assert _clean_error(info.value), "a NumPy/zipfile exception leaked into the traceback"


def test_a_checkpoint_loads_as_a_model_but_a_model_does_not_resume(tmp_path, trained):
    net, X = trained
    X, y = blobs(n=120)
    ckpt = tmp_path / "ckpt.npz"
    net.fit(X, y, epochs=1, batch_size=16, checkpoint=ckpt)
    np.testing.assert_array_equal(fastnn.load(ckpt).predict(X), net.predict(X))
    net.save(tmp_path / "model.npz")
    with pytest.raises(fastnn.ModelFileError, match="not a checkpoint"):
        _net().fit(X, y, epochs=2, checkpoint=tmp_path / "model.npz", resume=True)


# ---- pickles are refused and never executed -----------------------------------------
class _Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_model(tmp_path, model_file, marker, member="param.0.W"):
    with np.load(model_file) as data:
        arrays = {name: data[name] for name in data.files}
    arrays[member] = np.array([_Payload(marker)], dtype=object)  # savez pickles object arrays
    path = tmp_path / "evil.npz"
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


@pytest.mark.parametrize("member, message", [
    ("param.0.W", "pickled object array"),                          # one the model needs
    ("param.9.W", "param.9.W.npy' is not part of the model .*refused unread"),  # one it does not
])
def test_pickled_object_array_is_refused_and_not_executed(tmp_path, model_file, member, message):
    # The payload works: NumPy with allow_pickle=True runs it.
    proof = tmp_path / "proof"
    with np.load(_evil_model(tmp_path, model_file, proof, member), allow_pickle=True) as data:
        data[member]
    assert proof.exists()
    marker = tmp_path / "marker"
    path = _evil_model(tmp_path, model_file, marker, member)
    with pytest.raises(fastnn.ModelFileError, match=message) as info:
        fastnn.load(path)
    assert _clean_error(info.value)
    assert not marker.exists()
    with pytest.raises(fastnn.ModelFileError, match=message):
        _net().fit(*blobs(n=40), epochs=1, checkpoint=path, resume=True)
    assert not marker.exists()


# ---- atomic writes -------------------------------------------------------------
def _crashing_savez(exception):
    def savez(file, *args, **kwds):
        file.write(b"PK\x03\x04 half a model")
        raise exception
    return savez


@pytest.mark.parametrize("exception", [OSError("disk full"), KeyboardInterrupt()], ids=["oserror", "ctrl-c"])
def test_crash_mid_save_leaves_old_file_and_no_temp_file(tmp_path, trained, monkeypatch, exception):
    net, X = trained
    path = tmp_path / "model.npz"
    net.save(path)
    before = path.read_bytes()
    net.dense_layers[0].W = np.ones((20, 8))
    monkeypatch.setattr(np, "savez", _crashing_savez(exception))
    with pytest.raises(type(exception)):
        net.save(path)
    with pytest.raises(type(exception)):
        net.save(tmp_path / "fresh.npz")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["model.npz"]
    assert path.read_bytes() == before
    assert not np.array_equal(fastnn.load(path).dense_layers[0].W, np.ones((20, 8)))


# ---- checkpoints: resume equals an uninterrupted run ---------------------------------
OPTIMIZERS = {
    "sgd-momentum": lambda: fastnn.SGD(lr=0.05, momentum=0.9),
    "sgd-nesterov-decay": lambda: fastnn.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda: fastnn.Adam(lr=0.01),
    "adamw": lambda: fastnn.AdamW(lr=0.01, weight_decay=0.05),
    "rmsprop": lambda: fastnn.RMSprop(lr=0.005, weight_decay=1e-3),
    "rmsprop-momentum": lambda: fastnn.RMSprop(lr=0.002, alpha=0.9, momentum=0.9),
}


def test_every_optimizer_is_registered_and_its_config_round_trips():
    from fastnn.optim import OPTIMIZERS as REGISTERED, optimizer_from_config
    assert REGISTERED["adamw"] is fastnn.AdamW and REGISTERED["rmsprop"] is fastnn.RMSprop
    assert set(REGISTERED) == {"sgd", "adam", "adamw", "rmsprop"}
    made = [make() for make in OPTIMIZERS.values()] + [
        fastnn.AdamW(), fastnn.RMSprop(), fastnn.AdamW(lr=0.5, betas=(0.5, 0.6), eps=1e-3, weight_decay=0.0),
        fastnn.RMSprop(lr=0.1, alpha=0.5, eps=1e-4, momentum=0.3, weight_decay=0.2)]
    for optimizer in made:
        config = optimizer.config()
        back = optimizer_from_config(json.loads(json.dumps(config)))  # as a checkpoint holds it
        assert type(back) is type(optimizer) and back.config() == config
        assert back.rule is optimizer.rule and back.step_inputs(3) == optimizer.step_inputs(3)
    assert fastnn.AdamW().config() == {"kind": "adamw", "lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8,
                                       "weight_decay": 0.01}
    assert fastnn.RMSprop().config() == {"kind": "rmsprop", "lr": 0.01, "alpha": 0.99, "eps": 1e-8,
                                         "momentum": 0.0, "weight_decay": 0.0}
    assert fastnn.RMSprop().rule.name == "rmsprop" and fastnn.RMSprop(momentum=0.5).rule.name == "rmsprop_momentum"
    with pytest.raises(ValueError, match="not as fastnn writes them"):  # AdamW's default decay is not implied
        optimizer_from_config({"kind": "adamw", "lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8})
    with pytest.raises(ValueError, match="rmsprop: expected the settings"):
        optimizer_from_config({"kind": "rmsprop", "lr": 0.01, "betas": [0.9, 0.999]})


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, backend_name, opt):
    X, y = blobs(n=150)
    val = blobs(n=50, seed=1)
    kwargs = dict(batch_size=16, loss="cross_entropy", validation_data=val)
    whole = _net(backend_name, seed=3)
    full = whole.fit(X, y, epochs=4, optimizer=OPTIMIZERS[opt](), **kwargs)

    ckpt = tmp_path / "ckpt.npz"
    first = _net(backend_name, seed=3)
    first.fit(X, y, epochs=2, optimizer=OPTIMIZERS[opt](), checkpoint=ckpt, **kwargs)
    # A new model object (other seed: nothing may come from it), a fresh optimizer object.
    resumed = _net(backend_name, seed=99)
    history = resumed.fit(X, y, epochs=4, optimizer=OPTIMIZERS[opt](), checkpoint=ckpt, resume=True, **kwargs)

    _assert_same_weights(whole, resumed)
    assert history["epoch"] == [1, 2, 3, 4]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert history[key] == full[key]
    assert resumed.optimizer.config() == whole.optimizer.config()
    assert resumed.optimizer._counters() == whole.optimizer._counters()
    assert fastnn.load(ckpt).dense_layers[0].W.shape == (20, 8)


def test_resume_without_checkpoint_file_starts_afresh(tmp_path, capsys):
    X, y = blobs(n=60)
    a, b = _net(seed=1), _net(seed=1)
    a.fit(X, y, epochs=2, lr=0.05)
    history = b.fit(X, y, epochs=2, lr=0.05, checkpoint=tmp_path / "c.npz", resume=True, verbose=1)
    _assert_same_weights(a, b)
    assert len(history) == 2 and "no checkpoint" in capsys.readouterr().err
    assert (tmp_path / "c.npz").exists()


def test_resume_refuses_another_architecture_or_dtype(tmp_path):
    X, y = blobs(n=60)
    ckpt = tmp_path / "c.npz"
    _net().fit(X, y, epochs=1, lr=0.05, checkpoint=ckpt)
    with pytest.raises(ValueError, match="architecture differs"):
        _net(hidden=9).fit(X, y, epochs=2, checkpoint=ckpt, resume=True)
    with pytest.raises(ValueError, match="float32, this model float64"):
        _net(dtype="float64").fit(X, y, epochs=2, checkpoint=ckpt, resume=True)
    with pytest.raises(ValueError, match="needs checkpoint"):
        _net().fit(X, y, epochs=2, resume=True)


@pytest.mark.parametrize("change, fragment", [
    (dict(lr=0.01), "trained with optimizer sgd(lr=0.05, momentum=0.0, nesterov=False, weight_decay=0.0), "
                    "this fit asks for sgd(lr=0.01,"),
    (dict(optimizer=fastnn.Adam(0.05)), "this fit asks for adam("),
    (dict(batch_size=8), "trained with batch_size 16, this fit asks for 8"),
    (dict(loss="mse"), "trained with loss 'cross_entropy', this fit asks for 'mse'"),
    (dict(shuffle=False), "trained with shuffle True, this fit asks for False"),
])
def test_resume_refuses_other_training_settings(tmp_path, change, fragment):
    """Resume promises the weights of an uninterrupted run: other settings cannot give them."""
    X, y = blobs(n=60)
    ckpt = tmp_path / "c.npz"
    kwargs = dict(batch_size=16, loss="cross_entropy", lr=0.05)
    _net().fit(X, y, epochs=1, checkpoint=ckpt, **kwargs)
    if "optimizer" in change:
        kwargs.pop("lr")
    net = _net(seed=7)
    before = [d.W.copy() for d in net.dense_layers]
    with pytest.raises(ValueError, match=re.escape(fragment)):
        net.fit(X, y, epochs=2, checkpoint=ckpt, resume=True, **{**kwargs, **change})
    assert all(np.array_equal(a, d.W) for a, d in zip(before, net.dense_layers))  # nothing applied


def test_resume_without_an_optimizer_takes_the_checkpoints(tmp_path):
    X, y = blobs(n=60)
    ckpt = tmp_path / "c.npz"
    _net().fit(X, y, epochs=1, batch_size=16, optimizer=fastnn.SGD(0.05, momentum=0.5), checkpoint=ckpt)
    net = _net(seed=7)
    net.fit(X, y, epochs=2, batch_size=16, checkpoint=ckpt, resume=True)
    assert net.optimizer.config() == fastnn.SGD(0.05, momentum=0.5).config()


def test_corrupt_optimizer_state_in_checkpoint(tmp_path):
    X, y = blobs(n=60)
    ckpt = tmp_path / "c.npz"
    _net().fit(X, y, epochs=1, optimizer=fastnn.Adam(), checkpoint=ckpt)
    with np.load(ckpt) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["opt.0.W.M"] = arrays["opt.0.W.M"][:3]
    with open(ckpt, "wb") as f:
        np.savez(f, **arrays)
    net = _net(seed=5)
    before = _weights(net)
    with pytest.raises(fastnn.ModelFileError, match="opt.0.W.M"):
        net.fit(X, y, epochs=2, checkpoint=ckpt, resume=True)
    for a, b in zip(before, _weights(net)):  # checked before anything was applied
        np.testing.assert_array_equal(a, b)


# ---- a refused resume changes nothing --------------------------------------------------
def _edit_checkpoint(path, meta=None, arrays=None):
    """Rewrite the checkpoint at ``path``: ``meta(checkpoint_dict)`` and ``arrays(dict)`` edit in place."""
    with np.load(path) as data:
        found = {name: data[name] for name in data.files}
    description = json.loads(found.pop("meta").tobytes())
    if meta:
        meta(description["checkpoint"])
    if arrays:
        arrays(found)
    found["meta"] = np.frombuffer(json.dumps(description).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **found)


def _state_of(net):
    """Everything a resume may change: weights, loss, optimizer (object, settings, state), batch order."""
    optimizer = net.optimizer
    state = {key: {slot: np.array(v) for slot, v in entry.items()} for key, entry in optimizer.state.items()}
    return (_weights(net), net.loss, optimizer, optimizer.config(), dict(optimizer._counters()), state,
            net.batch_rng, net.batch_rng.bit_generator.state)


def _assert_unchanged(net, before):
    weights, loss, optimizer, config, counters, state, rng, rng_state = before
    for a, b in zip(weights, _weights(net), strict=True):
        np.testing.assert_array_equal(a, b)
    assert net.loss is loss and net.optimizer is optimizer and net.batch_rng is rng
    assert optimizer.config() == config and optimizer._counters() == counters
    assert optimizer.state.keys() == state.keys()
    for key, entry in state.items():
        for slot, value in entry.items():
            np.testing.assert_array_equal(np.asarray(optimizer.state[key][slot]), value)
    assert rng.bit_generator.state == rng_state


def _set(key, value):
    return lambda checkpoint: checkpoint.__setitem__(key, value)


def _set_in(outer, key, value):
    return lambda checkpoint: checkpoint[outer].__setitem__(key, value)


def _history_of(n):
    return {"epoch": list(range(1, n + 1)), "loss": [0.5] * n, "accuracy": [0.5] * n, "seconds": [0.1] * n}


REFUSED = {  # name: (edit of the checkpoint's record, edit of its arrays, error, message)
    "negative epoch": (_set("epoch", -1), None, "epoch -1 is not a positive integer"),
    "epoch zero": (_set("epoch", 0), None, "epoch 0 is not a positive integer"),
    "epoch as text": (_set("epoch", "2"), None, "epoch '2' is not"),
    "epoch true": (_set("epoch", True), None, "epoch True is not"),
    "epoch past history": (_set("epoch", 10**18), None, "history does not list epochs 1 to"),
    "history short": (_set("history", _history_of(1)), None, "history does not list epochs 1 to 2"),
    "history of text": (_set("history", dict(_history_of(2), loss=["a", "b"])), None, "history 'loss' is not 2 numbers"),
    "history unknown list": (_set("history", dict(_history_of(2), evil=[1, 2])), None, "history is not lists named"),
    "lr 1e6 as a counter": (_set("counters", {"t": 20, "lr": 1e6}), None, r"keeps the counters \['t'\]"),
    "any attribute as a counter": (_set("counters", {"t": 20, "__class__": 1}), None, "keeps the counters"),
    "negative step count": (_set("counters", {"t": -1}), None, "counter t must be a step count"),
    "step count not an int": (_set("counters", {"t": 2.5}), None, "counter t must be a step count"),
    "no counters": (lambda c: c.pop("counters"), None, "keeps the counters"),
    "negative lr": (_set_in("optimizer", "lr", -1.0), None, "lr must be a positive number"),
    "lr not finite": (_set_in("optimizer", "lr", float("inf")), None, "lr must be a positive number"),
    "lr as text": (_set_in("optimizer", "lr", "0.01"), None, "lr must be a positive number"),
    "unknown setting": (_set_in("optimizer", "evil", 1), None, "adam: expected the settings"),
    "missing setting": (lambda c: c["optimizer"].pop("eps"), None, "not as fastnn writes them"),
    "betas out of range": (_set_in("optimizer", "betas", [0.9, 1.5]), None, "beta2 must be in"),
    "unknown optimizer": (_set_in("optimizer", "kind", "adagrad"), None, "unknown optimizer 'adagrad'"),
    "another optimizer's kind": (_set_in("optimizer", "kind", "rmsprop"), None,
                                 r"rmsprop: expected the settings \['alpha', 'eps', 'kind', 'lr', 'momentum', "
                                 r"'weight_decay'\], got \['betas', 'eps', 'kind', 'lr', 'weight_decay'\]"),
    "optimizer not a record": (_set("optimizer", [1, 2]), None, "unknown optimizer None"),
    "rng of another kind": (_set_in("batch_rng", "bit_generator", "MT19937"), None, "not a PCG64 state"),
    "rng state as a float": (lambda c: c["batch_rng"]["state"].__setitem__("state", 1.5), None, "not a PCG64 state"),
    "rng state negative": (lambda c: c["batch_rng"]["state"].__setitem__("inc", -3), None, "not a PCG64 state"),
    "rng has_uint32 7": (_set_in("batch_rng", "has_uint32", 7), None, "not a PCG64 state"),
    "rng missing": (lambda c: c.pop("batch_rng"), None, "not a PCG64 state"),
    "batch_size zero": (_set("batch_size", 0), None, "batch_size 0 is not a positive integer"),
    "shuffle as text": (_set("shuffle", "yes"), None, "shuffle 'yes' is not true or false"),
    "state with nan": (None, lambda a: a["opt.0.W.M"].__setitem__((0, 0), np.nan), "opt.0.W.M contains NaN or inf"),
    "state of ints": (None, lambda a: a.__setitem__("opt.0.b.V", a["opt.0.b.V"].astype(np.int32)),
                      "opt.0.b.V has dtype int32, not float"),
    "state of another shape": (None, lambda a: a.__setitem__("opt.1.W.V", a["opt.1.W.V"][:2]),
                               r"opt.1.W.V has shape \(2, 4\), but the architecture says \(8, 4\)"),
    "state missing": (None, lambda a: a.pop("opt.1.b.M"), "optimizer state opt.1.b.M is missing"),
    "weights with inf": (None, lambda a: a["param.1.W"].__setitem__((0, 0), np.inf), "param.1.W contains NaN or inf"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_refused_resume_leaves_weights_loss_optimizer_and_batch_order_as_they_were(tmp_path, case):
    edit_meta, edit_arrays, message = REFUSED[case]
    X, y = blobs(n=64)
    ckpt = tmp_path / "c.npz"
    _net(seed=1).fit(X, y, epochs=2, batch_size=16, loss="cross_entropy", optimizer=fastnn.Adam(0.01),
                     checkpoint=ckpt)
    _edit_checkpoint(ckpt, edit_meta, edit_arrays)
    net = _net(seed=5)  # trained before with other settings: every one of them must survive
    net.fit(X, y, epochs=1, batch_size=8, loss="mse", optimizer=fastnn.SGD(0.02, momentum=0.5))
    before = _state_of(net)
    with pytest.raises(fastnn.ModelFileError, match=message) as info:
        net.fit(X, y, epochs=3, batch_size=16, loss="cross_entropy", checkpoint=ckpt, resume=True)
    assert str(ckpt) in str(info.value)
    _assert_unchanged(net, before)


def test_an_sgd_checkpoint_holds_no_state_it_does_not_keep(tmp_path):
    X, y = blobs(n=64)
    ckpt = tmp_path / "c.npz"
    _net().fit(X, y, epochs=1, batch_size=16, optimizer=fastnn.SGD(0.05, momentum=0.9), checkpoint=ckpt)
    _edit_checkpoint(ckpt, arrays=lambda a: a.__setitem__("opt.0.W.M", a["opt.0.W.V"]))
    net = _net(seed=5)
    net.fit(X, y, epochs=1, batch_size=8, loss="mse", lr=0.01)
    before = _state_of(net)
    with pytest.raises(fastnn.ModelFileError, match=r"opt.0.W.M is not state that SGD\(.*\) keeps"):
        net.fit(X, y, epochs=2, batch_size=16, checkpoint=ckpt, resume=True)
    _assert_unchanged(net, before)


@pytest.mark.parametrize("change, message", [
    (dict(loss="mse"), "trained with loss 'cross_entropy'"),
    (dict(lr=0.5), "trained with optimizer adam"),
    (dict(batch_size=8), "trained with batch_size 16"),
])
def test_a_resume_with_other_settings_changes_nothing_either(tmp_path, backend_name, change, message):
    X, y = blobs(n=64)
    ckpt = tmp_path / "c.npz"
    _net(backend_name).fit(X, y, epochs=1, batch_size=16, loss="cross_entropy", optimizer=fastnn.Adam(0.01),
                           checkpoint=ckpt)
    net = _net(backend_name, seed=5)
    net.fit(X, y, epochs=1, batch_size=8, loss="mse", optimizer=fastnn.SGD(0.02, momentum=0.5))
    before = _state_of(net)
    kwargs = {**dict(batch_size=16, loss="cross_entropy"), **change}
    with pytest.raises(ValueError, match=message):
        net.fit(X, y, epochs=2, checkpoint=ckpt, resume=True, **kwargs)
    _assert_unchanged(net, before)


def test_a_checkpoint_that_passes_every_check_still_resumes_exactly(tmp_path):
    """The checks refuse what fastnn never writes, not what it does: edit nothing, and it resumes."""
    X, y = blobs(n=64)
    ckpt = tmp_path / "c.npz"
    whole = _net(seed=1)
    whole.fit(X, y, epochs=3, batch_size=16, optimizer=fastnn.Adam(0.01))
    _net(seed=1).fit(X, y, epochs=2, batch_size=16, optimizer=fastnn.Adam(0.01), checkpoint=ckpt)
    _edit_checkpoint(ckpt)  # a round trip through json and savez
    resumed = _net(seed=9)
    resumed.fit(X, y, epochs=3, batch_size=16, checkpoint=ckpt, resume=True)
    _assert_same_weights(whole, resumed)
    assert resumed.optimizer.t == whole.optimizer.t


# ---- Ctrl-C ------------------------------------------------------------------
def _interrupt_on_step(monkeypatch, optimizer, n):
    """Make the optimizer's n-th step (from 1) raise KeyboardInterrupt, as Ctrl-C would."""
    real, calls = optimizer.step, {"n": 0}

    def step(backend, dense_layers):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(backend, dense_layers)
    monkeypatch.setattr(optimizer, "step", step)


@pytest.mark.parametrize("opt", ["sgd-momentum", "adam"])
def test_ctrl_c_keeps_last_completed_epoch_and_says_so(tmp_path, monkeypatch, capsys, opt):
    X, y = blobs(n=160)  # 10 batches of 16 per epoch: the 25th step is mid-epoch 3
    reference = _net(seed=2)
    reference.fit(X, y, epochs=4, batch_size=16, optimizer=OPTIMIZERS[opt]())
    two = _net(seed=2)
    two.fit(X, y, epochs=2, batch_size=16, optimizer=OPTIMIZERS[opt]())

    net, optimizer, ckpt = _net(seed=2), OPTIMIZERS[opt](), tmp_path / "c.npz"
    _interrupt_on_step(monkeypatch, optimizer, 25)
    history = net.fit(X, y, epochs=4, batch_size=16, optimizer=optimizer, checkpoint=ckpt, verbose=1)
    monkeypatch.undo()

    assert history.interrupted and history["epoch"] == [1, 2]
    err = capsys.readouterr().err
    assert "interrupted" in err and "epoch 3" in err and "last completed epoch (2)" in err
    _assert_same_weights(net, two)
    # Nothing of the abandoned epoch remains (optimizer state, batch order): going on
    # in memory, or resuming from the checkpoint, ends where an uninterrupted run does.
    net.fit(X, y, epochs=2, batch_size=16, optimizer=optimizer)
    _assert_same_weights(net, reference)
    again = _net(seed=7)
    again.fit(X, y, epochs=4, batch_size=16, optimizer=OPTIMIZERS[opt](), checkpoint=ckpt, resume=True)
    _assert_same_weights(again, reference)


def test_ctrl_c_during_validation_is_handled_too(monkeypatch, capsys):
    X, y = blobs(n=64)
    net, one = _net(seed=4), _net(seed=4)
    one.fit(X, y, epochs=1, lr=0.05)
    real, calls = net.evaluate, {"n": 0}

    def evaluate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(net, "evaluate", evaluate)
    history = net.fit(X, y, epochs=3, lr=0.05, validation_data=(X, y), verbose=1)
    assert history.interrupted and len(history) == 1
    assert "interrupted" in capsys.readouterr().err
    _assert_same_weights(net, one)
