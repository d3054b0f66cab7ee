"""Files from anyone: a model, checkpoint, IDX file or image costs memory and time bounded by
what its own description implies and by a documented cap, both checked before anything is
inflated; what is not a regular file is refused at once; every failure is fastnn's own error
naming the file, and the CLI says it in one line.
"""
import gzip
import io
import json
import os
import struct
import time
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

import fastnn
from fastnn import io as fio
from conftest import model_meta, within

posix_only = pytest.mark.skipif(os.name != "posix", reason="named pipes as POSIX has them")
MB = 1 << 20


def _npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _members(**extra):
    """The members of a valid 2-3 model, as .npy bytes, plus ``extra`` (name -> bytes)."""
    members = {"meta": _npy(model_meta()), "param.0.W": _npy(np.zeros((2, 3), np.float32)),
               "param.0.b": _npy(np.zeros(3, np.float32))}
    members.update(extra)
    return members


def _zip(members, method=zipfile.ZIP_DEFLATED):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as z:
        for name, data in members.items():
            z.writestr(name + ".npy", data)
    return buffer.getvalue()


def _declare_size(data, member, size):
    """The zip ``data`` with ``member``'s uncompressed size declared as ``size`` in its local
    header and in the central directory (no zip64: sizes under 4 GiB), its bytes unchanged."""
    data, name = bytearray(data), (member + ".npy").encode()
    for signature, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        at = data.find(signature)
        while at >= 0:
            if data[at + name_at:at + name_at + len(name)] == name:
                struct.pack_into("<I", data, at + size_at, size)
            at = data.find(signature, at + 4)
    return bytes(data)


def _refused_cheaply(error, match, function, *args, seconds=5, peak_mb=32):
    """``function(*args)`` raises ``error`` matching ``match``, within ``seconds`` and ``peak_mb`` of memory."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(error, match=match) as info:
            function(*args)
        took = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert took < seconds, f"took {took:.1f} s"
    assert peak < peak_mb * MB, f"peak memory {peak / MB:.0f} MB"
    return info.value


def _write(tmp_path, data, name="bad.npz"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ---- model files: sizes checked against the zip directory before inflating ------------------
def test_the_test_files_are_valid_models(tmp_path):
    net = fastnn.load(_write(tmp_path, _zip(_members())), backend="numpy")
    assert net.dense_layers[0].W.shape == (2, 3)


def test_what_numpy_writes_otherwise_still_loads(tmp_path):
    """Deflated members (np.savez_compressed), Fortran order, big-endian floats: all within the checks."""
    W = np.asfortranarray(np.arange(6, dtype=">f8").reshape(2, 3))
    path = tmp_path / "m.npz"
    np.savez_compressed(path, meta=model_meta(), **{"param.0.W": W, "param.0.b": np.ones(3, np.float16)})
    net = fastnn.load(path, backend="numpy")
    np.testing.assert_array_equal(net.dense_layers[0].W, W)
    np.testing.assert_array_equal(net.dense_layers[0].b, np.ones(3))


def test_an_extra_member_is_refused_unread(tmp_path):
    # a member that would inflate to 3 GiB (declared so; the 16 MB of zeros really inflate)
    data = _declare_size(_zip(_members(extra=bytes(16 * MB))), "extra", 3 << 30)
    path = _write(tmp_path, data)
    error = _refused_cheaply(fastnn.ModelFileError, "member 'extra.npy' is not part of the model .*refused unread",
                             fastnn.load, path)
    assert str(path) in str(error)


def test_a_needed_member_may_not_claim_more_than_its_shape_needs(tmp_path):
    data = _declare_size(_zip(_members()), "param.0.W", 3 << 30)
    path = _write(tmp_path, data)
    _refused_cheaply(fastnn.ModelFileError, r"param.0.W.npy claims 3,221,225,472 bytes; its shape \(2, 3\) needs "
                     r"at most .* \(refused before inflating\)", fastnn.load, path)


def test_a_zip_that_lies_about_a_size_is_inflated_only_as_far_as_the_shape_needs(tmp_path):
    """The directory declares what the shape needs; the data inflates to 64 MB more."""
    W = _npy(np.zeros((2, 3), np.float32))
    data = _zip(_members(**{"param.0.W": W + bytes(64 * MB)}))
    path = _write(tmp_path, _declare_size(data, "param.0.W", len(W)))
    _refused_cheaply(fastnn.ModelFileError, "corrupt or truncated model file .*param.0.W", fastnn.load, path)


def test_a_zip_whose_data_ends_early_is_truncated(tmp_path):
    W = _npy(np.zeros((2, 3), np.float32))
    path = _write(tmp_path, _declare_size(_zip(_members()), "param.0.W", len(W) + 8))
    with pytest.raises(fastnn.ModelFileError, match=f"param.0.W.npy claims {len(W) + 8} bytes, but its .npy "
                                                     f"header and shape make {len(W)}"):
        fastnn.load(path)


def test_max_bytes_bounds_what_a_model_may_hold_and_can_be_raised(tmp_path):
    net = fastnn.Sequential(fastnn.Dense(200, 100), backend="numpy", seed=0)  # 80 kB of float32
    path = tmp_path / "m.npz"
    net.save(path)
    with pytest.raises(fastnn.ModelFileError, match=r"its arrays take 80,.* bytes, more than max_bytes=10,000; "
                                                     r"if you trust this file, load it with a larger max_bytes"):
        fastnn.load(path, max_bytes=10_000)
    assert fastnn.load(path, max_bytes=200_000).dense_layers[0].W.shape == (200, 100)
    assert fio.MAX_BYTES == 1 << 30  # the default, as the README says
    with pytest.raises(ValueError, match="max_bytes must be an integer"):
        fastnn.load(path, max_bytes=-1)


def test_a_huge_zip_directory_is_refused_before_it_is_parsed(tmp_path):
    data = bytearray(_zip(_members()))
    end = data.rfind(b"PK\x05\x06")
    struct.pack_into("<I", data, end + 12, 100 * MB)  # the directory's size, as the end record gives it
    _refused_cheaply(fastnn.ModelFileError, "the zip directory takes 104,857,600 bytes",
                     fastnn.load, _write(tmp_path, bytes(data)))


def test_only_stored_and_deflated_members_are_read(tmp_path):
    path = _write(tmp_path, _zip(_members(), method=zipfile.ZIP_BZIP2))
    with pytest.raises(fastnn.ModelFileError, match="compressed in a way fastnn does not read"):
        fastnn.load(path)


def test_a_duplicate_member_is_refused(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in _members().items():
            z.writestr(name + ".npy", data)
        with pytest.warns(UserWarning, match="Duplicate name"):
            z.writestr("param.0.W.npy", _npy(np.ones((2, 3), np.float32)))
    with pytest.raises(fastnn.ModelFileError, match="appears twice"):
        fastnn.load(_write(tmp_path, buffer.getvalue()))


# ---- the JSON description ---------------------------------------------------------------------
def _with_rawmodel_meta(text):
    return _zip(_members(meta=_npy(np.frombuffer(text.encode(), np.uint8))))


def test_a_deeply_nested_description_is_refused_before_parsing(tmp_path):
    deep = '{"format": "fastnn-model", "version": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    _refused_cheaply(fastnn.ModelFileError, "description is nested 100,001 deep; fastnn writes 4 levels and "
                     "reads at most 16", fastnn.load, _write(tmp_path, _with_rawmodel_meta(deep)))


def test_nesting_hidden_behind_brackets_in_strings_is_counted(tmp_path):
    deep = '{"format": "fastnn-model", "version": 1, "x": ' + '["]\\\\", ' * 5000 + "0" + "]" * 5000 + "}"
    assert json.loads('["]\\\\", 0]') == ["]\\", 0]  # the unit: a string ending in a backslash, then a list
    with pytest.raises(fastnn.ModelFileError, match="nested 5,001 deep"):
        fastnn.load(_write(tmp_path, _with_rawmodel_meta(deep)))


@pytest.mark.parametrize("value", [
    [], {"a": [1, {"b": [[2]]}]}, ["[", "]]]", '"', "\\", '\\"[', {"k]": "{{"}], "x" * 10,
    [[[[["\\\\\\\"[[[["]]]]],
])
def test_the_nesting_count_is_the_depth_json_parses(value):
    def depth(v):
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        return 0 if children is None else 1 + max(map(depth, children), default=0)
    assert fio._nesting(json.dumps(value).encode()) == depth(value)


def test_a_description_over_its_cap_is_refused_unread(tmp_path):
    big = '{"format": "fastnn-model", "pad": "' + "x" * (fio.MAX_DESCRIPTION_BYTES + 1) + '"}'
    _refused_cheaply(fastnn.ModelFileError, "the model description (claims|takes) .* bytes; fastnn "
                     "reads at most 8,388,608", fastnn.load, _write(tmp_path, _zip(_members(meta=_npy(
                         np.frombuffer(big.encode(), np.uint8))))), peak_mb=64)


# ---- what is not a regular file -----------------------------------------------------------------
@posix_only
def test_a_named_pipe_as_a_model_is_refused_at_once(tmp_path):
    pipe = tmp_path / "model.npz"
    os.mkfifo(pipe)
    with pytest.raises(fastnn.ModelFileError, match="model.npz: is a named pipe, not a regular file"):
        within(5, fastnn.load, pipe)
    with pytest.raises(fastnn.ModelFileError, match="is a named pipe"):
        within(5, lambda: _net_for_resume().fit(*_data(), epochs=1, checkpoint=pipe, resume=True))


def test_a_folder_as_a_model_is_refused(tmp_path):
    with pytest.raises(fastnn.ModelFileError, match="is a folder, not a regular file"):
        fastnn.load(tmp_path)


def _data():
    g = np.random.default_rng(0)
    return g.standard_normal((20, 2)).astype(np.float32), g.integers(0, 3, 20)


def _net_for_resume():
    return fastnn.Sequential(fastnn.Dense(2, 3), backend="numpy", seed=0)


# ---- IDX files: the header first, its claim checked before any data is read -----------------
def _idx_header(shape, code=0x08):
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def test_a_gzip_claiming_a_billion_images_fails_fast_in_little_memory(tmp_path):
    from fastnn.datasets import IDXError, read_idx

    path = _write(tmp_path, gzip.compress(_idx_header((10**9, 28, 28)) + bytes(16 * MB)), "images.gz")
    _refused_cheaply(IDXError, r"images.gz: the header claims shape \(1000000000, 28, 28\), 784,000,000,000 "
                     r"bytes of data, more than max_bytes=268,435,456; if you trust this file, read it with a "
                     r"larger max_bytes", read_idx, path)


def test_a_gzip_holding_more_than_its_header_says_stops_where_the_header_ends(tmp_path):
    from fastnn.datasets import IDXError, read_idx

    path = _write(tmp_path, gzip.compress(_idx_header((10, 28, 28)) + bytes(64 * MB)), "images.gz")
    _refused_cheaply(IDXError, r"unexpected bytes after the data of shape \(10, 28, 28\)", read_idx, path)


def test_a_plain_file_claiming_more_than_it_holds_is_refused_unread(tmp_path):
    from fastnn.datasets import IDXError, read_idx

    path = _write(tmp_path, _idx_header((10**9, 28, 28)) + bytes(100), "images")
    _refused_cheaply(IDXError, r"truncated: shape \(1000000000, 28, 28\) needs 784,000,000,000 bytes of data, "
                     r"the file has 100", read_idx, path)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_max_bytes_bounds_an_idx_file_and_can_be_raised(tmp_path, gz):
    from fastnn.datasets import IDXError, idx, read_idx, write_idx

    path = tmp_path / ("labels.gz" if gz else "labels")
    write_idx(path, np.arange(1000, dtype=np.int32) % 7)
    with pytest.raises(IDXError, match=r"claims shape \(1000,\), 4,000 bytes of data, more than max_bytes=3,999"):
        read_idx(path, max_bytes=3999)
    assert read_idx(path, max_bytes=4000).sum() == (np.arange(1000) % 7).sum()
    assert idx.MAX_BYTES == 256 << 20  # the default, as the README says: full MNIST five times over


@posix_only
def test_a_named_pipe_or_folder_as_an_idx_file_is_refused_at_once(tmp_path):
    from fastnn.datasets import IDXError, read_idx

    pipe = tmp_path / "train-images-idx3-ubyte"
    os.mkfifo(pipe)
    with pytest.raises(IDXError, match="train-images-idx3-ubyte: is a named pipe"):
        within(5, read_idx, pipe)
    with pytest.raises(IDXError, match="is a folder"):
        read_idx(tmp_path)


# ---- images --------------------------------------------------------------------------------
@pytest.fixture
def pil():
    return pytest.importorskip("PIL.Image", reason="Pillow is not installed (pip install 'fastnn[image]')")


def _png_claiming(tmp_path, width, height):
    """A small valid PNG whose header is rewritten to claim ``width`` x ``height`` (CRC fixed)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (8, 8), 0).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    at = data.index(b"IHDR")
    struct.pack_into(">II", data, at + 4, width, height)
    struct.pack_into(">I", data, at + 17, zlib.crc32(bytes(data[at:at + 17])))
    return _write(tmp_path, bytes(data), "digit.png")


def test_an_image_claiming_too_many_pixels_is_refused_before_decoding(pil, tmp_path):
    from fastnn.datasets.images import ImageFileError, load_digit_image

    path = _png_claiming(tmp_path, 8000, 8000)
    _refused_cheaply(ImageFileError, "digit.png: 8000 x 8000 pixels, more than max_pixels=25,000,000",
                     load_digit_image, path)
    path = _png_claiming(tmp_path, 100_000, 100_000)  # past Pillow's own cap too
    _refused_cheaply(ImageFileError, "digit.png: .*pixels", load_digit_image, path)


def test_an_image_file_over_max_bytes_is_refused_unread(pil, tmp_path):
    from fastnn.datasets.images import ImageFileError, load_digit_image

    path = _write(tmp_path, b"\x89PNG" + bytes(2000), "digit.png")
    with pytest.raises(ImageFileError, match="digit.png: 2,004 bytes, more than max_bytes=1,000"):
        load_digit_image(path, max_bytes=1000)


def test_a_truncated_image_is_fastnns_error(pil, tmp_path):
    from PIL import Image

    from fastnn.datasets.images import ImageFileError, load_digit_image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buffer, "PNG")
    path = _write(tmp_path, buffer.getvalue()[:-200], "digit.png")
    with pytest.raises(ImageFileError, match="digit.png: not an image Pillow can read"):
        load_digit_image(path)


@posix_only
def test_a_named_pipe_as_an_image_is_refused_at_once(pil, tmp_path):
    from fastnn.datasets.images import ImageFileError, load_digit_image

    pipe = tmp_path / "digit.png"
    os.mkfifo(pipe)
    with pytest.raises(ImageFileError, match="digit.png: is a named pipe"):
        within(5, load_digit_image, pipe)


# ---- the CLI says each in one line -------------------------------------------------------------
@pytest.fixture
def hostile(tmp_path):
    deep = '{"format": "fastnn-model", "version": 1, "x": ' + "[" * 50_000 + "]" * 50_000 + "}"
    files = {
        "bomb.npz": _declare_size(_zip(_members()), "param.0.W", 3 << 30),
        "extra.npz": _zip(_members(extra=bytes(1000))),
        "deep.npz": _with_rawmodel_meta(deep),
    }
    for name, data in files.items():
        _write(tmp_path, data, name)
    if os.name == "posix":
        os.mkfifo(tmp_path / "pipe.npz")
    return tmp_path


@pytest.mark.parametrize("name, message", [
    ("bomb.npz", "claims 3,221,225,472 bytes"),
    ("extra.npz", "is not part of the model"),
    ("deep.npz", "nested 50,001 deep"),
    pytest.param("pipe.npz", "is a named pipe", marks=posix_only),
    ("", "is a folder"),
])
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_the_cli_says_what_is_wrong_with_a_model_file_in_one_line(hostile, capsys, name, message, command):
    from fastnn import cli

    argv = [command, str(hostile / name)] + (["x.npy"] if command == "predict" else [])
    assert within(30, cli.main, argv) == 1
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and f"fastnn {command}: error: " in err and message in err, err
    assert "Traceback" not in err


def test_the_cli_says_what_is_wrong_with_an_image_in_one_line(pil, tmp_path, capsys):
    from fastnn import cli

    net = fastnn.Sequential(fastnn.Dense(784, 10), backend="numpy", seed=0)
    net.save(tmp_path / "m.npz")
    image = _png_claiming(tmp_path, 8000, 8000)
    assert cli.main(["predict", str(tmp_path / "m.npz"), str(image)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "more than max_pixels=25,000,000" in err, err
