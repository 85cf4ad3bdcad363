"""Drift references for the served models: their validation rows through the served model.

Each model version gets ``reference.json`` (server.core.drift): what its signals looked like
on the validation split (never the test set), computed by ``server.reference`` — the same
signal functions the server uses live. ``train-export`` calls this after each export;
``python -m training reference`` rebuilds them for a repository without training.
"""

from __future__ import annotations

from pathlib import Path

from server.reference import write_reference
from training import datasets, mnist_model, sentiment_model
from training.pipeline_common import SEED, _log

VARIANTS = {"mnist": ("mnist", "mnist_int8"), "sentiment": ("sentiment", "sentiment_int8")}


def mnist_reference(repository: str, data, params: mnist_model.MnistParams) -> None:
    _, (x_val, _) = mnist_model.fit_validation_split(data, params)
    source = (f"validation split: the last {params.validation_fraction:.0%} of the MNIST "
              f"training split ({len(x_val)} images)")
    for name in VARIANTS["mnist"]:
        _write(repository, name, {"image": x_val}, source)


def sentiment_reference(repository: str, data, params) -> None:
    _, (val_texts, _), _, _ = sentiment_model.fit_validation_split(data, params, SEED)
    source = f"validation split: {len(val_texts)} IMDB training reviews of films held out of fit"
    for name in VARIANTS["sentiment"]:
        _write(repository, name, list(val_texts), source)


def _write(repository: str, name: str, rows, source: str) -> None:
    if not (Path(repository) / name / "config.pbtxt").is_file():
        return  # a subset run (--models) or quick mode may not have written it
    path = write_reference(Path(repository), name, rows, source)
    _log(f"{name}: drift reference {path}")


def write_references(repository: str, data_dir: str | None, models: tuple[str, ...],
                     quick: bool = False, architecture: str | None = None) -> None:
    """Rebuild the references of ``models`` (and their INT8 variants) in ``repository``."""
    if "mnist" in models:
        params = mnist_model.MnistParams()
        if quick:
            params.train_limit = 2000
        mnist_reference(repository, datasets.load_mnist(data_dir), params)
    if "sentiment" in models:
        params = sentiment_model.default_params(architecture or sentiment_model.DEFAULT_ARCHITECTURE)
        if quick:
            params.train_limit = 1000
        sentiment_reference(repository, datasets.load_imdb_with_movies(data_dir), params)
