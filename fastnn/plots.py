"""PNG figures for the ``fastnn`` command: training curves; a confusion matrix beside misclassified digits.

>>> from fastnn import plots
>>> plots.training_curves(history, "curves.png")      # loss and accuracy, train vs test
>>> plots.evaluation(matrix, X, y, predicted, "eval.png")   # confusion matrix and mistakes

matplotlib is an optional extra (``pip install 'fastnn[plot]'``); without it
every function raises ``ImportError`` with that advice. Figures are drawn
without pyplot (no GUI, no global state) and written atomically.
"""
from __future__ import annotations

import numpy as np

from .files import atomic_writer


def _figure(**kwargs):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'fastnn[plot]' (or pip install matplotlib)") \
            from None
    return Figure(**kwargs)


def require_matplotlib():
    """Raise the ``ImportError`` the plots would, now (before a long training run)."""
    _figure()


def _save(fig, path):
    with atomic_writer(path) as f:
        fig.savefig(f, format="png", dpi=100)


def training_curves(history, path, title=None):
    """Loss and accuracy per epoch, training vs test (``val_*``), side by side, to ``path`` (a
    regression, which has no accuracy: its loss alone)."""
    h = history.history if hasattr(history, "history") else history
    epochs = h["epoch"]
    has_accuracy = "accuracy" in h
    fig = _figure(figsize=(10, 4) if has_accuracy else (5, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2) if has_accuracy else (fig.subplots(1, 1), None)
    loss_ax.plot(epochs, h["loss"], "o-", label="train")
    if "val_loss" in h:
        loss_ax.plot(epochs, h["val_loss"], "s-", label="test")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    if has_accuracy:
        acc_ax.plot(epochs, 100 * np.asarray(h["accuracy"]), "o-", label="train")
        if "val_accuracy" in h:
            acc_ax.plot(epochs, 100 * np.asarray(h["val_accuracy"]), "s-", label="test")
            best = int(np.argmax(h["val_accuracy"]))
            acc_ax.axvline(epochs[best], color="grey", linestyle=":",
                           label=f"best test: {100 * h['val_accuracy'][best]:.2f}% (epoch {epochs[best]})")
        acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (loss_ax, acc_ax) if has_accuracy else (loss_ax,):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def evaluation(matrix, X, y_true, y_pred, path, title=None, limit=36):
    """One figure to ``path``: the confusion matrix (``matrix[true, predicted]`` counts) on the
    left, up to ``limit`` misclassified 28x28 digits of ``X``, each titled "true -> predicted", on
    the right: what ``fastnn evaluate --plot`` writes."""
    fig = _figure(figsize=(14, 6.5), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1, 1.15])
    _confusion_panel(left, np.asarray(matrix))
    _misclassified_panel(right, X, np.asarray(y_true), np.asarray(y_pred), limit)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def _confusion_panel(fig, matrix):
    """A heat map with the counts written in."""
    n = matrix.shape[0]
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    threshold = matrix.max() / 2
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if matrix[i, j] > threshold else "black")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true",
           title="confusion matrix (rows: true digit)")


def _misclassified_panel(fig, X, y_true, y_pred, limit):
    """A grid of the first ``limit`` misclassified digits (6 columns)."""
    wrong = np.flatnonzero(y_true != y_pred)
    shown = wrong[:limit]
    columns = 6
    rows = max(1, -(-limit // columns))  # a fixed grid: the digits keep their size
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, i in zip(axes, shown):
        ax.imshow(np.asarray(X[i]).reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"{y_true[i]} \u2192 {y_pred[i]}", fontsize=10)
    fig.suptitle(f"misclassified: {len(shown)} of {len(wrong)} shown (true \u2192 predicted)"
                 if len(wrong) else "no misclassified digits")
