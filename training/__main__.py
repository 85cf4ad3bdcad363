"""CLI: ``python -m training train-export [--data-dir D] [--repository models] [--quick] ...``."""

from __future__ import annotations

import argparse
import os
import sys


def _parser() -> argparse.ArgumentParser:
    from training.pipeline import MODELS
    from training.sentiment_model import ARCHITECTURE_DEFAULTS, DEFAULT_ARCHITECTURE

    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train-export", help="train the models, export ONNX, write the model repository")
    p.add_argument("--data-dir", default=None, help="folder with mnist.npz and aclImdb*.tar.gz (default: $DATA_DIR)")
    p.add_argument("--repository", default="models", help="model repository to write (default: models)")
    p.add_argument("--quick", action="store_true", help="tiny subsets, 1 epoch, no accuracy gates (also QUICK=1)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--sentiment-architecture", default=DEFAULT_ARCHITECTURE, choices=sorted(ARCHITECTURE_DEFAULTS),
                   help=f"sentiment model body (default: {DEFAULT_ARCHITECTURE})")
    p.add_argument("--epochs-mnist", type=int, default=None, help="override the MNIST epoch count")
    p.add_argument("--epochs-sentiment", type=int, default=None, help="override the sentiment epoch count")
    r = sub.add_parser("reference", help="rebuild the drift references (reference.json) of a repository's "
                                         "models from their validation splits, without training")
    r.add_argument("--data-dir", default=None, help="folder with mnist.npz and aclImdb*.tar.gz (default: $DATA_DIR)")
    r.add_argument("--repository", default="models", help="model repository (default: models)")
    r.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    r.add_argument("--quick", action="store_true", help="the quick-train subsets (for out/quick-models)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from training import datasets, export, pipeline, quantize

    args = _parser().parse_args(argv)
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    unknown = sorted(set(models) - set(pipeline.MODELS))
    if unknown or not models:
        print(f"error: unknown --models {unknown or args.models!r}; choose from {','.join(pipeline.MODELS)}",
              file=sys.stderr)
        return 2
    if args.command == "reference":
        from training.references import write_references

        write_references(args.repository, datasets.resolve_data_dir(args.data_dir), models, args.quick)
        return 0
    epochs = {k: v for k, v in (("mnist", args.epochs_mnist), ("sentiment", args.epochs_sentiment)) if v}
    quick = args.quick or os.environ.get("QUICK", "").strip().lower() in ("1", "true", "yes")
    opts = pipeline.Options(data_dir=datasets.resolve_data_dir(args.data_dir), repository=args.repository,
                            quick=quick, models=models, epochs=epochs,
                            sentiment_architecture=args.sentiment_architecture)
    if opts.data_dir and not os.path.isdir(opts.data_dir):
        # Fail before importing TensorFlow or trying a download.
        print(f"error: data directory {opts.data_dir!r} does not exist; set DATA_DIR or pass --data-dir",
              file=sys.stderr)
        return 2
    try:
        pipeline.run(opts)
    except (datasets.DatasetError, datasets.DatasetNotFoundError, export.ParityError,
            pipeline.AccuracyTargetError, quantize.QuantizationError) as exc:
        print(f"error: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
