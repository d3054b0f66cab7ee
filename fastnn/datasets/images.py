"""Any picture of a digit -> a 28x28 MNIST-style image, for ``fastnn predict``.

MNIST digits are light on dark, fitted into a 20x20 box keeping their aspect
ratio (grey, anti-aliased edges), and placed in a 28x28 field with their
center of mass at the center. ``mnist_style`` does the same to any grey
image; ``load_digit_image`` reads a file (PNG, JPEG, ...) with Pillow first.

>>> x = load_digit_image("seven.png")     # (28, 28) float32 in [0, 1]
>>> net.predict(x.reshape(1, 784))

A picture may come from anyone: ``load_digit_image`` opens only a regular file
of at most ``MAX_BYTES`` and decodes it only when it has at most
``MAX_PIXELS`` (both can be raised per call); anything else, or a file Pillow
cannot read, raises :class:`ImageFileError` naming the file.
"""
from __future__ import annotations

import os

import numpy as np

from ..files import open_regular
from ..validation import count

#: ``load_digit_image``'s default cap on width x height: a 24-megapixel photo (6000 x 4000)
#: fits; reading one takes about 0.7 GB at the peak (float64 grey levels and their copies).
MAX_PIXELS = 25_000_000
#: ... and on the file's size: what Pillow may read (an unknown chunk is read whole).
MAX_BYTES = 64 << 20

SIDE = 28   # the MNIST field
BOX = 20    # the digit's bounding box is scaled to fit this square
CENTER = 14.0  # measured: the mean center of mass of the bundled sample is (13.99, 14.01)
INK = 0.15  # a pixel belongs to the digit's bounding box from this much ink (0..1); low enough
            # to keep MNIST's own anti-aliased edges, high enough to ignore faint noise


class ImageFileError(ValueError):
    """An image file that fastnn will not read (not a regular file, too large) or Pillow cannot."""


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


def _open_checked(Image, ImageOps, f, path, max_pixels):
    """The image in the open file ``f``, decoded only once its size (from the header) is allowed."""
    try:
        with Image.open(f) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageFileError(f"{path}: {width} x {height} pixels, more than max_pixels={max_pixels:,}; "
                                     f"if you trust this file, read it with a larger max_pixels (or shrink it)")
            image.load()
            return ImageOps.exif_transpose(image)  # photos: the way the camera was held (a copy)
    except ImageFileError:
        raise
    except Image.DecompressionBombError as exc:  # past Pillow's own cap (PIL.Image.MAX_IMAGE_PIXELS)
        raise ImageFileError(f"{path}: {exc}") from None
    except (Image.UnidentifiedImageError, SyntaxError, OSError, ValueError) as exc:
        raise ImageFileError(f"{path}: not an image Pillow can read ({exc})") from None


def load_digit_image(path, max_pixels=MAX_PIXELS, max_bytes=MAX_BYTES):
    """The image file ``path`` (PNG, JPEG, ... any size) as a ``(28, 28)`` MNIST-style float32 array.

    A picture with a transparent background (a drawing app's export) uses its
    alpha channel as the ink; otherwise the grey levels (see :func:`mnist_style`).
    ``max_pixels`` (width x height, default ``MAX_PIXELS``) and ``max_bytes`` (the
    file's size, default ``MAX_BYTES``) are checked before the picture is decoded;
    a larger one, anything but a regular file, or one Pillow cannot read raises
    :class:`ImageFileError` (a ``ValueError``).
    """
    Image, ImageOps = _pillow()
    max_pixels = count("max_pixels", max_pixels, minimum=1)
    max_bytes = count("max_bytes", max_bytes, minimum=0)
    with open_regular(path, ImageFileError) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise ImageFileError(f"{path}: {size:,} bytes, more than max_bytes={max_bytes:,}; if you trust "
                                 f"this file, read it with a larger max_bytes")
        image = _open_checked(Image, ImageOps, f, path, max_pixels)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA"))[:, :, 3]
        if alpha.min() != alpha.max():
            return mnist_style(alpha)
    return mnist_style(np.asarray(image.convert("L")))
