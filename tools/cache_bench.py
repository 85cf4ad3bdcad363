"""``python -m tools.cache_bench``: what Triton's response cache buys, on this machine.

    python -m tools.cache_bench --model-repository models [--concurrency 32] [--rounds 2]

Starts a server on a copy of the repository's ``mnist`` with ``response_cache { enable:
true }`` and drives it with 1-image gRPC requests from another process, in alternating
rounds: every request new (all misses), and a 90 %-hit mix (nine in ten from 64 images
answered before, one in ten new). Then one caller sends a cached image over and over for
a hit's latency at c=1. Prints req/s, p50/p99 and the ratio; writes
``bench-results/cache_bench.json``. Figures only, no goals enforced here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from tools.launcher import LaunchError, ServerLauncher

HOT_IMAGES = 64


def _requests(seed: int, count: int, hit_share: float) -> list:
    from server.client import image_request

    rng = np.random.default_rng(seed)
    hot = np.random.default_rng(0).random((HOT_IMAGES, 1, 28, 28, 1), dtype=np.float32)
    out = []
    for _ in range(count):
        image = (hot[rng.integers(HOT_IMAGES)] if rng.random() < hit_share
                 else rng.random((1, 28, 28, 1), dtype=np.float32))
        out.append(image_request("mnist", image))
    return out


def drive(address: str, seed: int, hit_share: float, concurrency: int,
          duration_s: float) -> dict:
    from tools.bench import _drive

    requests = _requests(seed, 60_000 if hit_share < 1 else HOT_IMAGES, hit_share)
    load = asyncio.run(_drive(address, requests, concurrency, duration_s, 1.0))
    return {"rps": load.requests / load.seconds, "p50_ms": load.p50_ms,
            "p99_ms": load.p99_ms, "errors": load.errors}


def _repository(source: Path, into: Path) -> Path:
    shutil.copytree(source / "mnist", into / "mnist",
                    ignore=shutil.ignore_patterns("*.png", "*.md"))
    config = into / "mnist" / "config.pbtxt"
    config.write_text(config.read_text() + "response_cache { enable: true }\n")
    return into


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.cache_bench")
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--server-args", default="", help="extra server flags, space separated")
    args = parser.parse_args(argv)
    results: dict[str, list[dict]] = {"all-miss": [], "90%-hit": [], "hit-c1": []}
    with tempfile.TemporaryDirectory() as folder:
        server = ServerLauncher(_repository(args.model_repository, Path(folder)),
                                "--response-cache-bytes", str(64 << 20),
                                *args.server_args.split(), wait=False)
        try:
            server.wait_ready(180)
        except LaunchError:
            raise SystemExit("cache_bench: the server did not start:\n" + server.log_tail(20))
        try:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(1, mp_context=ctx) as worker:
                for round_ in range(args.rounds):
                    for name, share in (("all-miss", 0.0), ("90%-hit", 0.9)):
                        point = worker.submit(drive, server.address, 1000 + round_, share,
                                              args.concurrency, args.duration_s).result()
                        results[name].append(point)
                        _print(name, args.concurrency, point)
                point = worker.submit(drive, server.address, 1, 1.0, 1, args.duration_s).result()
                results["hit-c1"].append(point)
                _print("hit-c1", 1, point)
        finally:
            server.stop(60)
    best = {name: max(p["rps"] for p in points) for name, points in results.items()}
    ratio = best["90%-hit"] / best["all-miss"]
    print(f"90%-hit {best['90%-hit']:.0f} req/s = {ratio:.2f}x all-miss {best['all-miss']:.0f}; "
          f"hit at c=1: p50 {results['hit-c1'][0]['p50_ms']:.3f} ms")
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "cache_bench.json").write_text(json.dumps(
        {"concurrency": args.concurrency, "results": results, "best_rps": best,
         "hit_to_miss_ratio": ratio}, indent=1))
    return 0


def _print(name: str, concurrency: int, point: dict) -> None:
    print(f"{name:9s} c={concurrency:<3d} {point['rps']:8.0f} req/s  p50 {point['p50_ms']:6.3f} ms"
          f"  p99 {point['p99_ms']:6.3f} ms  errors {point['errors']}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
