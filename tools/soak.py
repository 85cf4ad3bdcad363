"""Soak test: a real server under mixed load for minutes, with periodic hot reloads.

    python -m tools.soak --duration-s 600 --model-repository models

Starts ``python -m server`` (explicit model control) on free local ports, then runs
``--concurrency`` callers for ``--duration-s`` seconds: good mnist requests (answers
checked against ONNX Runtime run here), good sentiment requests, bad requests that
must get their own error code, and calls cancelled at random moments. mnist is
reloaded (RepositoryModelLoad) every ``--reload-every-s``. Every ``--report-every-s``
it prints the counts and the server's RSS and open file descriptors.

Exit status 0 only when no good request failed, every bad request got its expected
code, every reload succeeded, the server stayed up and its log has no traceback.
Traffic goes to 127.0.0.1 only; the run is bounded by ``--duration-s``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from server.client import ClientError, image_request, output_array, text_request
from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
from tools.launcher import LaunchError, ScreenedServer

TEXTS = [b"a wonderful, moving film with great acting", b"dull, slow and far too long",
         "caf\u00e9 \u2603 d\u00e9j\u00e0 vu".encode(), b"ok " * 400]


# ---- the server under test -------------------------------------------------------------
class Server(ScreenedServer):
    """``python -m server`` (explicit model control, mnist and sentiment loaded) from
    ``tools.launcher``; log lines with tracebacks are set aside in ``bad_lines`` and
    only the newest 5,000 lines are kept. Call :meth:`wait_ready` after constructing."""

    def __init__(self, repository: Path, extra: list[str]):
        super().__init__(repository, "--model-control-mode", "explicit",
                         "--startup-models", "mnist,sentiment", *extra,
                         wait=False, max_lines=5000)

    def wait_ready(self, timeout_s: float = 180, expect_ready: bool = True) -> None:
        try:
            super().wait_ready(timeout_s, expect_ready)
        except LaunchError:
            raise RuntimeError("server did not become ready:\n" + self.log_tail(50)) from None

    def stop(self, timeout_s: float = 60) -> int:
        return super().stop(timeout_s)


# ---- requests --------------------------------------------------------------------------
def mnist_request(images: np.ndarray) -> pb.ModelInferRequest:
    return image_request("mnist", images)


def sentiment_request(texts: list[bytes]) -> pb.ModelInferRequest:
    return text_request("sentiment", texts)  # raw, length-prefixed BYTES


def bad_requests() -> list[tuple[str, pb.ModelInferRequest, grpc.StatusCode]]:
    """Requests with a known error: (label, request, the code they must get)."""
    image = np.zeros((1, 28, 28, 1), np.float32)
    wrong_type = mnist_request(image)
    wrong_type.inputs[0].datatype = "FP64"
    wrong_shape = mnist_request(image)
    wrong_shape.inputs[0].shape[1] = 27
    short = mnist_request(image)
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    unknown = mnist_request(image)
    unknown.model_name = "no_such_model"
    prefix = sentiment_request([b"hello"])
    prefix.raw_input_contents[0] = struct.pack("<I", 1000) + b"hello"
    utf8 = sentiment_request([b"\xff\xfe"])
    empty = sentiment_request([b""])
    bad_output = mnist_request(image)
    bad_output.outputs.add(name="nope")
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    return [("wrong datatype", wrong_type, invalid), ("wrong shape", wrong_shape, invalid),
            ("short raw data", short, invalid),
            ("unknown model", unknown, grpc.StatusCode.NOT_FOUND),
            ("bad BYTES prefix", prefix, invalid), ("invalid UTF-8", utf8, invalid),
            ("empty text", empty, invalid),
            ("unknown output", bad_output, invalid)]


class MnistReference:
    def __init__(self, repository: Path):
        import onnxruntime as ort

        versions = sorted(int(p.name) for p in (repository / "mnist").iterdir()
                          if p.name.isdigit())
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(repository / "mnist" / str(versions[-1]) / "model.onnx"), options,
            providers=["CPUExecutionProvider"])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self._session.run(["probabilities"], {"image": images})[0]


# ---- the load --------------------------------------------------------------------------
@dataclass
class Tally:
    good_ok: int = 0
    good_failed: int = 0
    bad_expected: int = 0
    bad_unexpected: int = 0
    cancelled: int = 0
    reloads_ok: int = 0
    reloads_failed: int = 0
    failures: collections.Counter = field(default_factory=collections.Counter)

    def fail(self, what: str) -> None:
        self.failures[what[:200]] += 1


class Load:
    def __init__(self, client, reference: MnistReference, tally: Tally, seed: int):
        self.client = client
        self.reference = reference
        self.tally = tally
        self.rng = random.Random(seed)
        self.images = np.random.default_rng(seed).random((64, 28, 28, 1), dtype=np.float32)
        self.expected = reference(self.images)
        self.bad = bad_requests()

    async def good_mnist(self) -> None:
        start = self.rng.randrange(60)
        count = self.rng.choice([1, 1, 2, 4])
        try:
            reply = await self.client.ModelInfer(
                mnist_request(self.images[start:start + count]), timeout=30)
            got = output_array(reply, "probabilities")
            if not np.allclose(got, self.expected[start:start + count], rtol=1e-4, atol=1e-5):
                raise ValueError("mnist answer differs from ONNX Runtime's")
        except (grpc.aio.AioRpcError, ValueError, ClientError) as exc:
            self.tally.good_failed += 1
            self.tally.fail(f"mnist: {_describe(exc)}")
            return
        self.tally.good_ok += 1

    async def good_sentiment(self) -> None:
        texts = self.rng.sample(TEXTS, self.rng.randint(1, 3))
        try:
            reply = await self.client.ModelInfer(sentiment_request(texts), timeout=30)
            got = output_array(reply, "probability")
            if got.shape != (len(texts), 1) or not ((got >= 0) & (got <= 1)).all():
                raise ValueError(f"sentiment answer {got.ravel()} is not {len(texts)} "
                                 "probabilities")
        except (grpc.aio.AioRpcError, ValueError, ClientError) as exc:
            self.tally.good_failed += 1
            self.tally.fail(f"sentiment: {_describe(exc)}")
            return
        self.tally.good_ok += 1

    async def bad_request(self) -> None:
        label, request, expected = self.rng.choice(self.bad)
        try:
            await self.client.ModelInfer(request, timeout=30)
            code, details = grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
        if code == expected and details:
            self.tally.bad_expected += 1
        else:
            self.tally.bad_unexpected += 1
            self.tally.fail(f"bad request '{label}': {code.name} {details[:100]!r}, expected "
                            f"{expected.name}")

    async def cancelled_call(self) -> None:
        call = self.client.ModelInfer(mnist_request(self.images[:8]) if self.rng.random() < .5
                                      else sentiment_request(TEXTS), timeout=30)
        await asyncio.sleep(self.rng.choice([0, self.rng.uniform(0, 0.02)]))
        call.cancel()
        try:
            await call
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        self.tally.cancelled += 1

    async def worker(self, stop_at: float) -> None:
        while time.monotonic() < stop_at:
            draw = self.rng.random()
            if draw < 0.45:
                await self.good_mnist()
            elif draw < 0.75:
                await self.good_sentiment()
            elif draw < 0.9:
                await self.bad_request()
            else:
                await self.cancelled_call()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name} {exc.details()!r}"
    return str(exc)


async def _reloads(client, tally: Tally, every_s: float, stop_at: float) -> None:
    next_at = time.monotonic() + every_s
    while next_at < stop_at:
        await asyncio.sleep(max(next_at - time.monotonic(), 0))
        next_at += every_s
        started = time.monotonic()
        try:
            await client.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mnist"),
                                             timeout=120)
        except grpc.aio.AioRpcError as exc:
            tally.reloads_failed += 1
            tally.fail(f"reload of mnist: {_describe(exc)}")
            print(f"reload FAILED: {_describe(exc)}", flush=True)
            continue
        tally.reloads_ok += 1
        print(f"reloaded mnist in {time.monotonic() - started:.2f} s", flush=True)


async def _reports(server: Server, tally: Tally, every_s: float, started: float,
                   stop_at: float) -> None:
    while time.monotonic() < stop_at:
        await asyncio.sleep(min(every_s, max(stop_at - time.monotonic(), 0.01)))
        elapsed = time.monotonic() - started
        print(f"[{elapsed:6.0f} s] good ok {tally.good_ok} failed {tally.good_failed} | bad "
              f"expected {tally.bad_expected} unexpected {tally.bad_unexpected} | cancelled "
              f"{tally.cancelled} | reloads {tally.reloads_ok} ok {tally.reloads_failed} "
              f"failed | {(tally.good_ok + tally.bad_expected) / elapsed:.0f} req/s | RSS "
              f"{server.rss_mib():.1f} MiB, fds {server.fds()}", flush=True)


async def run_load(server: Server, args, tally: Tally) -> None:
    channel = grpc.aio.insecure_channel(server.address)
    client = pb_grpc.GRPCInferenceServiceStub(channel)
    reference = MnistReference(args.model_repository)
    started = time.monotonic()
    stop_at = started + args.duration_s
    loads = [Load(client, reference, tally, args.seed + i) for i in range(args.concurrency)]
    await asyncio.gather(*(load.worker(stop_at) for load in loads),
                         _reloads(client, tally, args.reload_every_s, stop_at),
                         _reports(server, tally, args.report_every_s, started, stop_at))
    await channel.close()


# ---- entry -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.soak", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--reload-every-s", type=float, default=60.0)
    parser.add_argument("--report-every-s", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra server flag (repeatable), e.g. --server-arg=--access-log=true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.duration_s <= 0 or args.concurrency < 1 or args.reload_every_s <= 0:
        print("duration, concurrency and reload interval must be positive", file=sys.stderr)
        return 2
    server = Server(args.model_repository, args.server_arg)
    tally = Tally()
    try:
        server.wait_ready()
        rss0, fds0 = server.rss_mib(), server.fds()
        print(f"server ready on {server.address} (pid {server.proc.pid}): RSS {rss0:.1f} MiB, "
              f"fds {fds0}; soaking for {args.duration_s:.0f} s", flush=True)
        asyncio.run(run_load(server, args, tally))
        alive = server.proc.poll() is None
        rss1, fds1 = (server.rss_mib(), server.fds()) if alive else (float("nan"), -1)
    finally:
        code = server.stop()
    print("\n==== soak summary ====")
    print(f"accepted (good) requests: {tally.good_ok + tally.good_failed}, failed: "
          f"{tally.good_failed}")
    print(f"bad requests with the expected error: {tally.bad_expected}, unexpected: "
          f"{tally.bad_unexpected}")
    print(f"cancelled calls: {tally.cancelled}; mnist reloads: {tally.reloads_ok} ok, "
          f"{tally.reloads_failed} failed")
    print(f"server RSS {rss0:.1f} -> {rss1:.1f} MiB, open fds {fds0} -> {fds1}; exit code "
          f"{code}; log lines with tracebacks: {len(server.bad_lines)}")
    for what, count in tally.failures.most_common(10):
        print(f"  {count} x {what}")
    for line in server.bad_lines[:10]:
        print(f"  log: {line}")
    ok = (alive and code == 0 and not tally.good_failed and not tally.bad_unexpected
          and not tally.reloads_failed and not server.bad_lines)
    print("SOAK PASSED" if ok else "SOAK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
