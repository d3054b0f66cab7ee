"""Export: safetensors model files (fastnn reads and writes the format itself; the reference
packages read what it writes, and it reads what they write) and ONNX graphs (run by ONNX
Runtime, they compute ``predict_proba``). Optional libraries absent: those tests skip with why.
"""
import json
import os
import pickle
import struct
import sys
import types

import numpy as np
import pytest

import fastnn
from fastnn import io_safetensors
from conftest import blobs, model_meta

DTYPES = ("float32", "float64")
ACTIVATIONS = [fastnn.Identity, fastnn.Sigmoid, fastnn.ReLU, fastnn.Tanh, lambda: fastnn.LeakyReLU(0.3),
               fastnn.GELU, fastnn.SiLU, fastnn.Softplus, fastnn.Softmax]
ACTIVATION_IDS = ["identity", "sigmoid", "relu", "tanh", "leaky_relu", "gelu", "silu", "softplus", "softmax"]


def _net(dtype="float32", act=fastnn.GELU, loss=None, last=None, seed=0):
    """Dense(5, 7) -> act -> Dense(7, 3) [-> last], on NumPy; normal init, so activations saturate."""
    layers = [fastnn.Dense(5, 7, init="normal"), act(), fastnn.Dense(7, 3, init="normal")]
    net = fastnn.Sequential(*layers, *([last()] if last else []), backend="numpy", dtype=dtype, seed=seed)
    net.loss = fastnn.get_loss(loss) if loss else None  # as fit leaves it
    return net


def _X(n, dtype="float32", seed=1):
    return np.random.default_rng(seed).standard_normal((n, 5)).astype(dtype)


def _same_weights(a, b):
    for x, y in zip(a.dense_layers, b.dense_layers, strict=True):
        np.testing.assert_array_equal(x.W, y.W)
        np.testing.assert_array_equal(x.b, y.b)


# ---- safetensors: round trips --------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_safetensors_file_round_trips(tmp_path, dtype):
    net = _net(dtype, fastnn.SiLU, loss="cross_entropy")
    net.save(tmp_path / "net.safetensors")
    back = fastnn.load(tmp_path / "net.safetensors")
    assert repr(back.layers) == repr(net.layers) and back.dtype == dtype and back.loss.name == "cross_entropy"
    _same_weights(back, net)
    X = _X(9, dtype)
    rtol = 1e-6 if dtype == "float32" else 1e-14  # the same weights; BLAS may round the products differently
    np.testing.assert_allclose(back.predict_proba(X), net.predict_proba(X), rtol=rtol)


def test_the_extension_picks_the_format(tmp_path):
    net = _net()
    net.save(tmp_path / "net.SafeTensors")
    net.save(tmp_path / "net.npz")
    assert (tmp_path / "net.npz").read_bytes().startswith(b"PK\x03\x04")  # a zip
    length = struct.unpack("<Q", (tmp_path / "net.SafeTensors").read_bytes()[:8])[0]
    assert (tmp_path / "net.SafeTensors").read_bytes()[8:8 + length].startswith(b"{")
    _same_weights(fastnn.load(tmp_path / "net.SafeTensors"), fastnn.load(tmp_path / "net.npz"))


def test_saving_and_loading_need_no_safetensors_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)  # `import safetensors` now fails
    net = _net()
    net.save(tmp_path / "net.safetensors")
    _same_weights(fastnn.load(tmp_path / "net.safetensors"), net)


def test_a_failed_save_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "net.safetensors"
    old = _net(seed=0)
    old.save(path)

    def fail(*args):
        raise OSError("disk full")
    monkeypatch.setattr(io_safetensors, "struct", types.SimpleNamespace(pack=fail))  # fails inside the write
    with pytest.raises(OSError, match="disk full"):
        _net(seed=1).save(path)
    monkeypatch.undo()
    _same_weights(fastnn.load(path), old)
    assert os.listdir(tmp_path) == ["net.safetensors"]  # no temporary file left


# ---- safetensors: the reference implementation agrees ----------------------------------
@pytest.fixture
def safetensors_numpy():
    return pytest.importorskip("safetensors.numpy", reason="the safetensors package is not installed")


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_safetensors_package_reads_what_fastnn_writes(tmp_path, safetensors_numpy, dtype):
    from safetensors import safe_open

    net = _net(dtype)
    net.save(tmp_path / "net.safetensors")
    tensors = safetensors_numpy.load_file(tmp_path / "net.safetensors")
    assert sorted(tensors) == ["param.0.W", "param.0.b", "param.1.W", "param.1.b"]
    for i, layer in enumerate(net.dense_layers):
        assert tensors[f"param.{i}.W"].dtype == dtype
        np.testing.assert_array_equal(tensors[f"param.{i}.W"], layer.W)
        np.testing.assert_array_equal(tensors[f"param.{i}.b"], layer.b)
    with safe_open(tmp_path / "net.safetensors", "np") as f:
        description = json.loads(f.metadata()[io_safetensors.DESCRIPTION_KEY])
    assert description["dtype"] == dtype
    assert [config["type"] for config in description["layers"]] == ["Dense", "GELU", "Dense"]


def test_fastnn_reads_what_the_safetensors_package_writes(tmp_path, safetensors_numpy):
    net = _net("float64")
    path = tmp_path / "net.safetensors"
    tensors = {f"param.{i}.{name}": getattr(layer, name)
               for i, layer in enumerate(net.dense_layers) for name in "Wb"}
    metadata = {io_safetensors.DESCRIPTION_KEY: json.dumps(fastnn.io._describe(net)), "other": "ignored"}
    safetensors_numpy.save_file(tensors, path, metadata=metadata)  # its own order and padding
    _same_weights(fastnn.load(path), net)


def test_torch_reads_the_weights_and_computes_the_same(tmp_path):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    safetensors_torch = pytest.importorskip("safetensors.torch", reason="the safetensors package is not installed")
    net = _net("float64", fastnn.Tanh)
    net.save(tmp_path / "net.safetensors")
    tensors = safetensors_torch.load_file(tmp_path / "net.safetensors")
    peer = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).double()
    with torch.no_grad():
        for i, linear in enumerate((peer[0], peer[2])):
            linear.weight.copy_(tensors[f"param.{i}.W"].T)  # fastnn's W is (n_in, n_out): Linear's transposed
            linear.bias.copy_(tensors[f"param.{i}.b"])
        Y = peer(torch.from_numpy(_X(6, "float64"))).numpy()
    np.testing.assert_allclose(Y, net.predict_proba(_X(6, "float64")), rtol=1e-12, atol=1e-12)


# ---- safetensors: a file from anyone ----------------------------------------------------
def _file(header=None, data=None, metadata=None, length=None):
    """A safetensors file of a one-layer 2-3 float32 model (conftest's model_meta), with changes."""
    if header is None:
        header = {"param.0.W": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                  "param.0.b": {"dtype": "F32", "shape": [3], "data_offsets": [24, 36]}}
    if metadata is None:
        metadata = {"fastnn": model_meta().tobytes().decode()}
    text = json.dumps({"__metadata__": metadata, **header}).encode() if isinstance(header, dict) else header
    data = np.arange(9, dtype="<f4").tobytes() if data is None else data
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def _tensor(shape, offsets, dtype="F32"):
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


def _only_b(**entry):
    return {"param.0.W": _tensor([2, 3], [0, 24]), "param.0.b": {**_tensor([3], [24, 36]), **entry}}


HOSTILE = {
    "empty": (b"", "the file is empty"),
    "truncated length": (b"\x10\x00\x00", "the file is truncated"),
    "a .npz": (b"PK\x03\x04" + bytes(60), "it is a .npz"),
    "a pickle": (pickle.dumps({"x": 1}), "refused unread"),
    "a header larger than the cap": (_file(length=1 << 40), "refused unread"),
    "a header longer than the file": (_file(length=10_000), "truncated"),
    "a header that is not JSON": (_file(header=b"\xff\xfe garbage"), "no JSON header"),
    "a header that is broken JSON": (_file(header=b'{"a": ]'), "safetensors header is corrupt"),
    "a deeply nested header": (_file(header=b"{" + b'"a":[' * 40 + b"]" * 40 + b"}"), "nested 41 deep"),
    "a duplicate tensor": (_file(header=b'{"__metadata__":{},"x":1,"x":2}'), "appears twice"),
    "no description": (_file(metadata={}), "no fastnn description"),
    "a metadata value that is not a string": (_file(metadata={"fastnn": {"format": "fastnn-model"}}),
                                              "must map names to strings"),
    "a foreign description": (_file(metadata={"fastnn": '{"format": "other"}'}), "not a fastnn model file"),
    "a corrupt description": (_file(metadata={"fastnn": '{"format": '}), "description is corrupt"),
    "a newer format": (_file(metadata={"fastnn": model_meta(version=99).tobytes().decode()}), "newer fastnn"),
    "an extra tensor": (_file(header={**_only_b(), "evil": _tensor([1], [36, 40])}, data=bytes(40)),
                        "'evil' is not part of the model"),
    "a missing tensor": (_file(header={"param.0.W": _tensor([2, 3], [0, 24])}, data=bytes(24)),
                         "parameter param.0.b is missing"),
    "an integer dtype": (_file(header=_only_b(dtype="I32")), "has dtype 'I32'"),
    "bfloat16": (_file(header=_only_b(dtype="BF16", data_offsets=[24, 30]), data=bytes(30)), "has dtype 'BF16'"),
    "another shape": (_file(header=_only_b(shape=[4])), "has shape [4], but the architecture says (3,)"),
    "a shape of floats": (_file(header=_only_b(shape=[3.0])), "has shape [3.0]"),
    "offsets that do not fit the shape": (_file(header=_only_b(data_offsets=[24, 40]), data=bytes(40)),
                                          "take 12 bytes"),
    "an entry with more keys": (_file(header=_only_b(extra=1)), "not dtype, shape and data_offsets"),
    "overlapping tensors": (_file(header=_only_b(data_offsets=[12, 24])), "starts at 12, not at 24"),
    "data cut short": (_file(data=bytes(30)), "its tensors take 36 bytes; 30 follow the header"),
    "data past the tensors": (_file(data=bytes(40)), "its tensors take 36 bytes; 40 follow the header"),
    "NaN": (_file(data=np.full(9, np.nan, "<f4").tobytes()), "contains NaN or inf"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_damaged_or_crafted_file_is_fastnns_error_naming_it(tmp_path, name):
    data, message = HOSTILE[name]
    path = tmp_path / "net.safetensors"
    path.write_bytes(data)
    with pytest.raises(fastnn.ModelFileError, match=str(path)) as error:
        fastnn.load(path)
    assert message in str(error.value)


def test_the_hostile_test_file_is_otherwise_a_valid_model(tmp_path):
    (tmp_path / "net.safetensors").write_bytes(_file())
    net = fastnn.load(tmp_path / "net.safetensors")
    np.testing.assert_array_equal(net.dense_layers[0].W, np.arange(6).reshape(2, 3))


def test_a_description_over_its_cap_is_refused_before_parsing(tmp_path):
    big = json.dumps({"format": "fastnn-model", "pad": "x" * fastnn.io.MAX_DESCRIPTION_BYTES})
    (tmp_path / "net.safetensors").write_bytes(_file(metadata={"fastnn": big}))
    with pytest.raises(fastnn.ModelFileError, match="the model description takes"):
        fastnn.load(tmp_path / "net.safetensors")


def test_max_bytes_bounds_the_tensors_and_can_be_raised(tmp_path):
    (tmp_path / "net.safetensors").write_bytes(_file())
    with pytest.raises(fastnn.ModelFileError, match="take 36 bytes, more than max_bytes=35"):
        fastnn.load(tmp_path / "net.safetensors", max_bytes=35)
    assert fastnn.load(tmp_path / "net.safetensors", max_bytes=36).n_out == 3


def test_a_missing_file_or_a_folder_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        fastnn.load(tmp_path / "none.safetensors")
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(fastnn.ModelFileError, match="is a folder"):
        fastnn.load(tmp_path / "dir.safetensors")


# ---- ONNX ----------------------------------------------------------------------------
@pytest.fixture
def onnxruntime():
    pytest.importorskip("onnx", reason="the onnx package is not installed (pip install 'fastnn[onnx]')")
    return pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")


def _exported(onnxruntime, net, path, **kwargs):
    """A session running ``net`` as exported to ``path``."""
    from fastnn.onnx_export import export_onnx

    export_onnx(net, path, **kwargs)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # the test machine's cores are shared
    return onnxruntime.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def _agrees(session, net, X):
    P = session.run(None, {"input": X})[0]
    assert P.dtype == X.dtype and P.shape == (X.shape[0], net.n_out)
    tolerance = dict(rtol=1e-5, atol=1e-6) if X.dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(P, net.predict_proba(X), **tolerance)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTIVATIONS, ids=ACTIVATION_IDS)
def test_every_activation_exports_as_predict_proba_computes_it(tmp_path, onnxruntime, act, dtype):
    net = _net(dtype, act, last=act)  # inside the stack and at its end
    session = _exported(onnxruntime, net, tmp_path / "net.onnx")
    for batch in (1, 3, 64):  # the batch dimension is free
        _agrees(session, net, _X(batch, dtype, seed=batch))


def test_the_formulas_hold_far_out_where_activations_saturate(tmp_path, onnxruntime):
    for act in ACTIVATIONS[:-1]:
        # relative accuracy to the last bits, also for softplus(-60) = 9e-27 (log1p's care), except
        # where ONNX Runtime's Sigmoid rounds tiny values, and where GELU's own formula cancels
        atol = 1e-14 if act in (fastnn.Sigmoid, fastnn.GELU) else 0.0
        net = fastnn.Sequential(fastnn.Dense(1, 1), act(), backend="numpy", dtype="float64")
        net.dense_layers[0].W, net.dense_layers[0].b = [[60.0]], [0.0]  # z from -60 to 60
        session = _exported(onnxruntime, net, tmp_path / "net.onnx")
        X = np.linspace(-1, 1, 241)[:, None]
        np.testing.assert_allclose(session.run(None, {"input": X})[0], net.predict_proba(X), rtol=1e-12, atol=atol)


@pytest.mark.parametrize("loss, last", [(None, None), ("mse", fastnn.Sigmoid), ("cross_entropy", None),
                                        ("cross_entropy", fastnn.Softmax), ("cross_entropy", fastnn.Sigmoid),
                                        ("binary_cross_entropy", None), ("binary_cross_entropy", fastnn.Sigmoid)])
def test_the_losss_output_activation_is_applied_as_predict_proba_applies_it(tmp_path, onnxruntime, loss, last):
    net = _net("float64", fastnn.ReLU, loss=loss, last=last)
    _agrees(_exported(onnxruntime, net, tmp_path / "net.onnx"), net, _X(8, "float64"))


def test_a_briefly_trained_model_exports_its_probabilities(tmp_path, onnxruntime):
    X, y = blobs(n=300, n_features=20, n_classes=4)
    net = fastnn.Sequential(fastnn.Dense(20, 16), fastnn.GELU(), fastnn.Dense(16, 4), backend="numpy", seed=0)
    net.fit(X, y, epochs=3, batch_size=32, loss="cross_entropy", lr=0.1)
    session = _exported(onnxruntime, net, tmp_path / "net.onnx")
    P = session.run(None, {"input": X})[0]
    np.testing.assert_allclose(P, net.predict_proba(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-5)
    assert (np.argmax(P, axis=1) == net.predict(X)).all() and net.evaluate(X, y)["accuracy"] > 0.5


def test_the_graph_names_its_weights_and_keeps_the_description(tmp_path, onnxruntime):
    import onnx

    net = _net("float32", fastnn.Softplus)
    _exported(onnxruntime, net, tmp_path / "net.onnx", opset=13)
    model = onnx.load(tmp_path / "net.onnx")
    assert model.opset_import[0].version == 13 and model.producer_name == "fastnn"
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(weights["param.1.W"], net.dense_layers[1].W)
    description = json.loads({p.key: p.value for p in model.metadata_props}["fastnn"])
    assert description == json.loads(json.dumps(fastnn.io._describe(net)))


class Doubled(fastnn.layers.Layer):
    """A user's layer: the exporter cannot know what it computes."""

    def forward(self, X):
        return 2 * X


class LoudReLU(fastnn.ReLU):
    def forward(self, X):
        return super().forward(X)


@pytest.mark.parametrize("layer", [Doubled, LoudReLU])
def test_a_layer_the_exporter_does_not_know_is_named(tmp_path, onnxruntime, layer):
    from fastnn.onnx_export import export_onnx

    net = fastnn.Sequential(fastnn.Dense(5, 3), layer(), backend="numpy")
    with pytest.raises(ValueError, match=rf"layer 1, .*{layer.__name__}.*has no ONNX form"):
        export_onnx(net, tmp_path / "net.onnx")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("opset", [12, 10_000, 17.0, True])
def test_an_opset_out_of_range_is_refused(tmp_path, onnxruntime, opset):
    from fastnn.onnx_export import export_onnx

    with pytest.raises(ValueError, match="opset must be an integer from 13"):
        export_onnx(_net(), tmp_path / "net.onnx", opset=opset)


def test_without_onnx_the_error_says_what_to_install(tmp_path, monkeypatch):
    from fastnn.onnx_export import export_onnx

    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install 'fastnn\[onnx\]'"):
        export_onnx(_net(), tmp_path / "net.onnx")


def test_dropout_exports_as_the_identity_and_the_method(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    pytest.importorskip("onnx", reason="the onnx package is not installed (pip install 'fastnn[onnx]')")
    X = np.random.default_rng(3).standard_normal((9, 5))
    net = fastnn.Sequential(fastnn.Dense(5, 6), fastnn.ReLU(), fastnn.Dropout(0.5), fastnn.Dense(6, 3),
                            seed=2, dtype="float64")
    net.fit(X, np.arange(9) % 3, epochs=2, batch_size=4, lr=0.1)
    path = tmp_path / "net.onnx"
    net.export_onnx(path)
    got = onnxruntime.InferenceSession(str(path)).run(None, {"input": X})[0]
    np.testing.assert_allclose(got, net.predict_proba(X), rtol=1e-12)
