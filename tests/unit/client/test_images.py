"""Pictures of digits as people take them -> the MNIST model's input, read right.

The pictures in examples/digits are photos and scans of every shape and polarity (real
handwriting, made-up paper and light: tools/sample_digits.py); each must be read as its
digit by the real model through ONNX Runtime. More of the same kinds, drawn from MNIST
test digits, must be read nearly as well as MNIST itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.client.images import ImageError, load_digit, prepare_digit, resize_area
from tests.conftest import REPO_ROOT
from tests.support.wire import mnist_images

SAMPLES = REPO_ROOT / "examples" / "digits"
WORDS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
         "seven": 7, "eight": 8, "nine": 9}


@pytest.fixture(scope="module")
def classify():
    import onnxruntime as ort

    session = ort.InferenceSession(str(REPO_ROOT / "models" / "mnist" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {"image": np.asarray(images, np.float32)})[0]


def sample_pictures() -> list[Path]:
    return sorted(p for p in SAMPLES.iterdir() if p.suffix in (".png", ".jpg"))


def label_of(path: Path) -> int:
    return WORDS[path.name.split("_")[0]]


@pytest.mark.parametrize("path", sample_pictures(), ids=lambda p: p.name)
def test_every_shipped_picture_is_read_as_its_digit(path, classify):
    image = load_digit(path)
    assert image.shape == (28, 28, 1) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    probabilities = classify(image[None])[0]
    assert int(np.argmax(probabilities)) == label_of(path), probabilities.round(3)


def test_the_shipped_pictures_cover_the_shapes_people_send():
    from PIL import Image

    shapes = set()
    for path in sample_pictures():
        with Image.open(path) as picture:
            width, height = picture.size
            grey = np.asarray(picture.convert("L"), np.float32)
        shapes.add("portrait" if height > width else "landscape" if width > height else "square")
        border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
        shapes.add("dark ink" if np.median(border) > 127 else "light ink")
        assert (width, height) != (28, 28)
    assert shapes == {"portrait", "landscape", "square", "dark ink", "light ink"}


def test_photos_of_many_handwritten_digits_in_every_style(classify, tmp_path):
    from tools.sample_digits import SAMPLES as STYLES, render

    images, labels = mnist_images(20)
    if labels is None:
        pytest.skip("needs the MNIST data (DATA_DIR with mnist.npz)")
    rng = np.random.default_rng(7)
    for style in STYLES:
        read = []
        for i, digit in enumerate(images[..., 0]):
            path = tmp_path / f"{i}{Path(style.name).suffix}"
            render(style, digit, rng).save(path)
            read.append(load_digit(path))
        accuracy = float((classify(np.stack(read)).argmax(axis=1) == labels).mean())
        assert accuracy >= 0.9, (style.name, accuracy)


def test_transparent_background_counts_as_paper(classify, tmp_path):
    from PIL import Image

    three = next(p for p in sample_pictures() if label_of(p) == 3)
    grey = np.asarray(Image.open(three).convert("L"))
    rgba = np.zeros(grey.shape + (4,), np.uint8)
    rgba[..., 3] = np.where(grey < 128, 255, 0)  # ink opaque black, paper transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "three.png")
    assert int(np.argmax(classify(load_digit(tmp_path / "three.png")[None])[0])) == 3


def test_a_large_photo_is_scaled_down_first(classify, tmp_path):
    from PIL import Image

    seven = next(p for p in sample_pictures() if label_of(p) == 7)
    with Image.open(seven) as picture:
        picture.resize((picture.width * 8, picture.height * 8)).save(tmp_path / "big.jpg")
    assert int(np.argmax(classify(load_digit(tmp_path / "big.jpg")[None])[0])) == 7


@pytest.mark.parametrize("level", [0, 128, 255])
def test_a_blank_picture_is_an_error_not_a_guess(level):
    with pytest.raises(ImageError, match="no digit found"):
        prepare_digit(np.full((40, 30), level, np.float32), "blank.png")


def test_a_file_that_is_not_a_picture_is_an_error(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not a picture")
    with pytest.raises(ImageError, match="not a readable PNG/JPEG"):
        load_digit(path)
    with pytest.raises(ImageError, match="no such file"):
        load_digit(tmp_path / "missing.png")


def test_area_resize_keeps_the_mean_and_handles_growth():
    rng = np.random.default_rng(0)
    pixels = rng.random((37, 23)).astype(np.float32)
    for height, width in ((20, 12), (5, 3), (74, 46), (1, 1)):
        resized = resize_area(pixels, height, width)
        assert resized.shape == (height, width)
        assert resized.mean() == pytest.approx(pixels.mean(), rel=1e-4)
