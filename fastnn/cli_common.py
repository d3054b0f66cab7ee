"""What the ``fastnn`` commands share: defaults, the one-line error, reading the data, the
backend and a model, describing a network, checking an output path before a long run."""
from __future__ import annotations

import os
import sys
import tempfile

#: What ``fastnn train`` does without options. Plain SGD at lr 0.3: as accurate on the sample as
#: momentum, and no default to undo for Nielsen's runs.
DEFAULTS = dict(hidden=[100], activation="relu", loss="cross_entropy", epochs=10, batch_size=16,
                lr_sgd=0.3, lr_adam=0.001, momentum=0.0, seed=0, backend=None, data="sample")
#: What the output lines call each ``--loss``: the words of Nielsen's book, not the flag's (ASCII
#: only: a redirected stdout may not take more).
LOSS_TEXT = {"mse": "quadratic (mse) loss", "cross_entropy": "cross-entropy loss",
             "binary_cross_entropy": "cross-entropy loss"}
N_PIXELS, N_CLASSES = 784, 10


class CLIError(Exception):
    """A problem the user can fix, reported as one line."""


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
    """``"the numba backend (up to 2 threads)"``: as many as the work pays for, said by fit's own line."""
    threads = getattr(backend, "num_threads", None)
    return f"the {backend.name} backend" + (f" (up to {threads} thread{'s' * (threads != 1)})" if threads else "")


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


def _load_model(args):
    from .io import load

    net = load(args.model, backend=_backend(args))
    if net.n_in != N_PIXELS or net.n_out != N_CLASSES:
        raise CLIError(f"{args.model}: the model takes {net.n_in} inputs and gives {net.n_out} outputs; "
                       f"MNIST needs {N_PIXELS} and {N_CLASSES}")
    return net
