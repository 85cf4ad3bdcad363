"""``python -m tools.sample_digits --data-dir DIR``: write examples/digits/*.

Pictures of handwritten digits the way a person hands them to the server: photos and
scans of many shapes, dark ink on paper or chalk on a board, thin pen or thick marker,
shaded and noisy, never 28x28. The handwriting is real (MNIST test digits, drawn large
and smooth); paper, ink, light and noise are made up here, with a fixed seed, so the
committed files can be rebuilt exactly. The README and tests use them.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "examples" / "digits"


@dataclass(frozen=True)
class Sample:
    name: str
    label: int
    size: tuple[int, int]  # (width, height) of the picture
    digit_px: int  # height of the handwriting in the picture
    at: tuple[float, float]  # centre of the digit as a share of (width, height)
    paper: tuple[int, int, int]
    ink: tuple[int, int, int]
    stroke: int = 0  # > 0 thicker (marker), < 0 thinner (fine pen)
    noise: float = 6.0  # grey levels of sensor noise
    shade: float = 0.25  # light falling off across the picture
    specks: int = 0  # dust and dots on the paper


SAMPLES = (
    Sample("three_photo.jpg", 3, (300, 400), 170, (0.5, 0.45), (228, 222, 206), (40, 40, 60)),
    Sample("seven_landscape.jpg", 7, (420, 240), 150, (0.3, 0.55), (250, 250, 248), (20, 30, 110)),
    Sample("zero_chalkboard.jpg", 0, (320, 320), 190, (0.55, 0.5), (38, 62, 52), (225, 230, 220)),
    Sample("four_noisy.jpg", 4, (360, 300), 160, (0.6, 0.5), (200, 196, 185), (55, 45, 40),
           noise=22.0, shade=0.45, specks=60),
    Sample("one_thin_pen.jpg", 1, (220, 380), 180, (0.45, 0.5), (245, 245, 240), (10, 10, 10),
           stroke=-2),
    Sample("eight_marker.png", 8, (380, 320), 220, (0.5, 0.5), (252, 252, 252), (15, 15, 15),
           stroke=5, noise=1.0, shade=0.05),
)


def first_of_each(data_dir: Path) -> dict[int, np.ndarray]:
    """The first MNIST test image of each label, float 0..1 (28, 28)."""
    path = data_dir / "mnist.npz"
    if not path.is_file():
        raise SystemExit(f"{path} not found: pass --data-dir (the folder with mnist.npz)")
    with np.load(path, allow_pickle=False) as data:
        images, labels = data["x_test"], data["y_test"]
    return {int(d): images[int(np.argmax(labels == d))] / 255.0 for d in range(10)}


def render(sample: Sample, digit: np.ndarray, rng: np.random.Generator):
    from PIL import Image, ImageFilter

    large = Image.fromarray((digit * 255).astype(np.uint8)).resize(
        (sample.digit_px, sample.digit_px), Image.Resampling.BICUBIC)
    if sample.stroke:
        grow = ImageFilter.MaxFilter if sample.stroke > 0 else ImageFilter.MinFilter
        large = large.filter(grow(2 * abs(sample.stroke) + 1))
    # Smooth, pen-like edges: sharpen the blurred upscale into a stroke with soft borders.
    strokes = np.asarray(large, dtype=np.float32) / 255.0
    strokes = 1.0 / (1.0 + np.exp(-12.0 * (strokes - 0.45)))
    width, height = sample.size
    coverage = np.zeros((height, width), np.float32)
    top = int(sample.at[1] * height - sample.digit_px / 2)
    left = int(sample.at[0] * width - sample.digit_px / 2)
    coverage[top:top + sample.digit_px, left:left + sample.digit_px] = strokes
    for _ in range(sample.specks):
        y, x = rng.integers(0, height - 2), rng.integers(0, width - 2)
        coverage[y:y + 2, x:x + 2] = np.maximum(coverage[y:y + 2, x:x + 2], rng.uniform(0.3, 0.8))
    paper, ink = np.array(sample.paper, np.float32), np.array(sample.ink, np.float32)
    rgb = paper * (1 - coverage[..., None]) + ink * coverage[..., None]
    light = 1.0 - sample.shade * np.linspace(0, 1, width)[None, :] * np.linspace(0.4, 1, height)[:, None]
    rgb = rgb * light[..., None] + rng.normal(0, sample.noise, rgb.shape)
    picture = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    return picture.filter(ImageFilter.GaussianBlur(0.8))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.sample_digits", description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True, help="folder with mnist.npz")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    digits = first_of_each(args.data_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261202)
    for sample in SAMPLES:
        picture = render(sample, digits[sample.label], rng)
        path = args.out / sample.name
        picture.save(path, quality=85) if path.suffix == ".jpg" else picture.save(path, optimize=True)
        print(f"{path}  digit {sample.label}  {sample.size[0]}x{sample.size[1]}  "
              f"{path.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
