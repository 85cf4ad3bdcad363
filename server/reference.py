"""``python -m server.reference``: write a drift reference for any model in a repository.

    python -m server.reference --model-repository models --model mnist --npy images.npy
    python -m server.reference --model-repository models --model sentiment --texts reviews.txt

Runs the model version (the latest, or ``--version``) on the sample rows a user supplies
(inputs as served: an ``.npy`` array for a model with one input, an ``.npz`` with one
array per input, or one text per line for a text model), through ONNX Runtime and the
model's own text pre-processing, and writes ``<model>/<version>/reference.json``: the
signals to watch (server.core.drift.default_signals) with bins and proportions. The
server then exports live drift against it (README: "Drift"). ``make train-export`` writes
the committed models' references the same way, from their validation splits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from server.core.drift import REFERENCE_FILE, build_reference, default_signals
from server.core.errors import ServingError
from server.core.model_config import read_model_config
from server.core.preprocess import TEXT_PREPROCESSOR, build_text_preprocessor
from server.core.runtime import OnnxSession, RuntimeOptions

ROWS_PER_RUN = 64


def latest_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    if not versions:
        raise ValueError(f"{model_dir} has no numbered version folder")
    return max(versions)


def write_reference(repository: Path, model: str, rows: dict[str, np.ndarray] | list[str],
                    source: str, version: int | None = None) -> Path:
    """Run ``model`` on ``rows`` (inputs by name, or texts) and write its reference.json."""
    model_dir = Path(repository) / model
    spec = read_model_config(model_dir)
    version = latest_version(model_dir) if version is None else version
    version_dir = model_dir / str(version)
    session = OnnxSession(version_dir / spec.model_filename,
                          RuntimeOptions(use_gpu=False), f"{model}:{version}")
    try:
        onnx_inputs = {t.name: t.datatype for t in session.inputs}
        preprocessor = None
        if TEXT_PREPROCESSOR in spec.parameters:
            preprocessor = build_text_preprocessor(spec.parameters, version_dir,
                                                   spec.inputs[0].name, onnx_inputs, model)
        if isinstance(rows, list):
            if preprocessor is None:
                raise ValueError(f"{model} has no text pre-processor: give --npy/--npz inputs")
            feeds = _token_feeds(preprocessor, rows)
        else:
            _check_shapes(spec, rows)
            feeds = _array_feeds(rows)
        widths = {t.name: int(np.prod(t.dims)) if t.dims else 1 for t in spec.outputs}
        signals = default_signals(widths, onnx_inputs,
                                  preprocessor.output_name if preprocessor else None)
        batches = ((feed, session.run(feed)) for feed in feeds)
        document = build_reference(model, version, signals, batches, source)
    finally:
        session.close()
    path = version_dir / REFERENCE_FILE
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path


def _check_shapes(spec, inputs: dict[str, np.ndarray]) -> None:
    for tensor in spec.inputs:
        rows = inputs[tensor.name]
        expected = list(tensor.dims)
        if rows.ndim != len(expected) + 1 or any(
                d != -1 and d != got for d, got in zip(expected, rows.shape[1:])):
            raise ValueError(f"input {tensor.name!r}: rows of shape {list(rows.shape[1:])} do "
                             f"not fit the model's {expected} (give an array [rows, "
                             f"{', '.join(map(str, expected))}])")


def _array_feeds(inputs: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    count = len(next(iter(inputs.values())))
    for start in range(0, count, ROWS_PER_RUN):
        yield {name: np.ascontiguousarray(a[start:start + ROWS_PER_RUN]) for name, a in inputs.items()}


def _token_feeds(preprocessor, texts: Iterable[str]) -> Iterator[dict[str, np.ndarray]]:
    """Token ids grouped by bucket length, as the server batches them."""
    by_length: dict[int, list[np.ndarray]] = {}
    values = np.array([t.encode("utf-8") for t in texts if t.strip()], dtype=object).reshape(-1, 1)
    for ids in preprocessor.rows(values):
        by_length.setdefault(ids.shape[1], []).append(ids)
    for rows in by_length.values():
        for start in range(0, len(rows), ROWS_PER_RUN):
            yield {preprocessor.output_name: np.concatenate(rows[start:start + ROWS_PER_RUN])}


def _read_rows(args, spec) -> dict[str, np.ndarray] | list[str]:
    if args.texts:
        return Path(args.texts).read_text(encoding="utf-8").splitlines()
    data = np.load(args.npy or args.npz, allow_pickle=False)
    if isinstance(data, np.ndarray):
        if len(spec.inputs) != 1:
            raise ValueError(f"{args.model} has {len(spec.inputs)} inputs: give an .npz with "
                             f"one array per input {[t.name for t in spec.inputs]}")
        return {spec.inputs[0].name: data.astype(spec.inputs[0].numpy_dtype, copy=False)}
    return {t.name: data[t.name].astype(t.numpy_dtype, copy=False) for t in spec.inputs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.reference",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", type=int, default=None, help="default: the latest")
    samples = parser.add_mutually_exclusive_group(required=True)
    samples.add_argument("--npy", help="an array of rows of the model's one input")
    samples.add_argument("--npz", help="one array of rows per input name")
    samples.add_argument("--texts", help="a text file: one text per line (text models)")
    parser.add_argument("--source", default=None, help="what the rows are, for the file")
    args = parser.parse_args(argv)
    try:
        spec = read_model_config(args.model_repository / args.model)
        rows = _read_rows(args, spec)
        source = args.source or f"user sample {args.npy or args.npz or args.texts}"
        path = write_reference(args.model_repository, args.model, rows, source, args.version)
    except (ServingError, OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    document = json.loads(path.read_text())
    print(f"{path}: {document['rows']} rows, signals "
          + ", ".join(s["name"] for s in document["signals"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
