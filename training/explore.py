"""Design exploration on VALIDATION only: ``python -m training.explore [--train-limit N] [--set k=v ...]``.

Trains a sentiment variant on (a subset of) the fit split and prints film-grouped
validation figures: review accuracy and ECE after temperature scaling, and the
short-text view (sentences, negations, contrasts, neutral text cut from validation
reviews). It never loads the test set's labels into a metric nor reads the probe set,
so it can be run as often as needed without spending the test set.
"""

from __future__ import annotations

import argparse
import json
import sys

from training import datasets, pipeline, sentiment_model
from training.sentiment_pipeline import calibrate


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.explore", description=__doc__)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--architecture", default=sentiment_model.DEFAULT_ARCHITECTURE,
                        choices=sorted(sentiment_model.ARCHITECTURE_DEFAULTS))
    parser.add_argument("--train-limit", type=int, default=None, help="stratified subset of training reviews")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a SentimentParams field (JSON value), e.g. chunks_per_review=0")
    args = parser.parse_args(argv)
    params = sentiment_model.default_params(args.architecture)
    params.train_limit, params.test_limit = args.train_limit, 2  # the test split is not evaluated here
    for item in args.set:
        key, _, value = item.partition("=")
        if not hasattr(params, key):
            parser.error(f"unknown field {key!r}")
        setattr(params, key, _value(value))
    data = datasets.load_imdb_with_movies(datasets.resolve_data_dir(args.data_dir))
    tokenizer, sets, info = sentiment_model.prepare(data, params, pipeline.SEED)
    sets.pop("test")
    model, history, seconds, epochs_run = sentiment_model.train(sets, params, pipeline.SEED, 2)
    result = {"overrides": args.set, "train_limit": args.train_limit, "epochs_run": epochs_run,
              "seconds": round(seconds), "info": info, **calibrate(model, sets),
              "history": {k: [round(float(v), 4) for v in vals] for k, vals in history.items()}}
    print("EXPLORE " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
