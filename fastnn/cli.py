"""The ``fastnn`` command (also ``python -m fastnn``): train, evaluate, predict, info, warmup.

    fastnn train                                   # 784-100-10 ReLU on the bundled MNIST sample
    fastnn train --layers 784,30,10 --activation sigmoid --loss mse \\
                 --epochs 30 --batch-size 10 --lr 3.0 --init normal    # Nielsen's network.py
    fastnn evaluate model.npz --plot eval.png      # accuracy, per digit, confusion matrix
    fastnn predict model.npz digit.png             # any picture of a digit
    fastnn info                                    # versions, backends, threads, GPU

Errors are one line on stderr: exit status 2 for a bad command line, 1 for
anything else (missing or corrupt file, unavailable backend, ...). Ctrl-C is one
line too (what was kept or saved) and exit status 130, as shells expect. A
warning is one line too ("fastnn train: warning: ..."), once.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import sys
import tempfile
import warnings

import numpy as np

#: What ``fastnn train`` does without options (measured: see ``fastnn train --help``).
# Plain SGD (no momentum) at lr 0.3, batch 16: 95.6% mean test accuracy over seeds 0-4 on the
# sample, as good as momentum 0.9 at lr 0.05 (95.5%) and with no default to undo for Nielsen's runs.
DEFAULTS = dict(hidden=[100], activation="relu", loss="cross_entropy", epochs=10, batch_size=16,
                lr_sgd=0.3, lr_adam=0.001, momentum=0.0, seed=0, backend=None, data="sample")
#: ``--init auto``: He for ReLU; LeCun (N(0, 1/n_in), Nielsen's network2) for sigmoid and tanh.
AUTO_INIT = {"relu": "he_normal", "sigmoid": "lecun_normal", "tanh": "lecun_normal"}
#: What the output lines call each ``--loss`` and ``--init``: the words of Nielsen's book, not the
#: flag's (ASCII only: a redirected stdout may not take more).
LOSS_TEXT = {"mse": "quadratic (mse) loss", "cross_entropy": "cross-entropy loss",
             "binary_cross_entropy": "cross-entropy loss"}
INIT_TEXT = {"normal": "weights and biases random, Gaussian with standard deviation 1",
             "lecun_normal": "weights random, Gaussian with standard deviation 1/sqrt(inputs); biases 0",
             "he_normal": "weights random, Gaussian with standard deviation sqrt(2/inputs); biases 0",
             "glorot_uniform": "weights random, uniform in +-sqrt(6/(inputs+outputs)); biases 0"}
N_PIXELS, N_CLASSES = 784, 10
#: ``fastnn train`` refuses, on any machine, a network that needs more memory than this to train.
MAX_TRAIN_BYTES = 1 << 40
#: What a process takes before any network: Python, NumPy, a backend (numba's is the largest).
BASE_BYTES = 200_000_000
#: Rows per batch of an evaluation (``Sequential.evaluate``'s default): the train and test accuracy.
EVAL_ROWS = 4096
#: Images in the training and the test set of --data (sample, else the full MNIST).
DATA_ROWS = {"sample": (4_000, 1_000), "mnist": (60_000, 10_000)}


class CLIError(Exception):
    """A problem the user can fix, reported as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr (exit status 2), not usage + error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---- argument types: a bad value is argparse's one-line error ---------------------
def _number(text, kind, ok, what):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text):
    return _number(text, int, lambda v: v >= 1, "an integer >= 1")


def non_negative_int(text):
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text):
    return _number(text, float, lambda v: math.isfinite(v) and v > 0, "a number > 0")


def non_negative_float(text):
    return _number(text, float, lambda v: math.isfinite(v) and v >= 0, "a number >= 0")


def momentum_value(text):
    return _number(text, float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def png_path(text):
    """``--plot``: a file name ending in .png (every command writes one PNG file)."""
    if not text.lower().endswith(".png"):
        raise argparse.ArgumentTypeError(f"expected a .png file name, got {text!r}")
    return text


def int_list(text):
    """``"784,30,10"`` -> ``[784, 30, 10]`` (each >= 1)."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 784,30,10, "
                                         f"got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"layer sizes must be >= 1, got {text!r}")
    return values


# ---- the parser -------------------------------------------------------------------
def _add_data_options(p, what):
    p.add_argument("--data", default=DEFAULTS["data"], metavar="sample|mnist|PATH",
                   help=f"{what}: 'sample' (the bundled 5,000-image MNIST sample, 4,000 train / 1,000 "
                        f"test; the default), 'mnist' (the full 60,000 / 10,000 IDX files from "
                        f"$FASTNN_DATA or ~/.cache/fastnn) or a folder holding the IDX files")
    p.add_argument("--download", action="store_true",
                   help="with --data mnist|PATH: download the IDX files there if missing (SHA-256 checked)")


def backend_name(text):
    """A name ``fastnn.get_backend`` knows (``cupy:1`` included); whether it runs here is checked later."""
    from .backend import _split, backend_names

    try:
        base = _split(text)[0]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if base not in backend_names():
        raise argparse.ArgumentTypeError(f"unknown backend {text!r}; known: {', '.join(backend_names())}")
    return text


def _add_backend_option(p):
    p.add_argument("--backend", type=backend_name, default=DEFAULTS["backend"], metavar="numpy|numba|cupy|auto",
                   help="where to compute (default: $FASTNN_BACKEND if set, else auto: numba where it is "
                        "installed, else numpy; the GPU backend, cupy, only when named)")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="numba backend: how many threads (default: NUMBA_NUM_THREADS, all cores)")


def _train_parser(sub):
    from .layers import INITIALIZERS

    p = sub.add_parser("train", help="train an MLP on MNIST", description=(
        "Train a multi-layer perceptron on MNIST; prints a line per epoch (loss, train and test "
        "accuracy, time, samples/s) and the best epoch. Defaults: 784-100-10 ReLU, softmax "
        "cross-entropy, SGD lr 0.3, batch 16, 10 epochs, seed 0: about 95.5% test accuracy "
        "on the bundled sample in a few seconds."))
    _add_data_options(p, "training data")
    _add_backend_option(p)
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--layers", type=int_list, metavar="784,H,...,10",
                       help="all layer widths, input to output (input 784, output 10)")
    shape.add_argument("--hidden", type=int_list, action="append", metavar="H[,H...]",
                       help="hidden layer widths (repeat or comma list; default 100)")
    p.add_argument("--activation", choices=("sigmoid", "relu", "tanh"), default=DEFAULTS["activation"],
                   help="hidden-layer activation (default: relu)")
    p.add_argument("--loss", choices=("mse", "cross_entropy", "binary_cross_entropy"),
                   default=DEFAULTS["loss"], help="mse: sigmoid outputs (Nielsen's network.py); "
                   "cross_entropy: softmax on logits; binary_cross_entropy: sigmoid per output "
                   "(network2) (default: cross_entropy)")
    p.add_argument("--epochs", type=positive_int, default=DEFAULTS["epochs"], help="default: 10")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS["batch_size"], help="default: 16")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="default: sgd")
    p.add_argument("--lr", type=positive_float, help="learning rate (default: 0.3 for sgd, 0.001 for adam)")
    p.add_argument("--momentum", type=momentum_value,
                   help="sgd momentum: v = momentum*v + grad, w -= lr*v (default: 0)")
    p.add_argument("--weight-decay", type=non_negative_float, default=0.0,
                   help="L2 on weights: w -= lr*(grad + weight_decay*w); Nielsen's lmbda/n (default: 0)")
    p.add_argument("--init", choices=("auto", *INITIALIZERS), default="auto",
                   help="weight initialisation (auto: he_normal for relu, lecun_normal otherwise)")
    p.add_argument("--seed", type=non_negative_int, default=DEFAULTS["seed"],
                   help="initial weights and batch order (default: 0)")
    p.add_argument("--limit", type=positive_int, metavar="N",
                   help="train on the first N training images only (quick runs)")
    p.add_argument("--save", metavar="MODEL.npz", help="write the trained model here")
    p.add_argument("--checkpoint", metavar="CKPT.npz", help="save a checkpoint here after every epoch")
    p.add_argument("--resume", action="store_true",
                   help="continue from --checkpoint (or, without it, from --save) up to --epochs")
    p.add_argument("--plot", type=png_path, metavar="CURVES.png",
                   help="write loss and accuracy curves to this PNG file (needs matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    p.set_defaults(run=cmd_train, error=p.error)


def build_parser():
    from . import __version__

    parser = _Parser(prog="fastnn", description="Neural networks from first principles: train, "
                     "evaluate and use MLPs on MNIST with NumPy, Numba or CuPy backends.")
    parser.add_argument("--version", action="version", version=f"fastnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _train_parser(sub)

    p = sub.add_parser("evaluate", help="accuracy, per-digit accuracy and confusion matrix of a model",
                       description="Evaluate a saved model on the test set of --data.")
    p.add_argument("model", help="a model file written by fastnn train --save (or net.save)")
    _add_data_options(p, "test data")
    _add_backend_option(p)
    p.add_argument("--plot", type=png_path, metavar="FIGURE.png",
                   help="write one PNG file: the confusion matrix beside up to 36 misclassified "
                        "digits (needs matplotlib)")
    p.set_defaults(run=cmd_evaluate, error=p.error)

    p = sub.add_parser("predict", help="the digit in an image (.png, .jpg, ...) or a .npy array",
                       description="Predict digits. A picture of any size is converted to a 28x28 "
                       "MNIST-style image (needs Pillow); a .npy holds one MNIST-format image (784 or 28x28 "
                       "values) or several (N x 784 or N x 28 x 28), grey levels 0-255 or 0-1.")
    p.add_argument("model", help="a model file written by fastnn train --save")
    p.add_argument("inputs", nargs="+", metavar="image.png|file.npy")
    _add_backend_option(p)
    p.set_defaults(run=cmd_predict, error=p.error)

    p = sub.add_parser("info", help="versions, backends (available or why not), threads, BLAS, GPU",
                       description="Show fastnn's version, Python, NumPy and every backend.")
    p.set_defaults(run=cmd_info, error=p.error)

    p = sub.add_parser("warmup", help="compile the numba kernels now (once per install)",
                       description="Compile the numba backend's kernels (or load them from numba's disk "
                                   "cache) so that the first fit of every later process starts at once.")
    p.set_defaults(run=cmd_warmup, error=p.error)
    return parser


# ---- shared pieces ----------------------------------------------------------------
def _say(text=""):
    print(text, flush=True)


def _load_data(args):
    """``(MNISTSplit, description)`` for ``--data``."""
    from . import datasets

    def log(text):
        print(text, file=sys.stderr, flush=True)

    if args.data == "sample":
        if args.download:
            raise CLIError("--download goes with --data mnist or --data PATH; the sample ships with fastnn")
        return datasets.load_mnist_sample(), "MNIST sample (bundled)"
    path = None if args.data == "mnist" else args.data
    if path is not None and not os.path.isdir(os.path.expanduser(path)) and not args.download:
        raise CLIError(f"--data {path}: not a folder (expected sample, mnist, or a folder with the "
                       f"MNIST IDX files)")
    data = datasets.load_mnist(path, download=args.download, log=log)
    return data, "MNIST" + (f" from {path}" if path else "")


def _backend(args):
    """The backend of ``--backend``/``--threads`` (auto resolved first, so --threads reaches numba)."""
    from .backend import get_backend

    name = get_backend(args.backend).name
    if args.threads is None:
        return get_backend(name)
    if name != "numba":
        raise CLIError(f"--threads applies to the numba backend; this run uses {name!r}")
    return get_backend("numba", num_threads=args.threads)


def _backend_text(backend):
    """``"the numba backend (2 threads)"``."""
    threads = getattr(backend, "num_threads", None)
    return f"the {backend.name} backend" + (f" ({threads} thread{'s' * (threads != 1)})" if threads else "")


def _describe_net(net, loss=None):
    """``"784-100-10 (relu hidden layer), softmax output, cross-entropy loss"`` for a Sequential."""
    from .layers import Activation, Softmax

    sizes = "-".join(map(str, [net.n_in] + [layer.n_out for layer in net.dense_layers]))
    n_hidden = len(net.dense_layers) - 1
    acts = "/".join(sorted({layer.act for layer in net.layers[:-1] if isinstance(layer, Activation)}))
    hidden = f"{acts or 'linear'} hidden layer{'s' * (n_hidden > 1)}" if n_hidden else "no hidden layer"
    last = net.layers[-1]
    if isinstance(last, Softmax):
        output = "softmax"
    elif isinstance(last, Activation):
        output = last.act
    else:  # a last Dense: the loss applies its activation (softmax for cross-entropy), if any
        output = (loss.output_activation if loss is not None else None) or "linear"
    text = f"{sizes} ({hidden}), {output} output"
    if loss is not None:
        text += ", " + LOSS_TEXT.get(loss.name, f"{loss.name or type(loss).__name__} loss")
    return text


def _check_output_path(flag, path):
    """Fail before a long run, not after it: the folder must exist and take new files (files
    are written beside the target, then renamed over it) and the path must not be a folder.
    A file is made and removed there to be sure: permissions alone miss read-only mounts."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        parent = folder
        while parent != os.path.dirname(parent) and not os.path.lexists(parent):
            parent = os.path.dirname(parent)
        if os.path.lexists(parent) and not os.path.isdir(parent):
            raise CLIError(f"{flag} {path}: {parent} is a file, not a folder")
        raise CLIError(f"{flag} {path}: the folder {folder} does not exist")
    if os.path.isdir(path):
        raise CLIError(f"{flag} {path}: is a folder; give a file name")
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise CLIError(f"{flag} {path}: cannot write in the folder {folder} "
                       f"({exc.strerror or type(exc).__name__})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} {path}: cannot write in the folder {folder} (permission denied)")


def _interrupted(command, what=""):
    """The one line for Ctrl-C, and its exit status (128 + SIGINT, as shells report it)."""
    print(f"fastnn {command}: interrupted (Ctrl-C){what}", file=sys.stderr, flush=True)
    return 130


# ---- train -------------------------------------------------------------------------
def _layer_sizes(args, parser_error):
    if args.layers:
        sizes = args.layers
        if len(sizes) < 2 or sizes[0] != N_PIXELS or sizes[-1] != N_CLASSES:
            parser_error(f"--layers {','.join(map(str, sizes))}: MNIST needs {N_PIXELS} inputs first and "
                         f"{N_CLASSES} outputs last, e.g. {N_PIXELS},30,{N_CLASSES}")
        return sizes
    hidden = [width for group in args.hidden for width in group] if args.hidden else DEFAULTS["hidden"]
    return [N_PIXELS, *hidden, N_CLASSES]


def build_network(sizes, activation, loss, init, backend, seed):
    """The MLP of ``fastnn train``: hidden layers use ``activation``; the output suits ``loss``.

    ``mse``: a Sigmoid output (Nielsen's network.py). ``cross_entropy``: linear
    logits (the loss applies the softmax). ``binary_cross_entropy``: a Sigmoid
    last, which ``fit`` folds into the loss and ``predict_proba`` applies.
    """
    from .layers import Dense, ReLU, Sigmoid, Tanh
    from .model import Sequential

    act = {"sigmoid": Sigmoid, "relu": ReLU, "tanh": Tanh}[activation]
    init = AUTO_INIT[activation] if init == "auto" else init
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Dense(n_in, n_out, init=init))
        if i < len(sizes) - 2:
            layers.append(act())
        elif loss in ("mse", "binary_cross_entropy"):
            layers.append(Sigmoid())
    return Sequential(*layers, backend=backend, seed=seed)


def training_bytes(sizes, batch_size, optimizer, rows, test_rows, itemsize=4):
    """About how many bytes ``fastnn train`` takes at its peak for layer widths ``sizes``: while
    training, each weight and bias with its gradient, optimizer state and the compiled epoch's copies,
    and the activations of a batch or of an evaluation batch; before, the weights with the float64
    draw of the largest layer's initial values (two arrays); the data and the process all along.
    Measured peaks on the sample (784-300000-10 SGD, 784-100000-10 Adam) came within 3% of it on
    numpy, 30% under it on numba."""
    per_layer = [n_in * n_out + n_out for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    slots = 2 if optimizer.kind == "adam" else int(bool(optimizer.momentum))
    eval_rows = min(EVAL_ROWS, max(rows, test_rows))
    activations = max(4 * min(batch_size, rows), 3 * eval_rows) * sum(sizes) * itemsize
    training = sum(per_layer) * itemsize * (4 + slots) + activations
    initialising = sum(per_layer) * itemsize + max(per_layer) * 16
    return max(training, initialising) + (rows + test_rows) * N_PIXELS * (itemsize + 1) + BASE_BYTES


def available_memory():
    """Bytes this process may still take, as the system says (the least of /proc/meminfo's
    MemAvailable and the cgroup's limit less its usage; else free physical pages); None if unknown."""
    found = []
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2, then v1
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        with contextlib.suppress(OSError, ValueError):  # "max": no limit
            with open(limit) as f_limit, open(usage) as f_usage:
                found.append(int(f_limit.read()) - int(f_usage.read()))
    if not found:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return max(0, min(found)) if found else None


def _bytes_text(n):
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n / 1e3:.1f} kB"


def _check_size(args, sizes, optimizer, parser_error):
    """Refuse, in one line and before anything is allocated, a network that cannot fit: exit status 2
    above what any machine is expected to hold, 1 above what this one has available."""
    if args.layers:
        flag = "--layers " + ",".join(map(str, sizes))
    else:
        flag = "--hidden " + ",".join(map(str, sizes[1:-1]))
    rows, test_rows = DATA_ROWS["sample" if args.data == "sample" else "mnist"]
    rows = min(rows, args.limit or rows)
    need = training_bytes(sizes, args.batch_size, optimizer, rows, test_rows)
    n = sum(n_in * n_out + n_out for n_in, n_out in zip(sizes[:-1], sizes[1:]))
    what = f"{flag}: a network of {n:,} weights and biases needs about {_bytes_text(need)} of memory to train"
    if need > MAX_TRAIN_BYTES:
        parser_error(f"{what}; fastnn train takes networks up to {_bytes_text(MAX_TRAIN_BYTES)}")
    free = available_memory()
    if free is not None and need > free:
        raise CLIError(f"{what}, and this machine has {_bytes_text(free)} available")


def _optimizer(args, parser_error):
    from .optim import SGD, Adam

    if args.optimizer == "adam":
        if args.momentum is not None:
            parser_error("--momentum applies to --optimizer sgd (adam has its own moments)")
        return Adam(lr=args.lr or DEFAULTS["lr_adam"], weight_decay=args.weight_decay)
    momentum = DEFAULTS["momentum"] if args.momentum is None else args.momentum
    return SGD(lr=args.lr or DEFAULTS["lr_sgd"], momentum=momentum, weight_decay=args.weight_decay)


def _optimizer_text(opt):
    """``"SGD, learning rate 0.3, momentum 0.9"``."""
    text = f"{'Adam' if opt.kind == 'adam' else 'SGD'}, learning rate {opt.lr:g}"
    if opt.kind != "adam" and opt.momentum:
        text += f", momentum {opt.momentum:g}"
    return text + (f", L2 weight decay {opt.weight_decay:g}" if opt.weight_decay else "")


class _Progress:
    """Per-epoch output: a tqdm bar on a terminal (stderr) and one line per epoch (stdout)."""

    def __init__(self, epochs, n_samples, quiet):
        from .history import History

        self.shown, self.n_samples, self.quiet, self.bar = History(), n_samples, quiet, None
        if not quiet and sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                pass  # tqdm is optional: the per-epoch lines say it all
            else:
                self.bar = tqdm(total=epochs, unit="epoch", file=sys.stderr, leave=False, dynamic_ncols=True)

    def __call__(self, epoch, logs):
        self.shown.append(epoch, logs)
        if self.quiet:
            return
        line = self.shown.line(-1, self.n_samples, val_name="test")
        if self.bar is not None:
            self.bar.update(epoch - self.bar.n)
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", test=f"{logs.get('val_accuracy', 0):.4f}")
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def cmd_train(args, parser_error):
    from . import notices

    from .losses import get_loss

    sizes = _layer_sizes(args, parser_error)
    optimizer = _optimizer(args, parser_error)
    checkpoint = args.checkpoint or (args.save if args.resume else None)
    if args.resume and not checkpoint:
        parser_error("--resume needs --checkpoint PATH (or --save PATH) to continue from")
    _check_size(args, sizes, optimizer, parser_error)
    for flag, path in (("--save", args.save), ("--checkpoint", args.checkpoint), ("--plot", args.plot)):
        if path:
            _check_output_path(flag, path)
    if args.plot:
        from . import plots
        plots.require_matplotlib()

    backend = _backend(args)  # an unusable backend is said before the data is read
    data, data_text = _load_data(args)
    X, y = data.X_train, data.y_train
    if args.limit:
        X, y = X[:args.limit], y[:args.limit]
    net = build_network(sizes, args.activation, args.loss, args.init, backend, args.seed)
    init = AUTO_INIT[args.activation] if args.init == "auto" else args.init
    if not args.quiet:
        _say(f"data: {data_text}: {len(y):,} training / {len(data.y_test):,} test images")
        _say(f"network: {_describe_net(net, get_loss(args.loss))}")
        _say(f"start: {INIT_TEXT.get(init, init)} ({init}); seed {args.seed}")
        _say(f"training: {_optimizer_text(optimizer)}, mini-batches of {args.batch_size}, "
             f"{args.epochs} epoch{'s' * (args.epochs != 1)}, on {_backend_text(backend)}")
        if args.resume:
            _say(f"resuming from {checkpoint}" if os.path.exists(checkpoint)
                 else f"no checkpoint at {checkpoint} yet: starting at epoch 1")

    progress, between_epochs = _Progress(args.epochs, len(y), args.quiet), False
    try:
        # which path trains, and a compile when one makes us wait: progress, as the epoch lines
        with notices.shown(not args.quiet, sys.stdout):
            history = net.fit(X, y, epochs=args.epochs, batch_size=args.batch_size, loss=args.loss,
                              optimizer=optimizer, validation_data=(data.X_test, data.y_test),
                              checkpoint=checkpoint, resume=args.resume, on_epoch_end=progress)
    except KeyboardInterrupt:
        # Ctrl-C outside an epoch (fit handles it inside one), e.g. while an epoch's line is printed:
        # the weights are the last completed epoch's, or untrained before the first epoch ended
        history, between_epochs = progress.shown, True
        history.interrupted = True
    finally:
        progress.close()  # the bar off the terminal before any line is printed

    if args.resume and len(history) and not len(progress.shown) and not history.interrupted:
        _say(f"nothing to train: {checkpoint} already holds {history['epoch'][-1]} epochs "
             f"(--epochs {args.epochs}); raise --epochs to go on")
    _report_training(history, checkpoint)
    written = _write_results(args, net, history, checkpoint)
    if history.interrupted:
        return _interrupted("train", _kept_text(history, between_epochs, args.save, written, checkpoint))
    for line in written:
        _say(line)
    return 0


def _report_training(history, checkpoint):
    """The best epoch (by test accuracy) and where the checkpoint is."""
    if not len(history):
        return
    best = history.best_epoch()
    i = history["epoch"].index(best)
    _say(f"best epoch {best}: test acc {history['val_accuracy'][i]:.4f} "
         f"(last epoch {history['epoch'][-1]}: test acc {history['val_accuracy'][-1]:.4f}, "
         f"median {np.median(history['seconds']):.2f} s per epoch)")
    if checkpoint and not history.interrupted:  # else the Ctrl-C line says it
        _say(f"checkpoint: {checkpoint}")


def _write_results(args, net, history, checkpoint):
    """Save the model (--save) and the curves (--plot) after at least one epoch; returns what was
    written, as lines ("model saved to m.npz")."""
    if not len(history):  # stopped in the first epoch: untrained weights must not replace a saved model
        return []
    written = []
    if args.save:
        if os.path.abspath(args.save) != os.path.abspath(checkpoint or ""):
            net.save(args.save)
        written.append(f"model saved to {args.save}")
    if args.plot:
        from . import plots
        plots.training_curves(history, args.plot, title=_describe_net(net, net.loss))
        written.append(f"curves written to {args.plot}")
    return written


def _kept_text(history, between_epochs, save, written, checkpoint):
    """The rest of the Ctrl-C line: which epoch's weights were kept and what was written."""
    if not len(history):
        return " before the first epoch ended" + (f"; {save} not written" if save else "")
    last = history["epoch"][-1]
    if between_epochs:  # the last epoch shown, or one more whose line had not come yet
        parts = [f" after epoch {last}: kept the weights of the last completed epoch", *written]
    else:
        parts = [f" in epoch {last + 1}: kept the weights of epoch {last}", *written]
    if checkpoint:
        parts.append(f"--resume continues from {checkpoint}")
    return "; ".join(parts)


# ---- evaluate ----------------------------------------------------------------------
def _load_model(args):
    from .io import load

    net = load(args.model, backend=_backend(args))
    if net.n_in != N_PIXELS or net.n_out != N_CLASSES:
        raise CLIError(f"{args.model}: the model takes {net.n_in} inputs and gives {net.n_out} outputs; "
                       f"MNIST needs {N_PIXELS} and {N_CLASSES}")
    return net


def confusion(y_true, y_pred, n=N_CLASSES):
    """``matrix[true, predicted]``: how many images of each digit got each prediction."""
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def _confusion_text(matrix):
    n = matrix.shape[0]
    width = max(4, len(str(matrix.max())) + 1)
    lines = ["confusion matrix (rows: true digit, columns: predicted):",
             "     " + "".join(f"{j:>{width}}" for j in range(n))]
    lines += [f"  {i:>2} " + "".join(f"{v:>{width}}" for v in row) for i, row in enumerate(matrix)]
    return "\n".join(lines)


def cmd_evaluate(args, parser_error):
    if args.plot:
        _check_output_path("--plot", args.plot)
        from . import plots
        plots.require_matplotlib()
    net = _load_model(args)
    data, data_text = _load_data(args)
    X, y = data.X_test, data.y_test
    predicted = net.predict(X)
    matrix = confusion(y, predicted)
    correct = int(np.trace(matrix))
    _say(f"model: {args.model}: {_describe_net(net, net.loss)}, on {_backend_text(net.backend)}")
    _say(f"data: {data_text}, test set: {len(y):,} images")
    loss = f", loss {net.evaluate(X, y)['loss']:.4f}" if net.loss else ""
    _say(f"accuracy: {correct / len(y):.4f} ({correct:,} / {len(y):,}){loss}")
    _say("accuracy per digit:")
    for digit in range(N_CLASSES):
        total = int(matrix[digit].sum())
        rate = f"{matrix[digit, digit] / total:.4f}" if total else "  -   "
        _say(f"  {digit}: {rate} ({matrix[digit, digit]:,} / {total:,})")
    _say(_confusion_text(matrix))
    if args.plot:
        from . import plots
        plots.evaluation(matrix, X, y, predicted, args.plot,
                         title=f"{os.path.basename(args.model)} on {data_text}: accuracy {correct / len(y):.2%}")
        _say(f"figure written to {args.plot}")
    return 0


# ---- predict -----------------------------------------------------------------------
def _npy_images(path):
    """``(names, X (n, 784) float32 in [0, 1])`` from a .npy file."""
    try:
        A = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise CLIError(f"{path}: not a plain .npy array ({exc})") from None
    if not isinstance(A, np.ndarray):
        raise CLIError(f"{path}: holds several arrays (.npz); give a .npy with the images")
    if A.dtype.kind not in "biuf":
        raise CLIError(f"{path}: expected numbers, got dtype {A.dtype}")
    A = A.astype(np.float64)
    if not np.all(np.isfinite(A)):
        raise CLIError(f"{path}: contains NaN or inf")
    if A.shape in ((N_PIXELS,), (28, 28)):
        A = A.reshape(1, N_PIXELS)
    elif A.ndim == 3 and A.shape[1:] == (28, 28):
        A = A.reshape(A.shape[0], N_PIXELS)
    elif not (A.ndim == 2 and A.shape[1] == N_PIXELS):
        raise CLIError(f"{path}: shape {A.shape}; expected (784,), (28, 28), (N, 784) or (N, 28, 28) "
                       f"(a picture of another size: save it as .png)")
    if A.size and (A.min() < 0 or A.max() > 255):
        raise CLIError(f"{path}: values from {A.min():g} to {A.max():g}; expected grey levels 0-255 or 0-1")
    if A.size and A.max() > 1:
        A = A / 255  # grey levels 0-255, as MNIST is stored
    names = [path] if A.shape[0] == 1 else [f"{path}[{i}]" for i in range(A.shape[0])]
    return names, A.astype(np.float32)


def _inputs(paths):
    from .datasets.images import load_digit_image

    names, rows = [], []
    for path in paths:
        if not os.path.exists(path):
            raise CLIError(f"{path}: no such file")
        if not os.path.isfile(path):  # a pipe or device would block the read below
            raise CLIError(f"{path}: not a regular file (a folder, pipe or device); refused without reading it")
        if path.lower().endswith(".npy"):
            more, X = _npy_images(path)
        else:
            more, X = [path], load_digit_image(path).reshape(1, N_PIXELS)
        names += more
        rows.append(X)
    return names, np.concatenate(rows)


def cmd_predict(args, parser_error):
    net = _load_model(args)
    names, X = _inputs(args.inputs)
    P = net.predict_proba(X)
    kind = "probability" if net.loss is not None and net.loss.output_activation else "output"
    for name, p in zip(names, P):
        digit = int(np.argmax(p))
        _say(f"{name}: {digit} ({kind} {p[digit]:.3f})")
        _say("  " + "  ".join(f"{d}:{v:.3f}" for d, v in enumerate(p)))
    return 0


# ---- info --------------------------------------------------------------------------
def _value_text(value):
    if isinstance(value, dict):
        return ", ".join(f"{k} {_value_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "; ".join(_value_text(v) for v in value) if value else "none"
    return str(value)


def _package_version(name):
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def cmd_warmup(args, parser_error):
    from .backend import get_backend

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="numba backend: no writable cache")  # the error below says it
        backend = get_backend("numba")
    from .backends.numba import cache as numba_cache

    reason = numba_cache.uncached_reason()
    if reason:
        raise CLIError(f"nothing would be kept: {reason}")
    seconds = backend.warmup()  # seconds per part (whole-epoch trainer, layer kernels)
    _say(f"numba backend ready in {sum(seconds.values()):.1f} s: its compiled code is cached on disk, "
         f"so later runs start without compiling")
    return 0


def cmd_info(args, parser_error):
    from . import __file__ as package_file, __version__
    from .backend import available_backends, default_backend, get_backend
    from .datasets import mnist

    _say(f"fastnn {__version__} ({os.path.dirname(package_file)})")
    _say(f"Python {platform.python_version()} ({platform.python_implementation()}) on "
         f"{platform.platform()}, {os.cpu_count()} CPUs")
    _say(f"numpy {np.__version__}")
    _say("backends:")
    for name, (available, reason) in available_backends().items():
        if not available:
            _say(f"  {name}: unavailable: {reason}")
            continue
        _say(f"  {name}: available")
        try:
            with warnings.catch_warnings():  # shown below, as the backend's disk_cache
                warnings.filterwarnings("ignore", message="numba backend: no writable cache")
                details = get_backend(name).info()
        except Exception as exc:  # info is diagnostics: show the problem, list the rest
            details = {"info failed": f"{type(exc).__name__}: {exc}"}
        for key, value in details.items():
            if isinstance(value, (list, tuple)) and value and all(isinstance(v, dict) for v in value):
                _say(f"    {key}:")  # e.g. one BLAS library per line
                for item in value:
                    _say(f"      - {_value_text(item)}")
            else:
                _say(f"    {key}: {_value_text(value)}")
    name, why = default_backend()
    _say(f"default backend: {name} ({why}); every entry point (Sequential, fastnn.load, MLPClassifier, "
         f"this command) uses it when no backend is named")
    extras = {"tqdm": "tqdm", "matplotlib": "matplotlib", "Pillow": "pillow", "scikit-learn": "scikit-learn"}
    _say("optional: " + ", ".join(f"{label} {_package_version(dist)}" for label, dist in extras.items()))
    try:
        found = mnist.locate()
        _say(f"full MNIST: found in {os.path.dirname(found['train_images'])}")
    except mnist.MNISTNotFound:
        where = ", ".join(folder for folder, _ in mnist.search_folders())
        _say(f"full MNIST: not found (looked in {where}); the bundled sample is always there")
    return 0


# ---- entry point ---------------------------------------------------------------------
def _one_line(exc):
    return " ".join(str(exc).split()) or type(exc).__name__


def _warning_line(command):
    """``warnings.showwarning`` for the command: one line, without Python's file:line and source line."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"fastnn {command}: warning: {_one_line(message)}", file=sys.stderr, flush=True)
    return show


def main(argv=None):
    """The ``fastnn`` console script; returns the exit status."""
    from .backend import BackendUnavailable
    from .io import ModelFileError
    from .model import TrainingDiverged

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("choose a command: train, evaluate, predict, info or warmup")
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_line(args.command)
            return args.run(args, args.error)
    except KeyboardInterrupt:  # reading data, loading a model, predicting: nothing to keep
        return _interrupted(args.command)
    except BrokenPipeError:  # `fastnn evaluate m.npz | head`: not an error
        sys.stdout = open(os.devnull, "w")
        return 0
    except (CLIError, BackendUnavailable, ModelFileError, TrainingDiverged, ValueError, TypeError,
            OSError, ImportError) as exc:
        print(f"fastnn {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
