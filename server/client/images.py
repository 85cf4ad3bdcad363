"""Any PNG/JPEG photo or scan of a digit -> the MNIST model's input (28x28x1, 0..1).

MNIST digits are white on black, fitted into a 20x20 box and centred by their centre
of mass in a 28x28 frame; doing the same to a user's image makes the prediction hold
up on real photos, not only on images that already look like MNIST. Pillow is the
optional ``client`` extra and is imported only here, only when an image is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE = 28
BOX = 20  # MNIST fits each digit into 20x20 inside the 28x28 frame
LIGHT_BACKGROUND = 127  # mean grey level above which the image is inverted
INK_THRESHOLD = 0.2  # (0..1) a pixel darker than this after inversion is background


class ImageError(ValueError):
    """The file is missing, not an image, or Pillow is not installed."""


def _pillow():
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ImageError("reading images needs Pillow: pip install 'onnx-serve[client]' "
                         "(or pip install pillow)") from None
    return Image, ImageOps


def load_digit(path: Path) -> np.ndarray:
    """float32 (28, 28, 1) in [0, 1], white digit on black, as the model was trained."""
    Image, ImageOps = _pillow()
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                # Transparent pixels count as paper (white), not as black ink.
                white = Image.new("RGBA", image.size, "white")
                image = Image.alpha_composite(white, image.convert("RGBA"))
            grey = np.asarray(image.convert("L"), dtype=np.float32)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as exc:  # PIL.UnidentifiedImageError is an OSError
        raise ImageError(f"{path}: not a readable PNG/JPEG image ({exc})") from None
    if grey.mean() > LIGHT_BACKGROUND:
        grey = 255.0 - grey  # dark ink on light paper -> MNIST's light ink on black
    return fit_like_mnist(grey / 255.0)[..., np.newaxis]


def fit_like_mnist(pixels: np.ndarray) -> np.ndarray:
    """Crop to the ink, scale its longer side to 20 px, centre its mass in 28x28."""
    Image, _ = _pillow()
    ink = pixels > INK_THRESHOLD
    if not ink.any():  # blank image: plain resize, the model says what it says
        return _resize(Image, pixels, (SIZE, SIZE))
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    crop = pixels[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    scale = BOX / max(crop.shape)
    height = max(1, round(crop.shape[0] * scale))
    width = max(1, round(crop.shape[1] * scale))
    digit = _resize(Image, crop, (width, height))
    frame = np.zeros((SIZE, SIZE), np.float32)
    top, left = (SIZE - height) // 2, (SIZE - width) // 2
    frame[top:top + height, left:left + width] = digit
    return _centre_mass(frame)


def _resize(Image, pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32))  # mode "F"
    resized = image.resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def _centre_mass(frame: np.ndarray) -> np.ndarray:
    total = frame.sum()
    if total <= 0:
        return frame
    ys, xs = np.indices(frame.shape)
    shift_y = int(round(SIZE / 2 - 0.5 - (ys * frame).sum() / total))
    shift_x = int(round(SIZE / 2 - 0.5 - (xs * frame).sum() / total))
    # Never push ink off the frame: limit the shift to the empty margins.
    rows, cols = np.flatnonzero(frame.any(axis=1)), np.flatnonzero(frame.any(axis=0))
    shift_y = int(np.clip(shift_y, -rows[0], SIZE - 1 - rows[-1]))
    shift_x = int(np.clip(shift_x, -cols[0], SIZE - 1 - cols[-1]))
    return np.roll(frame, (shift_y, shift_x), axis=(0, 1))
