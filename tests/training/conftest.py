"""Shared fixtures for the training tests: repository root on sys.path, the real data dir.

Test modules use these fixtures only (never `from conftest import ...`), so another
conftest.py elsewhere in tests/ cannot shadow this one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def data_dir() -> Path:
    """$DATA_DIR, else ../shared/data relative to the repository root."""
    return Path(os.environ.get("DATA_DIR") or ROOT.parent / "shared" / "data").resolve()


def require(*names: str) -> Path:
    """The data dir, or skip (with the reason) when one of the files is missing."""
    directory = data_dir()
    missing = [n for n in names if not (directory / n).exists()]
    if missing:
        pytest.skip(f"real data not found: {missing} in {directory} (set DATA_DIR to the folder holding them)")
    return directory


IMDB_TARBALL = "aclImdb_v1_labeled.tar.gz"


@pytest.fixture(scope="session")
def imdb_tarball() -> Path:
    return require(IMDB_TARBALL) / IMDB_TARBALL


@pytest.fixture(scope="session")
def quick_data_dir() -> Path:
    return require("mnist.npz", IMDB_TARBALL)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return require("mnist.npz")


@pytest.fixture(scope="session")
def imdb_dir() -> Path:
    directory = data_dir()
    if not list(directory.glob("aclImdb*.tar.gz")) and not (directory / "aclImdb").is_dir():
        pytest.skip(f"real IMDB data not found in {directory} (set DATA_DIR)")
    return directory


@pytest.fixture(scope="session")
def imdb(imdb_dir):
    from training.datasets import load_imdb

    return load_imdb(str(imdb_dir))
