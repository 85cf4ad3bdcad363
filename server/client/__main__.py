"""``python -m server.client``: ask a running server about digits and reviews.

    python -m server.client mnist digit.png [more.jpg ...]
    python -m server.client sentiment "a wonderful film" "a dull one"
    cat reviews.txt | python -m server.client sentiment      # one text per line (or "-")

Only the command line lives here: connecting, building requests and reading replies is
the public API in :mod:`server.client.api` (KServe v2 gRPC through the package's own
stubs and plain grpcio, no tritonclient, so it runs from the serving install); reading
images needs Pillow (the ``client`` extra). Every failure is one line on stderr and a
non-zero exit. Like the rest of the package, it imports nothing from the server but
``server.protocol``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from server.client.api import (DEFAULT_URL, ClientError, Connection, connect, image_request,
                               output_array, text_request)
from server.client.drift import DEFAULT_METRICS_URL, drift_lines, read_drift
from server.client.rollout import DEFAULT_HTTP_URL, read_rollout, rollout_lines

TEXT_CHUNK = 32  # texts per request when reading many lines (below max_batch_size)
EXIT_FAILED, EXIT_USAGE = 1, 2


# ---- mnist ----------------------------------------------------------------------------
def classify_digits(conn: Connection, model: str, paths: Sequence[Path]) -> list[str]:
    from server.client.images import ImageError, load_digit

    try:
        images = np.stack([load_digit(p) for p in paths])
    except ImageError as exc:
        raise ClientError(str(exc)) from None
    probabilities = output_array(conn.infer(image_request(model, images)), "probabilities")
    return [_digit_line(path, row) for path, row in zip(paths, probabilities)]


def _digit_line(path: Path, probabilities: np.ndarray) -> str:
    top = np.argsort(probabilities)[::-1][:3]
    best, *others = top
    rest = ", ".join(f"{d} ({probabilities[d]:.1%})" for d in others)
    return f"{path}: {best} ({probabilities[best]:.1%})   next: {rest}"


# ---- sentiment ------------------------------------------------------------------------
def score_texts(conn: Connection, model: str, texts: Iterable[str]) -> Iterator[str]:
    for chunk in _chunks(texts, TEXT_CHUNK):
        request = text_request(model, chunk, raw=False)  # typed bytes_contents, as ever
        positive = output_array(conn.infer(request), "probability").reshape(-1)
        for text, p in zip(chunk, positive):
            label, confidence = ("positive", p) if p >= 0.5 else ("negative", 1.0 - p)
            yield f"{label}  {confidence:6.1%}  {_shorten(text)}"


def _chunks(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _shorten(text: str, width: int = 70) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[:width - 1] + "…"


def _stdin_lines() -> Iterator[str]:
    for line in sys.stdin:
        if line.strip():
            yield line.rstrip("\n")


# ---- command line ---------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m server.client",
        description="Ask an onnx-serve (or any KServe v2 gRPC) server about handwritten "
                    "digits and movie reviews.")
    parser.add_argument("--url", default=DEFAULT_URL,
                        help=f"server gRPC address host:port (default {DEFAULT_URL}; "
                             "grpcs://host:port for TLS)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for each answer (default 10)")
    parser.add_argument("--ca-file", type=Path, default=None,
                        help="PEM CA bundle to verify a TLS server (implies TLS)")
    parser.add_argument("--model", default=None,
                        help="model name on the server (default: the command's name)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    digits = commands.add_parser("mnist", help="classify images of handwritten digits")
    digits.add_argument("images", nargs="+", type=Path,
                        help="PNG/JPEG files: any size, dark-on-light or light-on-dark")
    text = commands.add_parser(
        "sentiment", help="positive or negative: prints the label and its probability")
    text.add_argument("texts", nargs="*",
                      help="texts to score; none or '-' reads one text per line from stdin")
    commands.add_parser("services", help="list the server's gRPC services and methods "
                                         "(server reflection, like grpcurl list/describe)")
    drift = commands.add_parser("drift", help="each model's drift from its training reference "
                                              "(PSI per signal, from the server's /metrics)")
    drift.add_argument("drift_model", nargs="?", metavar="MODEL", help="only this model")
    drift.add_argument("--metrics-url", default=DEFAULT_METRICS_URL,
                       help=f"the server's Prometheus endpoint (default {DEFAULT_METRICS_URL})")
    rollout = commands.add_parser("rollout", help="a model's canary split, shadow agreement "
                                                  "and latency per version (REST)")
    rollout.add_argument("rollout_model", metavar="MODEL", help="the model")
    rollout.add_argument("--http-url", default=DEFAULT_HTTP_URL,
                         help=f"the server's REST address (default {DEFAULT_HTTP_URL})")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise ClientError(f"--timeout must be > 0, got {args.timeout!r}")
    if args.command == "drift":  # Prometheus over HTTP, not gRPC
        for line in drift_lines(read_drift(args.metrics_url, args.timeout), args.drift_model):
            print(line)
        return 0
    if args.command == "rollout":  # REST, not gRPC
        for line in rollout_lines(*read_rollout(args.http_url, args.rollout_model,
                                                 args.timeout)):
            print(line)
        return 0
    conn = connect(args.url, args.timeout, args.ca_file)
    model = args.model or args.command
    if args.command == "services":
        for service, methods in conn.services().items():
            print(service)
            for method in methods:
                print(f"  {method}")
        return 0
    if args.command == "mnist":
        for line in classify_digits(conn, model, args.images):
            print(line)
        return 0
    texts = _stdin_lines() if args.texts in ([], ["-"]) else iter(args.texts)
    for line in score_texts(conn, model, texts):
        print(line, flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `... | head`: the reader left; no traceback for that
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
