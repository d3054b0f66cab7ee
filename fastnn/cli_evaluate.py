"""``fastnn evaluate``: a saved model's accuracy on the test set, its macro F1, accuracy (recall),
precision and F1 per digit, its confusion matrix and, with ``--plot``, a figure of it beside misclassified digits."""
from __future__ import annotations

import os

import numpy as np

from .cli_common import (N_CLASSES, _backend_text, _check_output_path, _describe_net, _load_data,
                         _load_model, _say)
from .metrics import class_scores

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


def _per_digit_text(matrix):
    """Macro F1, then a line per digit: its accuracy (= recall), precision and F1, from the
    confusion matrix (the numbers ``evaluate(metrics=[...])`` gives, without another pass)."""
    hits, total, predicted = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    precision, _, f1 = class_scores(hits, total, predicted)
    seen = total + predicted > 0  # macro F1 over the digits that occur, as metrics.py averages
    lines = [f"macro F1: {np.mean(f1[seen]):.4f} (the mean of the digits' F1 below)",
             "accuracy per digit (recall), precision and F1:"]
    counts = [f"({hits[d]:,} / {total[d]:,})" for d in range(len(matrix))]
    width = max(map(len, counts))
    for digit, count in enumerate(counts):
        rate = f"{hits[digit] / total[digit]:.4f}" if total[digit] else "  -   "
        lines.append(f"  {digit}: {rate} {count:<{width}}  precision {precision[digit]:.4f}  F1 {f1[digit]:.4f}")
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
    loss = f", loss {net.evaluate(X, y, metrics=['loss'])['loss']:.4f}" if net.loss else ""
    _say(f"accuracy: {correct / len(y):.4f} ({correct:,} / {len(y):,}){loss}")
    _say(_per_digit_text(matrix))
    _say(_confusion_text(matrix))
    if args.plot:
        from . import plots
        plots.evaluation(matrix, X, y, predicted, args.plot,
                         title=f"{os.path.basename(args.model)} on {data_text}: accuracy {correct / len(y):.2%}")
        _say(f"figure written to {args.plot}")
    return 0
