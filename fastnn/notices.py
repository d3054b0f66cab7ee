"""What fastnn tells a user who waits: the ``"fastnn"`` logger, shown when they asked for output.

Backends say what they do (compiling kernels, which path trains) through ``logger.info``.
``fit(verbose=1)`` and the ``fastnn`` command show those lines on stderr; a program that
configures :mod:`logging` itself sees them as any other library's.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time

logger = logging.getLogger("fastnn")


@contextlib.contextmanager
def shown(verbose, stream=None):
    """Inside, the logger's INFO lines reach ``stream`` (default stderr) when ``verbose``, unless a
    handler of the program's already takes them (then nothing is added: no line twice)."""
    if not verbose or logger.hasHandlers() and logger.isEnabledFor(logging.INFO):
        yield
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # a root handler added later must not print it a second time
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


@contextlib.contextmanager
def waiting(message, after=0.5, every=3.0):
    """Log ``message`` once if the block is still running ``after`` seconds on, then a short
    "still at it" line every ``every`` seconds: a wait that turns out short (kernels loaded
    from the disk cache) stays silent, and a compile never leaves the screen still for long.
    Nobody to tell (the logger's INFO lines go nowhere): no thread either."""
    if not logger.isEnabledFor(logging.INFO):
        yield
        return
    done = threading.Event()

    def tell():
        started = time.monotonic()
        if done.wait(after):
            return
        logger.info(message)
        while not done.wait(every):
            logger.info(f"  ... still at it, {time.monotonic() - started:.0f} s so far")

    teller = threading.Thread(target=tell, daemon=True, name="fastnn-notice")
    teller.start()
    try:
        yield
    finally:
        done.set()
        teller.join()
