"""Real rows for system tests, read from DATA_DIR without the training package."""

from __future__ import annotations

import glob
import tarfile

import pytest

from tests.conftest import data_dir


def imdb_test_reviews(count: int) -> list[str]:
    """The first ``count // 2`` positive and negative IMDB test reviews in the archive."""
    archives = sorted(glob.glob(str(data_dir() / "aclImdb*.tar.gz")))
    if not archives:
        pytest.skip(f"no aclImdb*.tar.gz in {data_dir()} (set DATA_DIR)")
    found: dict[str, list[str]] = {"pos": [], "neg": []}
    with tarfile.open(archives[0], "r:gz") as archive:
        for member in archive:
            parts = member.name.split("/")
            if (member.isfile() and len(parts) == 4 and parts[1] == "test"
                    and len(found.get(parts[2], [None] * count)) < count // 2):
                found[parts[2]].append(archive.extractfile(member).read().decode("utf-8", "replace"))
                if all(len(v) == count // 2 for v in found.values()):
                    break
    return [review for pair in zip(found["pos"], found["neg"]) for review in pair]
