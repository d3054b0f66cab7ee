"""The ``fastnn`` command: end to end in subprocesses on small slices, plus its pieces in-process.

Every run uses ``--backend numpy`` (no compile time) and the bundled sample.
"""
import io
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fastnn
from fastnn import cli
from fastnn.datasets import load_mnist_sample

EPOCH_LINE = re.compile(r"^epoch +(\d+): loss (\d+\.\d{4})  train acc (\d\.\d{4})  test acc (\d\.\d{4})  "
                        r"\d+\.\d\d s  [\d,]+ samples/s$")
BEST_LINE = re.compile(r"^best epoch (\d+): test acc (\d\.\d{4}) \(last epoch (\d+): test acc (\d\.\d{4}), ")


def fastnn_cmd(*args, env=None, cwd=None):
    """``python -m fastnn ARGS`` in a subprocess; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("FASTNN_BACKEND", None)
    return subprocess.run([sys.executable, "-m", "fastnn", *map(str, args)], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=120)


def assert_one_line_error(result, status, *fragments):
    assert result.returncode == status, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fastnn"), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def run_main(capsys, *args):
    """``cli.main(args)`` in-process; returns ``(status, stdout, stderr)``."""
    try:
        status = cli.main([str(a) for a in args])
    except SystemExit as exc:  # argparse
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def has_module(name):
    try:
        __import__(name)
    except ImportError:
        return False
    return True


needs_matplotlib = pytest.mark.skipif(not has_module("matplotlib"),
                                      reason="matplotlib is not installed (pip install 'fastnn[plot]')")
needs_pillow = pytest.mark.skipif(not has_module("PIL"), reason="Pillow is not installed (pip install 'fastnn[image]')")


@pytest.fixture(scope="module")
def sample():
    return load_mnist_sample()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One quiet training run (1 epoch, 500 images) in a subprocess: the model file and the output."""
    folder = tmp_path_factory.mktemp("trained")
    model = folder / "m.npz"
    result = fastnn_cmd("train", "--epochs", 1, "--limit", 500, "--quiet", "--save", model,
                        "--backend", "numpy")
    return model, result


# ---- train ---------------------------------------------------------------------------
def test_train_end_to_end_quiet(trained, sample):
    model, result = trained
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 2, lines  # --quiet: no header, no per-epoch lines
    best = BEST_LINE.match(lines[0])
    assert best and best.group(1) == "1" and best.group(3) == "1"
    assert lines[1] == f"model saved to {model}"
    net = fastnn.load(model, backend="numpy")
    assert [d.n_out for d in net.dense_layers] == [100, 10] and net.loss.name == "cross_entropy"
    # the printed test accuracy is the saved model's
    scores = net.evaluate(sample.X_test, sample.y_test)
    assert abs(scores["accuracy"] - float(best.group(2))) < 1e-4
    assert scores["accuracy"] > 0.4  # 500 images, one epoch: far above chance (0.1)


def test_train_prints_a_line_per_epoch_and_plots(tmp_path):
    plot = tmp_path / "curves.png"
    args = ["train", "--epochs", 2, "--limit", 300, "--hidden", 20, "--backend", "numpy"]
    if has_module("matplotlib"):
        args += ["--plot", plot]
    result = fastnn_cmd(*args)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr  # no progress bar when stderr is not a terminal
    lines = result.stdout.splitlines()
    assert lines[:5] == ["data: MNIST sample (bundled): 300 training / 1,000 test images",
                         "network: 784-20-10 (relu hidden layer), softmax output, cross-entropy loss",
                         "start: weights random, Gaussian with standard deviation sqrt(2/inputs); biases 0 "
                         "(he_normal); seed 0",
                         "training: SGD, learning rate 0.3, mini-batches of 16, 2 epochs, on the numpy backend",
                         "fit: backend numpy, layer by layer"]  # the path that trains (numba: compiled or not)
    epochs = [EPOCH_LINE.match(line) for line in lines[5:7]]
    assert all(epochs) and [m.group(1) for m in epochs] == ["1", "2"]
    best = BEST_LINE.match(lines[7])
    assert best and best.group(4) == epochs[1].group(4)
    assert max(float(m.group(4)) for m in epochs) == float(best.group(2))
    if has_module("matplotlib"):
        assert lines[-1] == f"curves written to {plot}"
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


@needs_matplotlib
def test_train_plot_is_written(tmp_path, capsys):
    plot = tmp_path / "c.png"
    status, out, _ = run_main(capsys, "train", "--epochs", 2, "--limit", 200, "--hidden", 10,
                              "--backend", "numpy", "--quiet", "--plot", plot)
    assert status == 0 and out.endswith(f"curves written to {plot}\n")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_run(tmp_path, capsys):
    outputs = []
    for name in ("a.npz", "b.npz"):
        status, out, _ = run_main(capsys, "train", "--epochs", 2, "--limit", 200, "--hidden", 16,
                                  "--backend", "numpy", "--quiet", "--seed", 3, "--save", tmp_path / name)
        assert status == 0
        outputs.append(out.splitlines()[0].split(", ")[0])  # without the timing
    a, b = (fastnn.load(tmp_path / n, backend="numpy") for n in ("a.npz", "b.npz"))
    assert outputs[0] == outputs[1]
    assert all(np.array_equal(x.W, y.W) for x, y in zip(a.dense_layers, b.dense_layers))


def test_train_and_evaluate_on_idx_files(tmp_path, capsys, sample):
    from fastnn.datasets import write_idx

    pixels = np.round(sample.X_train * 255).astype(np.uint8).reshape(-1, 28, 28)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", pixels[:300])
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", sample.y_train[:300].astype(np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", pixels[300:400])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", sample.y_train[300:400].astype(np.uint8))
    model = tmp_path / "m.npz"
    status, out, err = run_main(capsys, "train", "--data", tmp_path, "--epochs", 2, "--hidden", 16,
                                "--backend", "numpy", "--save", model)
    assert status == 0, err
    assert out.startswith(f"data: MNIST from {tmp_path}: 300 training / 100 test images\n")
    status, out, err = run_main(capsys, "evaluate", model, "--data", tmp_path, "--backend", "numpy")
    assert status == 0 and "test set: 100 images" in out


def test_resume_continues_to_the_same_weights(tmp_path, capsys):
    common = ["train", "--limit", 200, "--hidden", 16, "--backend", "numpy", "--quiet"]
    assert run_main(capsys, *common, "--epochs", 3, "--save", tmp_path / "straight.npz")[0] == 0
    ckpt = tmp_path / "run.npz"
    assert run_main(capsys, *common, "--epochs", 1, "--save", ckpt, "--checkpoint", ckpt)[0] == 0
    status, out, _ = run_main(capsys, *common, "--epochs", 3, "--save", ckpt, "--resume")
    assert status == 0 and out.startswith("best epoch")
    straight, resumed = (fastnn.load(p, backend="numpy") for p in (tmp_path / "straight.npz", ckpt))
    for x, y in zip(straight.dense_layers, resumed.dense_layers):
        assert np.array_equal(x.W, y.W) and np.array_equal(x.b, y.b)


def _interrupt_in_epoch(monkeypatch, epoch):
    """Ctrl-C inside epoch ``epoch`` of the next fits (on the numpy backend's layer-by-layer path)."""
    from fastnn.model import Sequential

    real, calls = Sequential._epoch_layers, []

    def epoch_layers(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Sequential, "_epoch_layers", epoch_layers)


def test_ctrl_c_keeps_the_last_epoch_saves_and_exits_130(tmp_path, capsys, monkeypatch):
    _interrupt_in_epoch(monkeypatch, 2)
    model, ckpt = tmp_path / "m.npz", tmp_path / "c.npz"
    status, out, err = run_main(capsys, "train", "--epochs", 5, "--limit", 100, "--hidden", 8,
                                "--backend", "numpy", "--quiet", "--save", model, "--checkpoint", ckpt)
    assert status == 130
    assert err.splitlines()[-1] == (f"fastnn train: interrupted (Ctrl-C) in epoch 2: kept the weights of epoch 1; "
                                    f"model saved to {model}; --resume continues from {ckpt}")
    assert [line.split(":")[0] for line in out.splitlines()] == ["best epoch 1"]  # the summary, no more
    assert fastnn.load(model, backend="numpy") and fastnn.load(ckpt, backend="numpy")


def test_ctrl_c_is_one_line(tmp_path, capsys, monkeypatch):
    _interrupt_in_epoch(monkeypatch, 2)
    status, _, err = run_main(capsys, "train", "--epochs", 3, "--limit", 100, "--hidden", 8,
                              "--backend", "numpy", "--quiet")
    assert status == 130 and err == "fastnn train: interrupted (Ctrl-C) in epoch 2: kept the weights of epoch 1\n"


def test_ctrl_c_before_the_first_epoch_keeps_a_saved_model(tmp_path, capsys, monkeypatch):
    model = tmp_path / "m.npz"
    common = ["train", "--limit", 100, "--hidden", 8, "--backend", "numpy", "--quiet", "--save", model]
    assert run_main(capsys, *common, "--epochs", 1)[0] == 0
    saved = model.read_bytes()
    _interrupt_in_epoch(monkeypatch, 1)
    status, out, err = run_main(capsys, *common, "--epochs", 3, "--plot", tmp_path / "c.png")
    assert status == 130 and out == ""
    assert err.splitlines()[-1] == (f"fastnn train: interrupted (Ctrl-C) before the first epoch ended; "
                                    f"{model} not written")
    assert model.read_bytes() == saved and not (tmp_path / "c.png").exists()


def test_ctrl_c_between_epochs_keeps_and_saves_the_last_one(tmp_path, capsys, monkeypatch):
    real = cli._Progress.__call__

    def progress(self, epoch, logs):  # Ctrl-C while epoch 2's line is printed: it escapes fit
        real(self, epoch, logs)
        if epoch == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(cli._Progress, "__call__", progress)
    model, plot = tmp_path / "m.npz", tmp_path / "c.png"
    args = ["train", "--epochs", 5, "--limit", 100, "--hidden", 8, "--backend", "numpy", "--save", model]
    if has_module("matplotlib"):
        args += ["--plot", plot]
    status, out, err = run_main(capsys, *args)
    assert status == 130 and len(err.splitlines()) == 1  # fit did not see this Ctrl-C: its line is not there
    curves = f"; curves written to {plot}" if "--plot" in args else ""
    assert err == (f"fastnn train: interrupted (Ctrl-C) after epoch 2: kept the weights of the last completed "
                   f"epoch; model saved to {model}{curves}\n")
    assert out.splitlines()[-1].startswith("best epoch ") and "(last epoch 2: " in out.splitlines()[-1]
    assert fastnn.load(model, backend="numpy").n_in == 784


def _ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("command, patch", [
    (["train"], "fastnn.datasets.load_mnist_sample"),  # reading the data
    (["train", "--save", "{tmp}/m.npz"], "fastnn.model.Sequential.fit"),  # before fit's first epoch
    (["evaluate", "{model}"], "fastnn.datasets.load_mnist_sample"),
    (["evaluate", "{model}"], "fastnn.model.Sequential.predict_proba"),
    (["predict", "{model}", "{tmp}/x.npy"], "fastnn.model.Sequential.predict_proba"),
])
def test_ctrl_c_anywhere_else_is_one_line_and_130(command, patch, trained, tmp_path, capsys, monkeypatch):
    model, _ = trained
    np.save(tmp_path / "x.npy", np.zeros(784))
    monkeypatch.setattr(patch, _ctrl_c)
    args = [part.format(tmp=tmp_path, model=model) for part in command]
    status, _, err = run_main(capsys, *args, "--backend", "numpy")
    assert status == 130 and len(err.splitlines()) == 1, err
    assert err.startswith(f"fastnn {command[0]}: interrupted (Ctrl-C)")
    if "--save" in command:
        assert err == (f"fastnn train: interrupted (Ctrl-C) before the first epoch ended; "
                       f"{tmp_path}/m.npz not written\n")
        assert not (tmp_path / "m.npz").exists()


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name == "nt", reason="needs POSIX signals")
def test_sigint_in_a_subprocess(tmp_path):
    """A real Ctrl-C (SIGINT) while training: status 130, no traceback, the kept epoch saved."""
    model = tmp_path / "m.npz"
    env = {k: v for k, v in os.environ.items() if k != "FASTNN_BACKEND"}
    proc = subprocess.Popen([sys.executable, "-m", "fastnn", "train", "--backend", "numpy", "--epochs", "1000",
                             "--hidden", "16", "--save", str(model)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the second epoch line (the imports can be slow)
            ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
            line = proc.stdout.readline() if ready else ""
            if not line or line.startswith("epoch   2:"):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    kept = re.fullmatch(r"fastnn train: interrupted \(Ctrl-C\) in epoch (\d+): kept the weights of epoch (\d+); "
                        r"model saved to (.+)", last)
    if kept:  # the usual case: Ctrl-C lands inside an epoch
        assert int(kept.group(1)) == int(kept.group(2)) + 1 >= 3 and kept.group(3) == str(model)
    else:  # or between two, while an epoch's line is printed
        assert re.fullmatch(rf"fastnn train: interrupted \(Ctrl-C\) after epoch \d+: kept the weights of the last "
                            rf"completed epoch; model saved to {re.escape(str(model))}", last), last
    assert fastnn.load(model, backend="numpy").n_in == 784


def test_resume_with_other_settings_or_nothing_left_to_train(tmp_path, capsys):
    ckpt = tmp_path / "run.npz"
    common = ["train", "--limit", 100, "--hidden", 8, "--backend", "numpy", "--quiet", "--save", ckpt]
    assert run_main(capsys, *common, "--epochs", 2, "--lr", "0.5", "--checkpoint", ckpt)[0] == 0
    status, _, err = run_main(capsys, *common, "--epochs", 3, "--resume")  # the default lr, 0.3
    assert status == 1 and len(err.strip().splitlines()) == 1
    assert "trained with optimizer sgd(lr=0.5," in err and "asks for sgd(lr=0.3," in err
    status, out, _ = run_main(capsys, *common, "--epochs", 2, "--lr", "0.5", "--resume")
    assert status == 0 and f"nothing to train: {ckpt} already holds 2 epochs (--epochs 2)" in out


def _parse(*args):
    return cli.build_parser().parse_args(["train", *args])


def _fail(message):
    raise AssertionError(message)


def test_nielsen_network_py_line():
    args = _parse(*"--layers 784,30,10 --activation sigmoid --loss mse --epochs 30 --batch-size 10 "
                  "--lr 3.0 --init normal".split())
    opt = cli._optimizer(args, _fail)
    assert (opt.kind, opt.lr, opt.momentum, opt.weight_decay) == ("sgd", 3.0, 0.0, 0.0)
    net = cli.build_network(cli._layer_sizes(args, _fail), args.activation, args.loss, args.init, "numpy", 0)
    kinds = [type(layer).__name__ for layer in net.layers]
    assert kinds == ["Dense", "Sigmoid", "Dense", "Sigmoid"]  # network.py: sigmoid everywhere
    assert [d.init for d in net.dense_layers] == ["normal", "normal"]
    assert (args.epochs, args.batch_size) == (30, 10)


def test_nielsen_network2_line():
    args = _parse(*"--layers 784,30,10 --activation sigmoid --loss binary_cross_entropy --epochs 30 "
                  "--batch-size 10 --lr 0.5 --weight-decay 0.0001 --init lecun_normal".split())
    opt = cli._optimizer(args, _fail)
    assert (opt.lr, opt.momentum, opt.weight_decay) == (0.5, 0.0, 0.0001)
    net = cli.build_network([784, 30, 10], args.activation, args.loss, args.init, "numpy", 0)
    assert type(net.layers[-1]).__name__ == "Sigmoid"  # folded into the loss in fit


@pytest.mark.parametrize("loss, last", [("mse", "Sigmoid"), ("cross_entropy", "Dense"),
                                        ("binary_cross_entropy", "Sigmoid")])
@pytest.mark.parametrize("activation", ["sigmoid", "relu", "tanh"])
def test_network_shape_per_loss(loss, last, activation):
    net = cli.build_network([784, 12, 8, 10], activation, loss, "auto", "numpy", 0)
    names = [type(layer).__name__ for layer in net.layers]
    hidden = {"sigmoid": "Sigmoid", "relu": "ReLU", "tanh": "Tanh"}[activation]
    assert names[:4] == ["Dense", hidden, "Dense", hidden] and names[4] == "Dense" and names[-1] == last
    assert {d.init for d in net.dense_layers} == {cli.AUTO_INIT[activation]}


def test_hidden_repeats_and_comma_lists():
    assert cli._layer_sizes(_parse("--hidden", "64,32", "--hidden", "16"), _fail) == [784, 64, 32, 16, 10]
    assert cli._layer_sizes(_parse(), _fail) == [784, 100, 10]
    assert cli._layer_sizes(_parse("--layers", "784,10"), _fail) == [784, 10]


def test_adam_and_momentum_options():
    assert cli._optimizer(_parse("--optimizer", "adam"), _fail).lr == 0.001
    opt = cli._optimizer(_parse("--momentum", "0.9", "--lr", "0.05", "--weight-decay", "1e-4"), _fail)
    assert (opt.momentum, opt.lr, opt.weight_decay) == (0.9, 0.05, 1e-4)


# ---- evaluate and predict ----------------------------------------------------------------
def test_evaluate(trained, tmp_path, sample):
    model, _ = trained
    args = ["evaluate", model, "--backend", "numpy"]
    if has_module("matplotlib"):
        args += ["--plot", tmp_path / "ev.png"]
    result = fastnn_cmd(*args)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    net = fastnn.load(model, backend="numpy")
    predicted = net.predict(sample.X_test)
    correct = int(np.sum(predicted == sample.y_test))
    assert f"accuracy: {correct / 1000:.4f} ({correct:,} / 1,000), loss " in out
    for digit in range(10):
        hits = int(np.sum((predicted == digit) & (sample.y_test == digit)))
        assert f"  {digit}: {hits / 100:.4f} ({hits} / 100)" in out
    rows = out.split("columns: predicted):\n")[1].splitlines()[1:11]
    matrix = np.array([[int(v) for v in row.split()[1:]] for row in rows])
    assert matrix.shape == (10, 10) and matrix.sum(axis=1).tolist() == [100] * 10
    assert np.trace(matrix) == correct
    assert np.array_equal(matrix, cli.confusion(sample.y_test, predicted))
    if has_module("matplotlib"):
        assert out.endswith(f"figure written to {tmp_path / 'ev.png'}\n")
        assert (tmp_path / "ev.png").read_bytes()[:4] == b"\x89PNG"
        assert sorted(os.listdir(tmp_path)) == ["ev.png"]  # one file, nothing beside it


def test_predict_npy(trained, tmp_path, sample):
    model, _ = trained
    images = np.round(sample.X_test[:3] * 255).astype(np.uint8)  # grey levels 0-255, as stored
    np.save(tmp_path / "three.npy", images)
    np.save(tmp_path / "one.npy", sample.X_test[7].reshape(28, 28))  # floats in [0, 1], one image
    result = fastnn_cmd("predict", model, tmp_path / "three.npy", tmp_path / "one.npy", "--backend", "numpy")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 8
    expected = fastnn.load(model, backend="numpy").predict(np.concatenate([sample.X_test[:3], sample.X_test[7:8]]))
    names = [f"{tmp_path / 'three.npy'}[{i}]" for i in range(3)] + [str(tmp_path / "one.npy")]
    for name, digit, head, probs in zip(names, expected, lines[0::2], lines[1::2]):
        assert head.startswith(f"{name}: {digit} (probability ")
        values = [float(part.split(":")[1]) for part in probs.split()]
        assert len(values) == 10 and abs(sum(values) - 1) < 0.01 and np.argmax(values) == digit


@needs_pillow
def test_predict_png(trained, tmp_path, sample):
    from PIL import Image

    from fastnn.datasets.images import load_digit_image

    model, _ = trained
    x = sample.X_test[11].reshape(28, 28)
    ink = Image.fromarray((255 * x).astype(np.uint8)).resize((140, 140), Image.Resampling.BILINEAR)
    paper = 255 - np.asarray(ink)  # dark digit on white, 140x140 on a 200x300 page
    page = np.full((200, 300), 255, dtype=np.uint8)
    page[30:170, 20:160] = paper
    path = tmp_path / "digit.png"
    Image.fromarray(page).save(path)
    result = fastnn_cmd("predict", model, path, "--backend", "numpy")
    assert result.returncode == 0, result.stderr
    digit = int(fastnn.load(model, backend="numpy").predict(load_digit_image(path).reshape(1, 784))[0])
    assert result.stdout.startswith(f"{path}: {digit} (probability ")


# ---- info --------------------------------------------------------------------------------
def test_info_lists_every_backend():
    result = fastnn_cmd("info")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"fastnn {fastnn.__version__} (")
    assert f"numpy {np.__version__}" in out and "Python " in out
    for name, (available, reason) in fastnn.available_backends().items():
        if available:
            assert f"\n  {name}: available\n" in out
        else:
            assert f"\n  {name}: unavailable: {reason}\n" in out
    assert "\n    numpy: " in out  # the numpy backend's info() dict
    assert "full MNIST: " in out


# ---- errors: one line, no traceback --------------------------------------------------------
def test_bad_flag_in_a_subprocess():
    assert_one_line_error(fastnn_cmd("train", "--epochs", "0"), 2, "fastnn train: error:", "--epochs",
                          "an integer >= 1")


def test_corrupt_model_in_a_subprocess(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 this is not really a zip file")
    assert_one_line_error(fastnn_cmd("evaluate", bad, "--backend", "numpy"), 1, "fastnn evaluate: error:",
                          str(bad), "corrupt")


@pytest.mark.parametrize("args, status, fragment", [
    (["train", "--lr", "-1"], 2, "--lr: expected a number > 0"),
    (["train", "--momentum", "1"], 2, "--momentum: expected a number in [0, 1)"),
    (["train", "--layers", "784,x,10"], 2, "comma-separated integers"),
    (["train", "--layers", "784,30,9"], 2, "784 inputs first and 10 outputs last"),
    (["train", "--hidden", "5", "--layers", "784,10"], 2, "not allowed with"),
    (["train", "--activation", "gelu"], 2, "invalid choice: 'gelu'"),
    (["train", "--resume"], 2, "--resume needs --checkpoint"),
    (["train", "--optimizer", "adam", "--momentum", "0.5"], 2, "--momentum applies to --optimizer sgd"),
    (["train", "--backend", "nope", "--limit", "10"], 2, "unknown backend 'nope'; known: cupy, numba, numpy"),
    (["train", "--backend", "numpy", "--threads", "2"], 1, "--threads applies to the numba backend"),
    (["train", "--save", "/no/such/folder/m.npz"], 1, "the folder /no/such/folder does not exist"),
    (["train", "--plot", "curves"], 2, "--plot: expected a .png file name, got 'curves'"),
    (["evaluate", "m.npz", "--plot", "eval"], 2, "--plot: expected a .png file name, got 'eval'"),
    (["evaluate", "/no/such/model.npz", "--plot", "/no/such/folder/e.png"], 1,  # checked first
     "--plot /no/such/folder/e.png: the folder /no/such/folder does not exist"),
    (["train", "--data", "/no/such/folder"], 1, "--data /no/such/folder: not a folder"),
    (["train", "--data", "sample", "--download"], 1, "--download goes with --data mnist"),
    (["evaluate", "/no/such/model.npz", "--backend", "numpy"], 1, "model file not found: /no/such/model.npz"),
    (["bogus"], 2, "invalid choice: 'bogus'"),
    ([], 2, "choose a command"),
])
def test_errors_are_one_line(capsys, args, status, fragment):
    code, out, err = run_main(capsys, *args)
    assert code == status
    assert len(err.strip().splitlines()) == 1 and fragment in err, err


def test_an_unwritable_plot_folder_is_said_before_any_work(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(cli.os, "access", lambda path, mode: False)  # as root, every folder is writable
    for command in (["train"], ["evaluate", "/no/such/model.npz"]):
        code, out, err = run_main(capsys, *command, "--plot", tmp_path / "f.png", "--backend", "numpy")
        assert code == 1 and out == "" and len(err.splitlines()) == 1
        assert f"--plot {tmp_path / 'f.png'}: cannot write in the folder {tmp_path}" in err


@pytest.mark.parametrize("flag, name", [("--save", "m.npz"), ("--checkpoint", "c.npz"), ("--plot", "p.png")])
def test_an_output_under_a_regular_file_is_refused_before_any_epoch(capsys, tmp_path, flag, name):
    """Unwritable as root too: no folder can be made under a file."""
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "sub" / name
    code, out, err = run_main(capsys, "train", flag, path, "--backend", "numpy", "--epochs", 1, "--limit", 50)
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1  # nothing read, nothing trained
    assert f"{flag} {path}: {tmp_path / 'file'} is a file, not a folder" in err
    assert ".fastnn-" not in err and not (tmp_path / "file").is_dir()


def test_a_folder_that_refuses_files_is_found_by_trying(capsys, tmp_path, monkeypatch):
    """Permissions can say yes where the file system says no (a read-only mount, as root): a file
    is made and removed there first."""
    import errno

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr("fastnn.cli_common.tempfile.TemporaryFile", read_only)
    code, out, err = run_main(capsys, "train", "--save", tmp_path / "m.npz", "--backend", "numpy")
    assert code == 1 and out == ""
    assert f"--save {tmp_path / 'm.npz'}: cannot write in the folder {tmp_path} (Read-only file system)" in err


def _read_only_mount_works():
    if not shutil.which("unshare") or sys.platform != "linux":
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount --bind -o ro /tmp /tmp"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _read_only_mount_works(), reason="no user namespace for a read-only bind mount here")
def test_a_read_only_mount_is_refused_before_training(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    script = (f"mount --bind -o ro {out} {out} && exec {sys.executable} -m fastnn train --backend numpy "
              f"--epochs 1 --limit 50 --save {out / 'm.npz'}")
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert_one_line_error(result, 1, f"--save {out / 'm.npz'}: cannot write in the folder {out} "
                                     f"(Read-only file system)")
    assert result.stdout == "" and list(out.iterdir()) == []


@pytest.mark.parametrize("args, status, fragment", [
    (["--layers", "784,100000000000,10"], 2,
     "--layers 784,100000000000,10: a network of 79,500,000,000,010 weights and biases needs about"),
    (["--hidden", "30", "--hidden", "10000000000000"], 2, "--hidden 30,10000000000000: a network of"),
    (["--hidden", "3000000"], 1, "--hidden 3000000: a network of 2,385,000,010 weights and biases needs about"),
])
def test_absurd_sizes_are_one_line_before_anything_is_allocated(capsys, monkeypatch, args, status, fragment):
    monkeypatch.setattr("fastnn.cli_memory.available_memory",
                        lambda: 8_000_000_000)  # the same answer on every machine
    monkeypatch.setattr("fastnn.cli_train.build_network", lambda *a, **k: pytest.fail("the network was built"))
    code, out, err = run_main(capsys, "train", *args, "--backend", "numpy")
    assert code == status and out == "" and len(err.strip().splitlines()) == 1
    assert fragment in err
    assert ("this machine has 8.0 GB available" in err) == (status == 1)


def test_the_memory_estimate():
    from fastnn.optim import SGD, Adam

    default = cli.training_bytes([784, 100, 10], 16, SGD(0.3), 4_000, 1_000)
    assert cli.BASE_BYTES < default < 300_000_000
    # measured peaks (maxrss) of these runs on the sample, numpy backend: 7.58 GB and 3.23 GB
    wide = cli.training_bytes([784, 300_000, 10], 16, SGD(0.3), 100, 1_000)
    assert 7.58e9 <= wide <= 1.1 * 7.58e9
    adam = cli.training_bytes([784, 100_000, 10], 16, Adam(), 100, 1_000)
    assert 3.23e9 <= adam <= 1.1 * 3.23e9
    free = cli.available_memory()
    assert free is None or (isinstance(free, int) and free >= 0)


def test_unavailable_backend_is_one_line(capsys):
    unavailable = [n for n, (ok, _) in fastnn.available_backends().items() if not ok]
    if not unavailable:
        pytest.skip("every backend is available here")
    code, _, err = run_main(capsys, "train", "--backend", unavailable[0], "--limit", "10")
    assert code == 1 and "is unavailable" in err and len(err.strip().splitlines()) == 1


def test_full_mnist_missing_says_where(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("FASTNN_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    code, _, err = run_main(capsys, "train", "--data", "mnist", "--backend", "numpy")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert str(tmp_path / ".cache" / "fastnn") in err and "--data sample" in err


def test_model_of_the_wrong_shape(capsys, tmp_path):
    net = fastnn.Sequential(fastnn.Dense(4, 3), backend="numpy")
    net.save(tmp_path / "small.npz")
    code, _, err = run_main(capsys, "evaluate", tmp_path / "small.npz", "--backend", "numpy")
    assert code == 1 and "takes 4 inputs and gives 3 outputs; MNIST needs 784 and 10" in err


def test_bad_predict_inputs(capsys, trained, tmp_path):
    model, _ = trained
    np.save(tmp_path / "wide.npy", np.zeros((2, 785)))
    np.save(tmp_path / "big.npy", np.full(784, 300.0))
    (tmp_path / "text.png").write_text("hello")
    os.mkfifo(tmp_path / "pipe.npy")  # would block np.load: refused before reading
    for path, fragment in [(tmp_path / "wide.npy", "shape (2, 785)"), (tmp_path / "big.npy", "0-255 or 0-1"),
                           (tmp_path / "missing.npy", "no such file"), (tmp_path / "pipe.npy", "not a regular file"),
                           (tmp_path, "not a regular file")]:
        code, _, err = run_main(capsys, "predict", model, path, "--backend", "numpy")
        assert code == 1 and fragment in err and len(err.strip().splitlines()) == 1
    if has_module("PIL"):
        code, _, err = run_main(capsys, "predict", model, tmp_path / "text.png", "--backend", "numpy")
        assert code == 1 and "not an image Pillow can read" in err


def test_missing_matplotlib_is_one_line_before_training(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    code, out, err = run_main(capsys, "train", "--plot", tmp_path / "c.png", "--backend", "numpy")
    assert code == 1 and "pip install 'fastnn[plot]'" in err and len(err.strip().splitlines()) == 1
    assert out == ""  # refused before loading data or training


def test_missing_pillow_is_one_line(capsys, trained, tmp_path, monkeypatch):
    model, _ = trained
    (tmp_path / "d.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    monkeypatch.setitem(sys.modules, "PIL", None)
    code, _, err = run_main(capsys, "predict", model, tmp_path / "d.png", "--backend", "numpy")
    assert code == 1 and "pip install 'fastnn[image]'" in err


@pytest.mark.skipif(shutil.which("fastnn") is None, reason="the fastnn console script is not on PATH")
def test_console_script():
    result = subprocess.run(["fastnn", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"fastnn {fastnn.__version__}"


def test_progress_bar_on_a_terminal(monkeypatch, capsys):
    pytest.importorskip("tqdm", reason="tqdm is not installed (pip install 'fastnn[progress]')")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    progress = cli._Progress(epochs=2, n_samples=100, quiet=False)
    assert progress.bar is not None
    for epoch in (1, 2):
        progress(epoch, {"loss": 0.5, "accuracy": 0.8, "val_loss": 0.6, "val_accuracy": 0.75, "seconds": 0.1})
    progress.close()
    lines = capsys.readouterr().out.splitlines()
    assert [EPOCH_LINE.match(line).group(1) for line in lines] == ["1", "2"]
    assert "2/2" in terminal.getvalue()  # the bar reached the last epoch
    quiet = cli._Progress(epochs=2, n_samples=100, quiet=True)
    assert quiet.bar is None


def test_warmup_compiles_the_numba_kernels(capsys, monkeypatch):
    available, reason = fastnn.available_backends()["numba"]
    if not available:
        pytest.skip(f"backend 'numba' unavailable: {reason}")
    from fastnn.backends.numba import backend as numba_backend
    calls = []
    real = numba_backend.NumbaBackend.warmup
    monkeypatch.setattr(numba_backend.NumbaBackend, "warmup",
                        lambda self, *a: calls.append(self) or real(self, *a))
    from fastnn.backends.numba import kernels
    products = []

    class Recorder:  # the product kernels warmup calls, by dtype (the tiny models never reach them)
        def __getattr__(self, name):
            kernel = getattr(kernels, name)
            if name not in ("gemm_tiles", "gemm_tiles_parallel", "blas_gemm"):
                return kernel
            return lambda *args: (products.append((name, str(args[0].dtype))), kernel(*args))[1]

    monkeypatch.setattr(numba_backend, "_kernels", Recorder())
    status, out, _ = run_main(capsys, "warmup")
    assert status == 0 and calls and out.startswith("numba backend ready in ")
    assert {(name, dtype) for name in ("gemm_tiles", "gemm_tiles_parallel", "blas_gemm")
            for dtype in ("float32", "float64")} <= set(products)


def test_warmup_mpi_also_makes_the_ranks_whole_epoch(capsys, monkeypatch):
    available, reason = fastnn.available_backends()["numba"]
    if not available:
        pytest.skip(f"backend 'numba' unavailable: {reason}")
    from fastnn.backends.numba import backend as numba_backend, cache as numba_cache
    warmed = []
    monkeypatch.setattr(numba_backend.NumbaBackend, "warmup", lambda self, *a: {"epoch": 0.0, "layers": 0.0})
    real = numba_backend.NumbaBackend.warm
    monkeypatch.setattr(numba_backend.NumbaBackend, "warm",
                        lambda self, part, dtype: warmed.append((part, dtype)) or real(self, part, dtype))
    assert run_main(capsys, "warmup")[0] == 0 and warmed == []  # a one-process install: not needed
    status, out, _ = run_main(capsys, "warmup", "--mpi")
    assert status == 0 and out.startswith("numba backend ready in ")
    assert warmed == [(numba_cache.RANKS, "float32"), (numba_cache.RANKS, "float64")]
    assert all(numba_cache.is_cached(numba_cache.RANKS, dtype) or not numba_cache.cacheable(numba_cache.RANKS)
               for dtype in ("float32", "float64"))


def test_warmup_without_numba_is_one_clear_line(capsys, monkeypatch):
    monkeypatch.setitem(fastnn.selection._BUILTIN, "numba", "fastnn_no_such_module_for_tests:NumbaBackend")
    monkeypatch.setattr(fastnn.selection, "_instances", {})
    status, _, err = run_main(capsys, "warmup")
    assert status != 0 and "pip install 'fastnn[numba]'" in err and "Traceback" not in err
