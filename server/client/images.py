"""Any PNG/JPEG photo or scan of a digit -> the MNIST model's input (28x28x1, 0..1).

MNIST digits are light ink on black, cropped to the ink, scaled so the longer side is
20 px and centred by their centre of mass in a 28x28 frame. Doing the same to a user's
picture makes the prediction hold up on photos of any shape and polarity, not only on
images that already look like MNIST.

The web console (``server/rest/console/app.js``, ``prepareDigit``) runs the very same
steps with the same constants and the same area resampling, so a picture gets the same
28x28 input from the CLI and from the browser; tests/system/rest holds them equal.
Pillow is the optional ``client`` extra, used only to decode files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE = 28
BOX = 20  # MNIST fits each digit into 20x20 inside the 28x28 frame
INK_THRESHOLD = 0.25  # (0..1 after background removal) lighter than this is paper
MAX_SIDE = 1024  # larger pictures are scaled down first (area averaging)
TRIM = 0.005  # share of the ink mass ignored on each side when cropping (specks, noise)


class ImageError(ValueError):
    """The file is missing, not an image, has no digit, or Pillow is not installed."""


def load_digit(path: Path) -> np.ndarray:
    """float32 (28, 28, 1) in [0, 1], light digit on black, as the model was trained."""
    return prepare_digit(read_grey(path), str(path))[..., np.newaxis]


def read_grey(path: Path) -> np.ndarray:
    """The picture as float32 (height, width) grey levels 0..255 (transparency = paper)."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ImageError("reading images needs Pillow: pip install 'onnx-serve[client]' "
                         "(or pip install pillow)") from None
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as exc:  # PIL.UnidentifiedImageError is an OSError
        raise ImageError(f"{path}: not a readable PNG/JPEG image ({exc})") from None
    return grey_of_rgba(rgba)


def grey_of_rgba(rgba: np.ndarray) -> np.ndarray:
    """Luma of (h, w, 4) 0..255 pixels composited on white paper (browsers' rule too)."""
    alpha = rgba[..., 3] / 255.0
    luma = 0.299 * rgba[..., 0] + 0.587 * rgba[..., 1] + 0.114 * rgba[..., 2]
    return luma * alpha + 255.0 * (1.0 - alpha)


def prepare_digit(grey: np.ndarray, name: str = "image") -> np.ndarray:
    """(h, w) grey 0..255 -> (28, 28) float32 in [0, 1], MNIST's way.

    1. Polarity from the picture's own background (the median of its border), so dark ink
       on paper and light ink on a dark board both become light ink on black; padding
       never counts as ink.
    2. The paper's level removed cell by cell (shade across a photo is not ink), contrast
       stretched, and specks fainter than INK_THRESHOLD dropped.
    3. Cropped to the ink (ignoring TRIM of its mass at each side), longer side scaled to
       20 px by area averaging, centred by mass in 28x28.
    """
    grey = np.asarray(grey, dtype=np.float32)
    if max(grey.shape) > MAX_SIDE:  # a 12-megapixel photo holds no more digit than this
        scale = MAX_SIDE / max(grey.shape)
        grey = resize_area(grey, _round(grey.shape[0] * scale), _round(grey.shape[1] * scale))
    ink = _ink(grey)
    if ink is None:
        raise ImageError(f"{name}: no digit found (the picture is blank or one flat colour)")
    top, bottom, left, right = _ink_box(ink)
    crop = ink[top:bottom, left:right]
    scale = BOX / max(crop.shape)
    height = min(BOX, _round(crop.shape[0] * scale))
    width = min(BOX, _round(crop.shape[1] * scale))
    digit = resize_area(crop, height, width)
    frame = np.zeros((SIZE, SIZE), np.float32)
    y, x = (SIZE - height) // 2, (SIZE - width) // 2
    frame[y:y + height, x:x + width] = digit
    return _centre_mass(frame)


def _ink(grey: np.ndarray) -> np.ndarray | None:
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if np.median(border) > 127:
        grey = 255.0 - grey
    above = grey - _paper(grey)  # light falling across a photo is not ink
    peak = float(above.max())
    if peak < 32:  # no stroke stands out from the paper
        return None
    ink = np.clip(above / peak, 0.0, 1.0)
    ink[ink < INK_THRESHOLD] = 0.0
    return _without_specks(ink.astype(np.float32))


def _without_specks(ink: np.ndarray) -> np.ndarray:
    """Only blobs holding SPECK_SHARE of the biggest blob's ink (a digit may have two
    strokes; dust and dots on the paper are far smaller). Blobs are found on a copy at
    most SPECKS_SIDE pixels wide, which keeps this cheap in the browser too."""
    scale = max(ink.shape) / SPECKS_SIDE
    height, width = (ink.shape if scale <= 1 else
                     (_round(ink.shape[0] / scale), _round(ink.shape[1] / scale)))
    small = resize_area(ink, height, width)
    labels, masses = _blobs(small > 0, small)
    keep = np.concatenate([[False], masses >= SPECK_SHARE * masses.max()])
    ys = np.arange(ink.shape[0]) * height // ink.shape[0]
    xs = np.arange(ink.shape[1]) * width // ink.shape[1]
    return np.where(keep[labels[ys[:, None], xs[None, :]]], ink, 0.0).astype(np.float32)


SPECKS_SIDE = 96
SPECK_SHARE = 0.08


def _blobs(mask: np.ndarray, mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected blobs of mask: a label per pixel (0 = none) and each blob's mass."""
    labels = np.zeros(mask.shape, np.int32)
    masses: list[float] = []
    height, width = mask.shape
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        masses.append(0.0)
        labels[start] = len(masses)
        stack = [start]
        while stack:
            y, x = stack.pop()
            masses[-1] += float(mass[y, x])
            for ny in range(max(0, y - 1), min(height, y + 2)):
                for nx in range(max(0, x - 1), min(width, x + 2)):
                    if mask[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = len(masses)
                        stack.append((ny, nx))
    return labels, np.array(masses, np.float32)


def _paper(grey: np.ndarray) -> np.ndarray:
    """The paper's level under every pixel: a GRID x GRID map of each cell's darkest
    PAPER_PERCENTILE (ink is light by now), the lowest of each cell's neighbours (a cell
    all ink is not paper), interpolated between cell centres."""
    rows, cols = _cells(grey.shape[0]), _cells(grey.shape[1])
    levels = np.array([[_lower_percentile(grey[r0:r1, c0:c1]) for c0, c1 in cols]
                       for r0, r1 in rows], np.float32)
    padded = np.pad(levels, 1, mode="edge")
    low = np.min([padded[i:i + levels.shape[0], j:j + levels.shape[1]]
                  for i in range(3) for j in range(3)], axis=0)
    return _interpolate(low, rows, cols, grey.shape)


GRID = 8  # cells per side of the paper map
PAPER_PERCENTILE = 20


def _cells(size: int) -> list[tuple[int, int]]:
    count = min(GRID, size)
    edges = [size * i // count for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _lower_percentile(block: np.ndarray) -> float:
    ordered = np.sort(block, axis=None)
    return float(ordered[(len(ordered) - 1) * PAPER_PERCENTILE // 100])


def _interpolate(levels: np.ndarray, rows, cols, shape) -> np.ndarray:
    centre_y = np.array([(a + b - 1) / 2 for a, b in rows])
    centre_x = np.array([(a + b - 1) / 2 for a, b in cols])
    across = np.array([np.interp(np.arange(shape[1]), centre_x, row) for row in levels])
    return np.array([np.interp(np.arange(shape[0]), centre_y, column) for column in across.T]).T


def _ink_box(ink: np.ndarray) -> tuple[int, int, int, int]:
    """[top, bottom) x [left, right) holding all but TRIM of the ink mass at each side."""
    def span(mass: np.ndarray) -> tuple[int, int]:
        cumulative = np.cumsum(mass) / mass.sum()
        first = int(np.searchsorted(cumulative, TRIM, side="right"))
        last = int(np.searchsorted(cumulative, 1.0 - TRIM, side="left"))
        return first, min(len(mass), last + 1)
    top, bottom = span(ink.sum(axis=1))
    left, right = span(ink.sum(axis=0))
    return top, bottom, left, right


def _round(value: float) -> int:
    """Half up, at least 1: JavaScript's Math.round, not Python's half-to-even."""
    return max(1, int(np.floor(value + 0.5)))


def resize_area(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Each output pixel is the mean of the input area it covers (fractional edges weighted)."""
    return _area_weights(pixels.shape[0], height) @ pixels @ _area_weights(pixels.shape[1], width).T


def _area_weights(size_in: int, size_out: int) -> np.ndarray:
    # Output pixel i covers input [i * step, (i + 1) * step); weight = overlap / step.
    step = size_in / size_out
    starts = np.arange(size_out)[:, None] * step
    cells = np.arange(size_in)[None, :]
    overlap = np.clip(np.minimum(starts + step, cells + 1) - np.maximum(starts, cells), 0, None)
    return (overlap / step).astype(np.float32)


def _centre_mass(frame: np.ndarray) -> np.ndarray:
    total = frame.sum()
    ys, xs = np.indices(frame.shape)
    shift_y = int(np.floor(SIZE / 2 - (ys * frame).sum() / total))
    shift_x = int(np.floor(SIZE / 2 - (xs * frame).sum() / total))
    # Never push ink off the frame: limit the shift to the empty margins.
    rows, cols = np.flatnonzero(frame.any(axis=1)), np.flatnonzero(frame.any(axis=0))
    shift_y = int(np.clip(shift_y, -rows[0], SIZE - 1 - rows[-1]))
    shift_x = int(np.clip(shift_x, -cols[0], SIZE - 1 - cols[-1]))
    return np.roll(frame, (shift_y, shift_x), axis=(0, 1))
