"""Reaching the workers of a ``--workers N`` server one by one, from a test.

Each worker serves the gRPC services on its private socket ``<worker folder>/worker-
<i>.sock`` (folder and pid from the supervisor's "worker i started" log lines). A call
there with the ``x-onnxserve-local: 1`` header is answered from that worker's own
state; without it, it is a public call that this worker answers (and coordinates).
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import numpy as np

from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc

LOCAL = (("x-onnxserve-local", "1"),)
_STARTED_RE = re.compile(r"worker (\d+) started \(pid (\d+), folder (\S+)\)")


def _workers(proc) -> dict[int, tuple[int, Path]]:
    """The latest pid and folder of each worker index, from the supervisor's log."""
    found = {}
    for line in list(proc.lines):
        if m := _STARTED_RE.search(line):
            found[int(m.group(1))] = (int(m.group(2)), Path(m.group(3)))
    return found


def _local_stub(proc, index: int):
    folder = _workers(proc)[index][1]
    channel = grpc.insecure_channel(f"unix:{folder}/worker-{index}.sock")
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 28, 28, 1), dtype=np.float32)


def _count(stub, name: str = "mnist", metadata=()) -> int:
    reply = stub.ModelStatistics(pb.ModelStatisticsRequest(name=name), metadata=metadata,
                                 timeout=30)
    return sum(s.inference_count for s in reply.model_stats)


def _ready_locally(proc, index: int) -> bool:
    try:
        channel, stub = _local_stub(proc, index)
        with channel:
            return stub.ServerReady(pb.ServerReadyRequest(), metadata=LOCAL, timeout=5).ready
    except (grpc.RpcError, KeyError):
        return False


def served(proc, index: int, name: str) -> tuple[str, ...]:
    """The versions of ``name`` that worker ``index`` serves (its own index)."""
    channel, stub = _local_stub(proc, index)
    with channel:
        reply = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), metadata=LOCAL,
                                     timeout=30)
    return tuple(sorted(m.version for m in reply.models if m.name == name))


def call_on(proc, index: int, method: str, request, timeout: float = 300) -> str:
    """A public call answered (coordinated) by worker ``index``: the status code name."""
    channel, stub = _local_stub(proc, index)
    with channel:
        try:
            getattr(stub, method)(request, timeout=timeout)
            return "OK"
        except grpc.RpcError as exc:
            return exc.code().name
