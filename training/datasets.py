"""Data set loaders (MNIST, IMDB reviews), in the style of ``keras.datasets``.

Local files in ``data_dir`` are preferred (the build machines are offline); the
Keras download is only a fallback. TensorFlow/Keras are imported lazily so that the
npz/tar paths work in a serving-only environment (the committed-model tests).
"""

from __future__ import annotations

import glob
import os
import re
import tarfile
import zipfile
import zlib

import numpy as np

MNIST_FILE = "mnist.npz"
IMDB_DIR = "aclImdb"
IMDB_TARBALL_GLOB = "aclImdb*.tar.gz"
IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
# sha256 of the official aclImdb_v1.tar.gz, so a download is verified.
IMDB_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
_MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")
# aclImdb/<split>/<pos|neg>/<id>_<rating>.txt; train/unsup is deliberately not matched.
_IMDB_MEMBER_RE = re.compile(r"(?:^|/)aclImdb/(train|test)/(pos|neg)/[^/]+\.txt$")
# aclImdb/<split>/urls_<pos|neg>.txt: line i is the IMDb page of the film reviewed in <split>/<label>/i_*.txt.
_IMDB_URLS_RE = re.compile(r"(?:^|/)aclImdb/(train|test)/urls_(pos|neg)\.txt$")
_REVIEW_ID_RE = re.compile(r"/(\d+)_\d+\.txt$")
_MOVIE_RE = re.compile(r"/title/(tt\d+)")
_FIX_HINT = "set the DATA_DIR environment variable or pass --data-dir to the folder holding the data sets"


class DatasetError(RuntimeError):
    """A data file exists but cannot be read (corrupt, truncated, missing keys)."""


class DatasetNotFoundError(FileNotFoundError):
    """No local copy of a data set was found and it could not be downloaded."""


def resolve_data_dir(data_dir: str | None) -> str | None:
    """``--data-dir`` if given, else the ``DATA_DIR`` environment variable, else None."""
    return data_dir or os.environ.get("DATA_DIR") or None


def load_mnist(data_dir: str | None = None):
    """Loads MNIST from ``<data_dir>/mnist.npz``, else via ``keras.datasets.mnist``.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: ``x_train`` uint8 (60000, 28, 28),
        ``y_train`` uint8 (60000,) with digits 0-9, ``x_test`` uint8 (10000, 28, 28),
        ``y_test`` uint8 (10000,). Original order, raw pixels 0-255.
    """
    data_dir = resolve_data_dir(data_dir)
    path = os.path.join(data_dir, MNIST_FILE) if data_dir else None
    if path and os.path.isfile(path):
        return _read_mnist_npz(path)
    try:
        import keras  # lazy: TensorFlow is only needed for the download fallback

        return keras.datasets.mnist.load_data()
    except Exception as exc:  # offline, no keras, ...: one clear error instead
        raise DatasetNotFoundError(
            f"MNIST not found: expected {MNIST_FILE} in data directory {data_dir!r} "
            f"and the Keras download failed ({type(exc).__name__}: {exc}); {_FIX_HINT}"
        ) from exc


def _read_mnist_npz(path: str):
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in _MNIST_KEYS if k not in f.files]
            if missing:
                raise DatasetError(f"{path} is not an MNIST npz: missing keys {missing} (has {sorted(f.files)})")
            x_train, y_train, x_test, y_test = (f[k] for k in _MNIST_KEYS)
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DatasetError(f"cannot read {path} (corrupt or not an npz file?): {type(exc).__name__}: {exc}") from exc
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (x.shape[0],):
            raise DatasetError(f"{path}: unexpected {name} shapes x={x.shape} y={y.shape}")
    return (x_train, y_train), (x_test, y_test)


def load_imdb(data_dir: str | None = None):
    """Loads the labelled IMDB reviews (Large Movie Review Dataset v1.0) as raw text.

    Looks for an extracted ``<data_dir>/aclImdb/`` folder, then an ``aclImdb*.tar.gz``
    in ``data_dir`` (streamed, not extracted), then downloads the official tarball.

    Returns:
        ``(train_texts, train_labels, test_texts, test_labels)``: texts are lists of
        str (25000 each, raw, HTML ``<br />`` included), labels int32 arrays (25000,)
        with 1 = positive, 0 = negative; each split sorted by member path.
    """
    return load_imdb_with_movies(data_dir)[:4]


def load_imdb_with_movies(data_dir: str | None = None):
    """:func:`load_imdb` plus the film each review is about.

    Returns:
        ``(train_texts, train_labels, test_texts, test_labels, train_movies, test_movies)``;
        the movie lists hold IMDb title ids ("tt0453418") aligned with the texts, read
        from ``urls_{pos,neg}.txt``. Reviews of one film share words (names, plot), so a
        validation split must keep each film on one side (see ``sentiment_data``).
    """
    data_dir = resolve_data_dir(data_dir)
    if data_dir and os.path.isdir(os.path.join(data_dir, IMDB_DIR)):
        return _read_imdb_folder(os.path.join(data_dir, IMDB_DIR))
    tarballs = sorted(glob.glob(os.path.join(glob.escape(data_dir), IMDB_TARBALL_GLOB))) if data_dir else []
    if tarballs:
        return _read_imdb_tarball(tarballs[0])
    try:
        import keras  # lazy, download fallback only

        path = keras.utils.get_file("aclImdb_v1.tar.gz", IMDB_URL, file_hash=IMDB_SHA256)
    except Exception as exc:
        raise DatasetNotFoundError(
            f"IMDB reviews not found: expected an extracted {IMDB_DIR}/ folder or {IMDB_TARBALL_GLOB} "
            f"in data directory {data_dir!r}, and the download of {IMDB_URL} failed "
            f"({type(exc).__name__}: {exc}); {_FIX_HINT}"
        ) from exc
    return _read_imdb_tarball(path)


def _movie(urls: dict, split: str, label: str, path: str) -> str:
    """IMDb title id of the film a review is about ("" when the URL lists are absent)."""
    lines = urls.get((split, label))
    if lines is None:
        return ""
    review_id = int(_REVIEW_ID_RE.search(path).group(1))
    if review_id >= len(lines):
        raise DatasetError(f"{path}: review id {review_id} has no line in {split}/urls_{label}.txt")
    match = _MOVIE_RE.search(lines[review_id])
    return match.group(1) if match else lines[review_id].strip()


def _split(records: list[tuple[str, str, str, str]], source: str, urls: dict | None = None):
    """(split, label, path, text) records -> the six return values, sorted by path."""
    texts_labels, movies = [], []
    for split in ("train", "test"):
        rows = sorted((path, label, text) for s, label, path, text in records if s == split)
        if not rows:
            raise DatasetError(f"{source}: no {split}/pos or {split}/neg reviews found")
        texts_labels.append([text for _, _, text in rows])
        texts_labels.append(np.array([1 if label == "pos" else 0 for _, label, _ in rows], dtype=np.int32))
        movies.append([_movie(urls or {}, split, label, path) for path, label, _ in rows])
    return (*texts_labels, *movies)


def _read_imdb_folder(root: str):
    records, urls = [], {}
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            for path in glob.glob(os.path.join(glob.escape(root), split, label, "*.txt")):
                with open(path, encoding="utf-8") as f:
                    records.append((split, label, os.path.relpath(path, root).replace(os.sep, "/"), f.read()))
            url_file = os.path.join(root, split, f"urls_{label}.txt")
            if os.path.isfile(url_file):
                with open(url_file, encoding="utf-8") as f:
                    urls[(split, label)] = f.read().splitlines()
    return _split(records, root, urls)


def _read_imdb_tarball(path: str):
    records, urls = [], {}
    try:
        # "r|gz" streams the archive once, without random access or extraction.
        with tarfile.open(path, "r|gz") as tar:
            for member in tar:
                url_match = _IMDB_URLS_RE.search(member.name)
                if url_match and member.isfile():
                    lines = tar.extractfile(member).read().decode("utf-8").splitlines()
                    urls[(url_match.group(1), url_match.group(2))] = lines
                    continue
                match = _IMDB_MEMBER_RE.search(member.name)
                if not match or not member.isfile():
                    continue
                text = tar.extractfile(member).read().decode("utf-8")
                records.append((match.group(1), match.group(2), member.name, text))
    except (tarfile.TarError, OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path} (truncated or corrupt tarball?): {type(exc).__name__}: {exc}") from exc
    return _split(records, path, urls)
