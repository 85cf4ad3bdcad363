"""Load-time rollout settings for the tests: a model repository with mnist versions 1 and
2 (the same weights) whose config.pbtxt serves only the latest, the Triton load config
override that serves both with a rollout, and tritonclient run in its own process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import grpc

from server.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.support.restkit import call_json
from tests.support.wire import image_request, mnist_images

SCRIPT = Path(__file__).parent / "tritonclient_rollout.py"


def two_version_repo(models_dir: Path, target: Path) -> Path:
    shutil.copytree(models_dir / "mnist", target / "mnist",
                    ignore=shutil.ignore_patterns("*.png", "*.md"))
    shutil.copytree(target / "mnist" / "1", target / "mnist" / "2")
    return target


def override(http_port: int, **parameters: str) -> str:
    """The served mnist config as JSON (what a client reads back) with both versions and
    ``parameters`` (canary_weight="0.3", ...) in place of the files' parameters."""
    status, config = call_json(http_port, "GET", "/v2/models/mnist/config")
    assert status == 200, config
    config["version_policy"] = {"specific": {"versions": [1, 2]}}
    config["parameters"] = {k: {"string_value": v} for k, v in parameters.items()}
    return json.dumps(config)


def tritonclient(protocol: str, url: str, config: str | None, requests: int,
                 tmp_path: Path) -> dict:
    """tritonclient (grpc or http) loads mnist with ``config`` (None: no load) and sends
    ``requests`` unversioned requests: {"error": ..., "versions": {version: count}}."""
    path = "-"
    if config is not None:
        path = str(tmp_path / f"override-{protocol}.json")
        Path(path).write_text(config, encoding="utf-8")
    run = subprocess.run([sys.executable, str(SCRIPT), protocol, url, "mnist", path,
                          str(requests)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout)


class Traffic:
    """Threads sending unversioned 1-image ModelInfer calls until stopped, each on its own
    channel: ``answered`` holds the version of every answer in order, ``failures`` the
    status code of every failed call. A context manager: leaving it stops and joins them."""

    def __init__(self, address: str, threads: int = 4, timeout_s: float = 60):
        self.address = address
        self.timeout_s = timeout_s
        self.answered: list[str] = []
        self.failures: list = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send) for _ in range(threads)]

    def _send(self) -> None:
        image = mnist_images(1)[0]
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not self._stop.is_set():
                try:
                    reply = stub.ModelInfer(image_request(image), timeout=self.timeout_s)
                    self.answered.append(reply.model_version)
                except grpc.RpcError as exc:
                    self.failures.append(exc.code())

    def __enter__(self) -> "Traffic":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
