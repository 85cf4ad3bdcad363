"""RSS and threads of a real server over N reloads under light load (issue #9, item 7).

    .venv/bin/python -m tools.reload_leak [--reloads 30] [--models mnist,sentiment]

(or ``.venv/bin/python tools/reload_leak.py``).

Starts ``python -m server`` on the committed repository in explicit mode, keeps four
clients sending mnist and sentiment requests, reloads the models in turn and prints
the server's resident memory and thread count after every reload.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if not __package__:  # run as a script: make ``server`` and ``tools`` importable
    sys.path.insert(0, str(ROOT))

from server.protocol import grpc_service_pb2 as pb  # noqa: E402
from server.protocol import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from tools.soak import Server, mnist_request, sentiment_request  # noqa: E402


async def client(address: str, stop: asyncio.Event, counts: dict) -> None:
    images = np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        turn = 0
        while not stop.is_set():
            request = (mnist_request(images) if turn % 2
                       else sentiment_request([b"a fine film"]))
            try:
                await stub.ModelInfer(request, timeout=30)
                outcome = "OK"
            except grpc.RpcError as exc:
                outcome = exc.code().name
            counts[outcome] = counts.get(outcome, 0) + 1
            turn += 1


async def run(reloads: int, models: list[str]) -> None:
    server = Server(ROOT / "models", [])
    server.wait_ready()
    stop, counts = asyncio.Event(), {}
    clients = [asyncio.ensure_future(client(server.address, stop, counts)) for _ in range(4)]
    try:
        await asyncio.sleep(2)
        rss0, threads0 = server.rss_mib(), server.threads()
        peak_rss, peak_threads = rss0, threads0
        print(f"start: RSS {rss0:.0f} MiB, {threads0} threads", flush=True)
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for number in range(1, reloads + 1):
                name = models[(number - 1) % len(models)]
                await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name))
                rss, count = server.rss_mib(), server.threads()
                peak_rss, peak_threads = max(peak_rss, rss), max(peak_threads, count)
                print(f"reload {number} {name}: RSS {rss:.0f} MiB, {count} threads", flush=True)
        await asyncio.sleep(2)  # the last replaced version drains and unloads
        rss1, threads1 = server.rss_mib(), server.threads()
        print(f"end: RSS {rss1:.0f} MiB ({rss1 - rss0:+.0f}, peak {peak_rss:.0f}), "
              f"{threads1} threads ({threads1 - threads0:+d}, peak {peak_threads}); "
              f"requests {counts}")
    finally:
        stop.set()
        await asyncio.gather(*clients)
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.reload_leak",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=30)
    parser.add_argument("--models", default="mnist,sentiment")
    args = parser.parse_args()
    asyncio.run(run(args.reloads, args.models.split(",")))


if __name__ == "__main__":
    main()
