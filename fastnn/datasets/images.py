"""Any picture of a digit -> a 28x28 MNIST-style image, for ``fastnn predict``.

MNIST digits are light on dark, fitted into a 20x20 box keeping their aspect
ratio (grey, anti-aliased edges), and placed in a 28x28 field with their
center of mass at the center. ``mnist_style`` does the same to any grey
image; ``load_digit_image`` reads a file (PNG, JPEG, ...) with Pillow first.

>>> x = load_digit_image("seven.png")     # (28, 28) float32 in [0, 1]
>>> net.predict(x.reshape(1, 784))
"""
from __future__ import annotations

import numpy as np

SIDE = 28   # the MNIST field
BOX = 20    # the digit's bounding box is scaled to fit this square
CENTER = 14.0  # measured: the mean center of mass of the bundled sample is (13.99, 14.01)
INK = 0.15  # a pixel belongs to the digit's bounding box from this much ink (0..1); low enough
            # to keep MNIST's own anti-aliased edges, high enough to ignore faint noise


def _pillow():
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ImportError("reading and resizing images needs Pillow: pip install 'fastnn[image]' "
                          "(or pip install pillow)") from None
    return Image, ImageOps


def _ink(grey):
    """Grey levels (any range) -> ink in [0, 1] on a 0 background, light-on-dark as in MNIST."""
    A = np.asarray(grey, dtype=np.float64)
    lo, hi = float(A.min()), float(A.max())
    if not hi - lo > 1e-9 * max(1.0, abs(hi)):
        raise ValueError("the image is blank (a single grey level): no digit to read")
    A = (A - lo) / (hi - lo)
    border = np.concatenate([A[0], A[-1], A[:, 0], A[:, -1]])
    if np.median(border) > 0.5:  # light paper, dark ink: MNIST is the other way round
        A, border = 1.0 - A, 1.0 - border
    background = float(np.median(border))
    return np.clip((A - background) / (1.0 - background), 0.0, 1.0)


def _fit_box(ink):
    """Crop ``ink`` to the digit's bounding box and scale it to fit BOX x BOX, aspect kept."""
    Image, _ = _pillow()
    rows = np.flatnonzero((ink >= INK).any(axis=1))
    cols = np.flatnonzero((ink >= INK).any(axis=0))
    crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = crop.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # Pillow wants (width, height)
    # BOX averages the covered area when shrinking (anti-aliasing, as MNIST's scanner
    # images were reduced); BILINEAR interpolates when a small image has to grow.
    method = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    small = Image.fromarray(crop.astype(np.float32), mode="F").resize(size, method)
    return np.clip(np.asarray(small, dtype=np.float64), 0.0, 1.0)


def _center(patch):
    """Place ``patch`` in a SIDE x SIDE field with its center of mass at (CENTER, CENTER)."""
    h, w = patch.shape
    total = patch.sum()
    cy = (patch.sum(axis=1) @ np.arange(h)) / total
    cx = (patch.sum(axis=0) @ np.arange(w)) / total
    top = min(max(round(CENTER - cy), 0), SIDE - h)    # shifted, but never cut off
    left = min(max(round(CENTER - cx), 0), SIDE - w)
    field = np.zeros((SIDE, SIDE), dtype=np.float32)
    field[top:top + h, left:left + w] = patch
    return field


def mnist_style(grey):
    """A 2-D grey image of any size (dark-on-light or light-on-dark) -> ``(28, 28)`` float32 in [0, 1].

    Steps: scale the grey levels to [0, 1]; invert when the border (the
    background) is light; subtract the background; crop to the pixels with
    at least ``INK`` ink; fit into 20x20 keeping the aspect ratio; center by
    center of mass in 28x28. Needs Pillow (for the resampling).
    """
    grey = np.asarray(grey)
    if grey.ndim != 2 or min(grey.shape) < 1:
        raise ValueError(f"expected a 2-D grey image, got shape {grey.shape}")
    if grey.dtype.kind not in "biuf" or not np.all(np.isfinite(grey)):
        raise ValueError(f"the image must hold finite numbers, got dtype {grey.dtype}")
    return _center(_fit_box(_ink(grey)))


def load_digit_image(path):
    """The image file ``path`` (PNG, JPEG, ... any size) as a ``(28, 28)`` MNIST-style float32 array.

    A picture with a transparent background (a drawing app's export) uses its
    alpha channel as the ink; otherwise the grey levels (see :func:`mnist_style`).
    """
    Image, ImageOps = _pillow()
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)  # photos: the way the camera was held
            image.load()
    except (Image.UnidentifiedImageError, Image.DecompressionBombError, SyntaxError) as exc:
        raise ValueError(f"{path}: not an image Pillow can read ({exc})") from None
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA"))[:, :, 3]
        if alpha.min() != alpha.max():
            return mnist_style(alpha)
    return mnist_style(np.asarray(image.convert("L")))
