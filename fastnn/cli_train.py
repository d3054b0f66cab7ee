"""``fastnn train``: build the network of the command line, train it with a line per epoch, keep
what Ctrl-C leaves, save the model, checkpoint and curves."""
from __future__ import annotations

import os
import sys

import numpy as np

from .cli_common import (DEFAULTS, N_CLASSES, N_PIXELS, _backend, _backend_text, _check_output_path,
                         _describe_net, _interrupted, _load_data, _say)
from .cli_memory import _check_size

#: ``--init auto``: He for ReLU; LeCun (N(0, 1/n_in), Nielsen's network2) for sigmoid and tanh.
AUTO_INIT = {"relu": "he_normal", "sigmoid": "lecun_normal", "tanh": "lecun_normal"}
#: What the output lines call each ``--init`` (Nielsen's words, ASCII only, as ``LOSS_TEXT``).
INIT_TEXT = {"normal": "weights and biases random, Gaussian with standard deviation 1",
             "lecun_normal": "weights random, Gaussian with standard deviation 1/sqrt(inputs); biases 0",
             "he_normal": "weights random, Gaussian with standard deviation sqrt(2/inputs); biases 0",
             "glorot_uniform": "weights random, uniform in +-sqrt(6/(inputs+outputs)); biases 0"}


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
    text = f"{type(opt).__name__}, learning rate {opt.lr:g}"
    if getattr(opt, "momentum", 0.0):
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
