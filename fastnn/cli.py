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
import math
import os
import sys
import warnings

# each command lives in its own module; what this module held before they moved out stays
# importable from here (the tests use some of it)
from .cli_common import DEFAULTS, LOSS_TEXT, N_CLASSES, N_PIXELS, CLIError, _interrupted  # noqa: F401
from .cli_evaluate import cmd_evaluate, confusion  # noqa: F401
from .cli_info import cmd_info, cmd_warmup
from .cli_memory import (BASE_BYTES, DATA_ROWS, EVAL_ROWS, MAX_TRAIN_BYTES, available_memory,  # noqa: F401
                         training_bytes)
from .cli_predict import cmd_predict
from .cli_train import (AUTO_INIT, INIT_TEXT, _layer_sizes, _optimizer, _Progress, build_network,  # noqa: F401
                        cmd_train)


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
    from .selection import _split, backend_names

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
    p.add_argument("--mpi", action="store_true",
                   help="also the whole epoch of MPI ranks on one machine (fit(comm=...); ~11 s per dtype)")
    p.set_defaults(run=cmd_warmup, error=p.error)
    return parser


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
