"""``make bench``: throughput and latency of the server, beside bare ONNX Runtime.

    python -m tools.bench --model-repository models [--url host:port] [--duration-s 4]
                           [--concurrency 1,8,32,64] [--workers 1,2] [--compare-spinning]

Starts a server itself (subprocess, OS-chosen port) unless ``--url`` is given, then a
closed-loop load generator (grpc.aio, in its own process so it does not share the
GIL with anything) sweeps the concurrency for each model, one input row per request.
Mean batch sizes come from ModelStatistics deltas; server CPU per request from the
CPU time of the server's processes (supervisor and workers) over each point. With
``--workers 1,2`` the sweep runs once per worker count. In-process ONNX Runtime at fixed
batch sizes gives the ceiling the server is measured against. Figures only: no pass
or fail. Writes ``bench-results/bench.json`` and ``latency_vs_throughput.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tools.launcher import LaunchError, ServerLauncher

MODELS = ("mnist", "sentiment")
# INT8 variants written by `make train-export`: benchmarked beside FP32 when the repository has them.
INT8_MODELS = ("mnist_int8", "sentiment_int8")


def is_image_model(model: str) -> bool:
    """mnist and its variants (mnist_int8) take images; the others take text."""
    return model.split("_")[0] == "mnist"


def default_models(repository: Path) -> str:
    present = [m for m in INT8_MODELS if (repository / m / "config.pbtxt").is_file()]
    return ",".join([*MODELS, *present])
SAMPLES = 256  # distinct inputs cycled through per model


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- inputs ---------------------------------------------------------------------------
def _data_dir() -> Path | None:
    value = os.environ.get("DATA_DIR")
    return Path(value) if value else None


def mnist_images(count: int = SAMPLES) -> tuple[np.ndarray, str]:
    """float32 (count, 28, 28, 1) in [0, 1]: MNIST test digits when DATA_DIR has them."""
    folder = _data_dir()
    if folder is not None and (folder / "mnist.npz").is_file():
        with np.load(folder / "mnist.npz") as data:
            pixels = data["x_test"][:count]
        return (pixels.astype(np.float32) / 255.0)[..., np.newaxis], "MNIST test digits"
    rng = np.random.default_rng(0)
    return rng.random((count, 28, 28, 1), dtype=np.float32), "random images"


def reviews(count: int = SAMPLES) -> tuple[list[str], str]:
    """IMDB test reviews when DATA_DIR has the archive, else synthetic sentences."""
    folder = _data_dir()
    archives = sorted(folder.glob("aclImdb*.tar.gz")) if folder is not None else []
    if archives:
        texts = []
        with tarfile.open(archives[0], "r:gz") as tar:
            for member in tar:
                name = member.name
                if member.isfile() and "/test/" in name and name.endswith(".txt") and (
                        "/pos/" in name or "/neg/" in name):
                    texts.append(tar.extractfile(member).read().decode("utf-8", "replace"))
                    if len(texts) == count:
                        return texts, "IMDB test reviews"
    rng = np.random.default_rng(0)
    words = ("the film was a wonderful moving story with great acting but the plot felt "
             "slow boring and the ending was awful yet I loved every minute of it").split()
    return [" ".join(rng.choice(words, size=int(rng.integers(8, 120))))
            for _ in range(count)], "synthetic sentences"


def build_requests(model: str) -> list:
    """ModelInferRequests of one input row each (texts in the typed BYTES field)."""
    from server.client import image_request, text_request

    if is_image_model(model):
        return [image_request(model, image[np.newaxis]) for image in mnist_images()[0]]
    return [text_request(model, [text], raw=False) for text in reviews()[0]]


# ---- load generator (runs in the worker process) --------------------------------------
@dataclass(frozen=True)
class Load:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    first_error: str
    answered: int = 0  # every answered call, warm-up included (for CPU per request)


_REQUESTS: dict[str, list] = {}


def run_load(url: str, model: str, concurrency: int, duration_s: float,
             warmup_s: float) -> Load:
    """Closed loop: ``concurrency`` callers, each sends its next request on an answer."""
    if model not in _REQUESTS:
        _REQUESTS[model] = build_requests(model)
    return asyncio.run(_drive(url, _REQUESTS[model], concurrency, duration_s, warmup_s))


async def _drive(url: str, requests: list, concurrency: int, duration_s: float,
                 warmup_s: float) -> Load:
    import grpc

    from server.protocol import grpc_service_pb2_grpc as pb_grpc

    latencies: list[float] = []
    errors: list[str] = []
    answered = 0
    async with grpc.aio.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        measure_from = time.perf_counter() + warmup_s
        stop = measure_from + duration_s

        async def caller(index: int) -> None:
            nonlocal answered
            while (sent := time.perf_counter()) < stop:
                request = requests[index % len(requests)]
                index += concurrency
                try:
                    await stub.ModelInfer(request, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    if sent >= measure_from:
                        errors.append(f"{exc.code().name}: {exc.details()}")
                    continue
                answered += 1
                if sent >= measure_from:
                    latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        seconds = max(time.perf_counter(), stop) - measure_from
    ms = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    return Load(len(latencies), len(errors), seconds, float(np.percentile(ms, 50)),
                float(np.percentile(ms, 99)), errors[0] if errors else "", answered)


# ---- the server -----------------------------------------------------------------------
class BenchServer(ServerLauncher):
    """``python -m server`` on OS-chosen ports (``tools.launcher``), until :meth:`stop`;
    metrics on, as deployed. ``cwd`` picks the checkout that serves (peer_compare)."""

    def __init__(self, repository: Path, *extra: str, timeout_s: float = 180.0,
                 cwd: Path | None = None):
        try:
            super().__init__(repository, *extra, cwd=cwd, ready_timeout_s=timeout_s)
        except LaunchError:
            raise SystemExit("bench: the server did not become ready:\n"
                             + self.log_tail(20)) from None

    @property
    def url(self) -> str:
        return self.address

    def stop(self, timeout_s: float = 60.0) -> int | None:
        return super().stop(timeout_s)


def batch_counters(url: str, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) of the model's versions, from ModelStatistics."""
    import grpc

    from server.protocol import grpc_service_pb2 as pb
    from server.protocol import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(url) as channel:
        try:
            stats = pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
                pb.ModelStatisticsRequest(name=model), timeout=10)
        except grpc.RpcError:  # a server without statistics (the do-nothing peer)
            return 0, 0
    return (sum(s.inference_count for s in stats.model_stats),
            sum(s.execution_count for s in stats.model_stats))


def process_tree_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of ``pid`` and its live children (Linux /proc)."""
    if pid is None:
        return float("nan")
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (OSError, ValueError, IndexError):
            continue
        pending += [int(c) for c in children]
    return total


def sweep(url: str, models: list[str], levels: list[int], duration_s: float,
          label: str, server_pid: int | None = None) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")
    points = []
    total = len(models) * len(levels)
    with ProcessPoolExecutor(1, mp_context=ctx) as worker:
        for model in models:
            for concurrency in levels:
                _say(f"[{label} {len(points) + 1}/{total}] {model} concurrency {concurrency} "
                     f"for {duration_s:g} s ...")
                rows0, runs0 = batch_counters(url, model)
                cpu0 = process_tree_cpu_s(server_pid)
                load = worker.submit(run_load, url, model, concurrency, duration_s,
                                     min(1.0, duration_s / 4)).result()
                cpu1 = process_tree_cpu_s(server_pid)
                rows1, runs1 = batch_counters(url, model)
                mean_batch = (rows1 - rows0) / max(1, runs1 - runs0)
                # Over warm-up and measurement alike: CPU per request of both.
                cpu_ms = (cpu1 - cpu0) * 1e3 / max(1, load.answered)
                point = {"model": model, "concurrency": concurrency, "server": label,
                         "throughput_rps": load.requests / load.seconds,
                         "p50_ms": load.p50_ms, "p99_ms": load.p99_ms,
                         "mean_batch_size": mean_batch, "requests": load.requests,
                         "server_cpu_ms_per_request": cpu_ms,
                         "errors": load.errors, "first_error": load.first_error}
                _say(f"    {point['throughput_rps']:8.0f} req/s  p50 {load.p50_ms:7.2f} ms  "
                     f"p99 {load.p99_ms:7.2f} ms  mean batch {mean_batch:5.1f}  "
                     f"server CPU {cpu_ms:5.3f} ms/req"
                     + (f"  {load.errors} errors, e.g. {load.first_error}" if load.errors
                        else ""))
                points.append(point)
    return points


# ---- bare ONNX Runtime ----------------------------------------------------------------
def ort_throughput(repository: Path, models: list[str], sizes: list[int], threads: int,
                   seconds: float = 1.5) -> list[dict]:
    """Rows/s of one in-process session per model at fixed batch sizes: the ceiling."""
    import onnxruntime as ort

    # The served tokenizer itself (as training uses it): the ceiling must see the
    # server's exact token ids and padded lengths.
    from server.core.tokenizer import Tokenizer

    out = []
    for model in models:
        version_dir = max((d for d in (repository / model).iterdir() if d.name.isdigit()),
                          key=lambda d: int(d.name))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(version_dir / "model.onnx"), options,
                                       providers=["CPUExecutionProvider"])
        feed_name = session.get_inputs()[0].name
        if is_image_model(model):
            pool, note = mnist_images()[0], "MNIST images"
        else:
            tokenizer = Tokenizer.from_directory(version_dir)
            encoded = [tokenizer.encode_padded(t) for t in reviews()[0]]
            lengths = [len(e) for e in encoded]
            bucket = max(set(lengths), key=lengths.count)  # the most common length bucket
            dtype = np.int32 if "int32" in session.get_inputs()[0].type else np.int64
            pool = np.stack([e for e in encoded if len(e) == bucket]).astype(dtype)
            note = f"reviews padded to {bucket} tokens"
        for size in sizes:
            batch = np.resize(pool, (size, *pool.shape[1:]))
            session.run(None, {feed_name: batch})  # warm this shape
            runs, started = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - started) < seconds or runs < 3:
                session.run(None, {feed_name: batch})
                runs += 1
            out.append({"model": model, "batch_size": size, "rows_per_s": runs * size / elapsed,
                        "ms_per_batch": elapsed / runs * 1e3, "inputs": note})
            _say(f"[onnxruntime] {model} batch {size}: {out[-1]['rows_per_s']:.0f} rows/s")
    return out


# ---- command line ---------------------------------------------------------------------
def _levels(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


FACES = ("native", "grpcio")


def _faces(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values or any(v not in FACES for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated faces out of {FACES}, "
                                         f"got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--url", default="",
                        help="benchmark this running server instead of starting one")
    parser.add_argument("--models", default="",
                        help="comma-separated (default: mnist, sentiment and their INT8 variants when present)")
    parser.add_argument("--concurrency", type=_levels, default=[1, 8, 32, 64])
    parser.add_argument("--batch-sizes", type=_levels, default=[1, 8, 32, 64],
                        help="in-process ONNX Runtime batch sizes")
    parser.add_argument("--duration-s", type=float, default=4.0,
                        help="measured seconds per point (after a short warm-up)")
    parser.add_argument("--intra-op-threads", type=int, default=0,
                        help="ORT threads, for the server started here and in-process "
                             "(0 = ORT default)")
    parser.add_argument("--server-pid", type=int, default=None,
                        help="with --url: the server's pid, for its CPU per request")
    parser.add_argument("--workers", type=_levels, default=[1],
                        help="server worker processes to sweep, e.g. 1,2 (--workers)")
    parser.add_argument("--faces", type=_faces, default=["native", "grpcio"],
                        help="gRPC faces to sweep (--grpc-frontend), e.g. native,grpcio")
    parser.add_argument("--compare-spinning", action="store_true",
                        help="sweep twice: server with --ort-spinning false, then true")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tools.bench_plot import plot, table

    models = [m for m in (args.models or default_models(args.model_repository)).split(",") if m]
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    if load_before > (os.cpu_count() or 1):
        _say(f"note: load average {load_before:.1f} on {os.cpu_count()} CPUs: other work "
             "competes with this benchmark; its figures will be low and noisy")
    points: list[dict] = []
    if args.url:
        points += sweep(args.url, models, args.concurrency, args.duration_s, "external",
                        args.server_pid)
    else:
        for face, workers, spinning in itertools.product(
                args.faces, args.workers, [False, True] if args.compare_spinning else [False]):
            label = f"{face} w{workers} spin {'on' if spinning else 'off'}"
            _say(f"starting the server ({label}) on {args.model_repository} ...")
            server = BenchServer(args.model_repository, "--ort-spinning",
                                 str(spinning).lower(), "--intra-op-threads",
                                 str(args.intra_op_threads), "--workers", str(workers),
                                 "--grpc-frontend", face)
            try:
                points += sweep(server.url, models, args.concurrency, args.duration_s,
                                label, server.proc.pid)
            finally:
                server.stop()
    ort_points = ort_throughput(args.model_repository, models, args.batch_sizes,
                                args.intra_op_threads)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"cpu_count": os.cpu_count(), "duration_s": args.duration_s,
              "load_average": {"start": load_before, "end": os.getloadavg()[0]},
              "inputs": {"mnist": mnist_images(1)[1], "sentiment": reviews(1)[1]},
              "server": points, "onnxruntime": ort_points,
              "wall_s": round(time.monotonic() - started, 1)}
    (args.out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(points, ort_points, args.out / "latency_vs_throughput.png")
    print(table(points, ort_points))
    _say(f"wrote {args.out / 'bench.json'} and {args.out / 'latency_vs_throughput.png'} "
         f"in {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
