"""``fastnn predict``: the digit in each picture or .npy array given, with the model's probabilities."""
from __future__ import annotations

import os

import numpy as np

from .cli_common import N_PIXELS, CLIError, _load_model, _say

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
