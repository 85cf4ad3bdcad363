"""Loaders on the real files, and clear errors for missing/corrupt data."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.datasets import DatasetError, DatasetNotFoundError, load_imdb, load_mnist

ROOT = Path(__file__).resolve().parents[2]


def test_load_mnist_real_file(mnist_dir):
    (x_train, y_train), (x_test, y_test) = load_mnist(str(mnist_dir))
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.uint8
    assert set(np.unique(y_train)) == set(range(10))
    assert x_train.max() == 255 and x_train.min() == 0


def test_load_mnist_uses_data_dir_env(mnist_dir, monkeypatch):
    monkeypatch.setenv("DATA_DIR", str(mnist_dir))
    (x_train, _), _ = load_mnist()
    assert len(x_train) == 60000


def test_load_imdb_real_file(imdb):
    train_texts, train_labels, test_texts, test_labels = imdb
    assert len(train_texts) == len(train_labels) == 25000
    assert len(test_texts) == len(test_labels) == 25000
    assert train_labels.dtype == np.int32
    assert train_labels.sum() == 12500 and test_labels.sum() == 12500  # balanced
    assert all(isinstance(t, str) and t for t in train_texts[:100])
    assert any("<br />" in t for t in train_texts)  # raw text: HTML breaks kept for the tokenizer


def test_load_imdb_with_movies_maps_reviews_to_films(imdb, imdb_dir):
    from training.datasets import load_imdb_with_movies

    data = load_imdb_with_movies(str(imdb_dir))
    assert data[0][:20] == imdb[0][:20]
    train_movies, test_movies = data[4], data[5]
    assert len(train_movies) == 25000 and len(test_movies) == 25000
    assert all(m.startswith("tt") for m in train_movies + test_movies)
    assert 3000 < len(set(train_movies)) < 5000  # ~7 reviews per film
    assert len(set(train_movies) & set(test_movies)) <= 5  # the official split is (almost) by film


def test_load_imdb_is_deterministic(imdb, imdb_dir):
    again = load_imdb(str(imdb_dir))
    assert again[0][:50] == imdb[0][:50] and np.array_equal(again[3], imdb[3])


def test_load_imdb_extracted_folder(tmp_path):
    for split in ("train", "test"):
        for label, text in (("pos", "great <br />film"), ("neg", "awful")):
            folder = tmp_path / "aclImdb" / split / label
            folder.mkdir(parents=True)
            (folder / "0_9.txt").write_text(text, encoding="utf-8")
    (tmp_path / "aclImdb" / "train" / "unsup").mkdir()
    (tmp_path / "aclImdb" / "train" / "unsup" / "1_0.txt").write_text("ignored")
    train_texts, train_labels, test_texts, _ = load_imdb(str(tmp_path))
    assert train_texts == ["awful", "great <br />film"]  # sorted by path: neg before pos
    assert train_labels.tolist() == [0, 1] and len(test_texts) == 2


def test_missing_mnist_names_file_and_fix(tmp_path, monkeypatch):
    # Make the Keras download fallback fail fast and offline.
    import training.datasets as ds

    monkeypatch.setitem(sys.modules, "keras", None)
    with pytest.raises(DatasetNotFoundError) as info:
        ds.load_mnist(str(tmp_path))
    message = str(info.value)
    assert "mnist.npz" in message and str(tmp_path) in message and "DATA_DIR" in message


def test_missing_imdb_names_files_and_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "keras", None)
    with pytest.raises(DatasetNotFoundError) as info:
        load_imdb(str(tmp_path))
    message = str(info.value)
    assert "aclImdb" in message and str(tmp_path) in message and "--data-dir" in message
    assert isinstance(info.value, FileNotFoundError)


def test_corrupt_npz(tmp_path):
    (tmp_path / "mnist.npz").write_bytes(b"PK\x03\x04 this is not a zip file" * 10)
    with pytest.raises(DatasetError, match="corrupt"):
        load_mnist(str(tmp_path))


def test_npz_missing_keys(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DatasetError, match="missing keys"):
        load_mnist(str(tmp_path))


def test_truncated_tarball(tmp_path, imdb_tarball):
    with open(imdb_tarball, "rb") as src:
        (tmp_path / imdb_tarball.name).write_bytes(src.read(1_000_000))
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        load_imdb(str(tmp_path))


def _cli(*args, env_data_dir=None):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    if env_data_dir:
        env["DATA_DIR"] = env_data_dir
    return subprocess.run([sys.executable, "-m", "training", "train-export", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_missing_data_dir_exits_with_one_line(tmp_path):
    result = _cli("--data-dir", str(tmp_path / "nope"), "--repository", str(tmp_path / "repo"))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope" in lines[0] and "DATA_DIR" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "repo").exists()


def test_cli_corrupt_npz_exits_with_one_line(tmp_path):
    (tmp_path / "mnist.npz").write_bytes(b"garbage")
    result = _cli("--models", "mnist", "--quick", "--repository", str(tmp_path / "repo"),
                  env_data_dir=str(tmp_path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: DatasetError") and "mnist.npz" in lines[0]


def test_cli_rejects_unknown_model(tmp_path):
    shutil.rmtree(tmp_path, ignore_errors=True)
    result = _cli("--models", "resnet", "--data-dir", "/")
    assert result.returncode == 2 and "resnet" in result.stderr
