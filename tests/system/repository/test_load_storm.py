"""A storm of concurrent loads of one model (one process, explicit mode): the model is
built at most twice (the load running and one that starts after the others arrived,
whose outcome they share), not once per call. Counted from the "version ... ready" log
lines. A broken model's storm is answered INTERNAL for every call."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc

from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess
from tests.support.loadkit import copy_mnist, wait_until


def _load(address: str, name: str) -> str:
    with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        try:
            pb_grpc.GRPCInferenceServiceStub(ch).RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(model_name=name), timeout=300)
            return "OK"
        except grpc.RpcError as exc:
            return exc.code().name


def test_a_load_storm_builds_the_model_at_most_twice(tmp_path, models_dir):
    copy_mnist(models_dir, tmp_path, "", name="digits")
    broken = copy_mnist(models_dir, tmp_path, "", name="broken")
    (broken / "1" / "model.onnx").write_bytes(b"not an onnx file")
    proc = ServerProcess(tmp_path, "--model-control-mode", "explicit")
    try:
        with ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(lambda _: _load(proc.address, "digits"), range(12)))
            broken_codes = list(pool.map(lambda _: _load(proc.address, "broken"), range(12)))
        assert set(codes) == {"OK"}, codes
        assert set(broken_codes) == {"INTERNAL"}, broken_codes
        assert wait_until(lambda: "model digits version 1 ready on" in proc.log, 30)
        builds = proc.log.count("model digits version 1 ready on")
        assert builds <= 2, f"{builds} builds of digits for 12 concurrent loads"
    finally:
        proc.stop()
