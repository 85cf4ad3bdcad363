"""``python -m server.client`` run as a person would, against a real server."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, data_dir

DIGIT_LINE = re.compile(r"^(?P<path>.+): (?P<digit>\d) \((?P<p>[\d.]+)%\)   next: "
                        r"(\d) \([\d.]+%\), (\d) \([\d.]+%\)$")
TEXT_LINE = re.compile(r"^(?P<label>positive|negative) +(?P<p>[\d.]+)%  (?P<text>.*)$")


def client(*args: str, stdin: str | None = None, timeout: float = 60):
    return subprocess.run([sys.executable, "-m", "server.client", *args], cwd=REPO_ROOT,
                          input=stdin, capture_output=True, text=True, timeout=timeout)


def mnist_test_digits(count: int):
    path = data_dir() / "mnist.npz"
    if not path.is_file():
        pytest.skip(f"{path} is missing (set DATA_DIR)")
    with np.load(path) as data:
        return data["x_test"][:count], data["y_test"][:count]


def write_scan(pixels: np.ndarray, path, scale: int = 5) -> None:
    """An MNIST digit as a person's scan: dark ink on white paper, bigger, with margins."""
    from PIL import Image

    paper = 255 - pixels  # white background: the client must invert it back
    image = Image.fromarray(paper.astype(np.uint8)).resize(
        (28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    canvas = Image.new("L", (28 * scale + 60, 28 * scale + 20), 255)
    canvas.paste(image, (40, 5))
    canvas.convert("RGB").save(path)


def test_digit_images_are_classified(server, tmp_path):
    images, labels = mnist_test_digits(8)
    paths = []
    for index, (pixels, label) in enumerate(zip(images, labels)):
        path = tmp_path / f"digit{index}_{label}.png"
        write_scan(pixels, path)
        paths.append(path)
    jpeg = tmp_path / "digit_jpeg.jpg"
    write_scan(images[0], jpeg, scale=3)
    result = client("--url", server.address, "mnist", *map(str, paths + [jpeg]))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(paths) + 1
    predicted = []
    for line in lines:
        match = DIGIT_LINE.match(line)
        assert match, line
        predicted.append(int(match["digit"]))
        assert 0 < float(match["p"]) <= 100
    expected = [int(label) for label in labels] + [int(labels[0])]
    assert predicted == expected, result.stdout


def test_texts_from_arguments_and_stdin(server):
    result = client("--url", server.address, "sentiment",
                    "a wonderful film, moving and beautifully acted",
                    "the worst movie I have ever seen, boring and stupid")
    assert result.returncode == 0, result.stderr
    rows = [TEXT_LINE.match(line) for line in result.stdout.strip().splitlines()]
    assert all(rows), result.stdout
    assert [r["label"] for r in rows] == ["positive", "negative"], result.stdout
    assert all(50 <= float(r["p"]) <= 100 for r in rows)

    lines = [f"review number {i}: great fun" for i in range(40)] + ["", "awful"]
    piped = client("--url", server.address, "sentiment", "-", stdin="\n".join(lines) + "\n")
    assert piped.returncode == 0, piped.stderr
    out = piped.stdout.strip().splitlines()
    assert len(out) == 41  # blank lines skipped; more lines than one request carries
    assert TEXT_LINE.match(out[0])["text"] == "review number 0: great fun"
    assert TEXT_LINE.match(out[-1])["text"] == "awful"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_errors_are_one_clear_line(server, tmp_path):
    down = f"127.0.0.1:{_closed_port()}"
    result = client("--url", down, "sentiment", "hello")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"error: cannot reach server at {down}: is it running? (Connection refused)"]

    missing = client("--url", server.address, "--model", "no-such-model", "sentiment", "hi")
    assert missing.returncode != 0
    (line,) = missing.stderr.strip().splitlines()
    assert "NOT_FOUND" in line and "no-such-model" in line

    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    bad = client("--url", server.address, "mnist", str(not_image))
    assert bad.returncode != 0
    (line,) = bad.stderr.strip().splitlines()
    assert str(not_image) in line and "not a readable PNG/JPEG" in line
    assert bad.stdout == ""


def test_the_shipped_sample_photos_are_read_as_their_digits(server):
    words = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
             "seven": 7, "eight": 8, "nine": 9}
    pictures = sorted((REPO_ROOT / "examples" / "digits").glob("*.[pj][np]g"))
    assert len(pictures) >= 6
    result = client("--url", server.address, "mnist", *map(str, pictures))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(pictures)
    for picture, line in zip(pictures, lines):
        match = DIGIT_LINE.match(line)
        assert match and int(match["digit"]) == words[picture.name.split("_")[0]], line


def test_services_lists_what_reflection_offers(server):
    result = client("--url", server.address, "services")
    assert result.returncode == 0, result.stderr
    assert "inference.GRPCInferenceService" in result.stdout.splitlines()
    assert "  ModelInfer(ModelInferRequest) returns (ModelInferResponse)" in result.stdout
    assert ("  ModelStreamInfer(stream ModelInferRequest) returns "
            "(stream ModelStreamInferResponse)") in result.stdout
    assert "grpc.health.v1.Health" in result.stdout
