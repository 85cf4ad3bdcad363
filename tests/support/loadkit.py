"""Helpers shared by the reliability tests: request builders, reference answers, /proc.

Only our own stubs (``server.protocol``) are used here: tritonclient must stay out of
the test process (both register the same protobuf symbols).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import grpc
import numpy as np

from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
# One home for wire helpers; the old names stay for the reliability tests.
from tests.support.wire import bytes_raw as encode_bytes  # noqa: F401
from tests.support.wire import image_request, text_request
from tests.support.wire import output as output_array  # noqa: F401


def stub(address: str) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))


def aio_stub(address: str) -> tuple[grpc.aio.Channel, pb_grpc.GRPCInferenceServiceStub]:
    """A grpc.aio channel and stub; create inside the running event loop."""
    channel = grpc.aio.insecure_channel(address)
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


def mnist_request(images: np.ndarray, *, raw: bool = True, request_id: str = "",
                  model: str = "mnist") -> pb.ModelInferRequest:
    return image_request(images, model=model, raw=raw, id=request_id)


def sentiment_request(texts: list[bytes], *, raw: bool = True,
                      request_id: str = "") -> pb.ModelInferRequest:
    return text_request(texts, raw=raw, id=request_id)


class MnistReference:
    """ONNX Runtime on the served mnist file, run directly: the expected answers."""

    def __init__(self, repository: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = ort.InferenceSession(str(repository / "mnist" / "1" / "model.onnx"),
                                             options, providers=["CPUExecutionProvider"])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self._session.run(["probabilities"], {"image": images.astype(np.float32)})[0]


def distinct_images(count: int, seed: int = 0) -> np.ndarray:
    """``count`` images whose mnist answers differ from one another (random noise + a tag).

    Random pixels alone give similar probabilities; scaling each image by its own factor
    and drawing a per-image stripe makes swapped answers visible.
    """
    rng = np.random.default_rng(seed)
    images = rng.random((count, 28, 28, 1), dtype=np.float32)
    for index in range(count):
        images[index, index % 28, :, 0] = 1.0
        images[index, :, (index // 28) % 28, 0] = 1.0
        images[index] *= 0.25 + 0.75 * ((index * 7919) % 101) / 100
    return images


def copy_mnist(source: Path, target_repo: Path, dynamic_batching: str,
               name: str = "mnist", max_batch_size: int = 64) -> Path:
    """A copy of ``source/mnist`` as ``target_repo/name`` with its own batching block."""
    target = target_repo / name
    target.mkdir(parents=True)
    (target / "1").mkdir()
    shutil.copy2(source / "mnist" / "1" / "model.onnx", target / "1" / "model.onnx")
    (target / "config.pbtxt").write_text(f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [ {{ name: "image" data_type: TYPE_FP32 dims: [ 28, 28, 1 ] }} ]
output [ {{ name: "probabilities" data_type: TYPE_FP32 dims: [ 10 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
dynamic_batching {{ {dynamic_batching} }}
""")
    return target


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def model_stats(grpc_stub, name: str) -> pb.ModelStatistics:
    response = grpc_stub.ModelStatistics(pb.ModelStatisticsRequest(name=name), timeout=10)
    assert len(response.model_stats) == 1, response
    return response.model_stats[0]


def wait_until(predicate, timeout_s: float = 10.0, interval_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


def tracebacks(log: str) -> list[str]:
    """Log lines that show a traceback, an unexpected failure or a lost asyncio error."""
    markers = ("Traceback", "failed unexpectedly", "never retrieved", "Task was destroyed",
               "Exception in callback")
    return [line for line in log.splitlines() if any(m in line for m in markers)]


def scrape(metrics_port: int) -> dict[tuple[str, tuple], float]:
    """One real HTTP scrape of /metrics: {(sample name, sorted labels): value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(samples: dict, name: str, **labels) -> float:
    """The sum of ``name`` over the samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(value for (sample, found), value in samples.items()
               if sample == name and want <= set(found))


def access_log_ms(log: str, status: str) -> list[float]:
    """Server-side milliseconds of ModelInfer calls with ``status`` from the access log."""
    import re

    pattern = re.compile(rf"status={re.escape(status)} ms=([0-9.]+)")
    return [float(m.group(1)) for m in pattern.finditer(log)]


def traceback_report(log: str, limit: int = 3) -> str:
    """The first ``limit`` suspicious log lines, each with the 25 lines that follow it."""
    lines = log.splitlines()
    markers = ("Traceback", "failed unexpectedly", "never retrieved", "Task was destroyed",
               "Exception in callback")
    hits = [i for i, line in enumerate(lines) if any(m in line for m in markers)]
    return "\n----\n".join("\n".join(lines[max(i - 3, 0):i + 25]) for i in hits[:limit])
