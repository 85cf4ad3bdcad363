"""Model lifecycle: explicit load/unload, hot reload under load, poll mode, version
policies, failed loads that keep the old version serving, an empty repository."""

from __future__ import annotations

import asyncio
import shutil
import time

import grpc
import numpy as np
import pytest

from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess
from tests.support.wire import image_request, mnist_images, ort_session, output, text_request


@pytest.fixture
def repo(tmp_path, models_dir):
    for name in ("mnist", "sentiment"):
        shutil.copytree(models_dir / name, tmp_path / name)
    return tmp_path


def _set_policy(repo, name, policy):
    path = repo / name / "config.pbtxt"
    text = path.read_text()
    start = text.index("version_policy")
    end = text.index("\n", start)
    path.write_text(text[:start] + policy + text[end:])


async def _mnist_load(address, stop, images, expected, outcomes):
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        i = 0
        while not stop.is_set():
            k = i % len(images)
            try:
                response = await stub.ModelInfer(image_request(images[k:k + 1]), timeout=30)
                ok = np.allclose(output(response, "probabilities")[0], expected[k], atol=1e-5)
                outcomes.append("ok" if ok else "wrong answer")
            except grpc.RpcError as exc:
                outcomes.append(f"{exc.code().name}: {exc.details()}")
            i += 1


async def _reload_under_load(address, images, expected):
    stop = asyncio.Event()
    outcomes: list[str] = []
    clients = [asyncio.ensure_future(_mnist_load(address, stop, images, expected, outcomes))
               for _ in range(16)]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        await asyncio.sleep(0.5)
        for _ in range(5):
            await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mnist"))
            await asyncio.sleep(0.3)
        await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="sentiment"))
        with pytest.raises(grpc.RpcError) as info:
            await stub.ModelInfer(text_request(["gone for now"]))
        unloaded_code = info.value.code()
        await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="sentiment"))
        back = await stub.ModelInfer(text_request(["back again, and great"]))
        await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*clients)
    return outcomes, unloaded_code, back


def test_reload_under_load_fails_no_request(repo):
    images, _ = mnist_images(32)
    expected = ort_session(repo, "mnist").run(None, {"image": images})[0]
    proc = ServerProcess(repo, "--model-control-mode", "explicit",
                         "--startup-models", "mnist,sentiment")
    try:
        outcomes, unloaded_code, back = asyncio.run(
            _reload_under_load(proc.address, images, expected))
    finally:
        proc.stop()
    failed = [o for o in outcomes if o != "ok"]
    assert len(outcomes) > 200, f"too little load to prove anything: {len(outcomes)}"
    assert not failed, failed[:5]
    assert unloaded_code == grpc.StatusCode.UNAVAILABLE
    assert output(back, "probability").shape == (1, 1)
    assert proc.log.count("model mnist version 1 ready") == 6  # start + 5 reloads


def test_failed_reload_keeps_the_old_version_serving(repo):
    proc = ServerProcess(repo, "--model-control-mode", "explicit", "--startup-models", "mnist")
    try:
        with grpc.insecure_channel(proc.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            images, _ = mnist_images(2)
            before = output(stub.ModelInfer(image_request(images)), "probabilities")
            (repo / "mnist" / "2").mkdir()
            (repo / "mnist" / "2" / "model.onnx").write_bytes(b"not an onnx model at all")
            with pytest.raises(grpc.RpcError) as info:
                stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mnist"))
            assert "mnist:2" in info.value.details() and "ONNX Runtime" in info.value.details()
            after = stub.ModelInfer(image_request(images))
            assert after.model_version == "1"
            np.testing.assert_array_equal(output(after, "probabilities"), before)
            assert stub.ModelReady(pb.ModelReadyRequest(name="mnist")).ready
            index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
            assert index["mnist"].state == "READY" and "mnist:2" in index["mnist"].reason
            # A bad config.pbtxt is refused the same way.
            shutil.rmtree(repo / "mnist" / "2")
            (repo / "mnist" / "config.pbtxt").write_text("name: \"mnist\" max_batch_size: oops")
            with pytest.raises(grpc.RpcError) as info:
                stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mnist"))
            assert "config.pbtxt" in info.value.details()
            assert stub.ModelInfer(image_request(images)).model_version == "1"
    finally:
        proc.stop()
    assert "failed to load (previous versions keep serving)" in proc.log


def _wait_for(predicate, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_poll_mode_picks_up_new_versions_and_changed_configs(repo):
    mnist_config = (repo / "mnist" / "config.pbtxt").read_text()
    shutil.rmtree(repo / "sentiment")
    proc = ServerProcess(repo, "--model-control-mode", "poll",
                         "--repository-poll-interval-s", "0.3")
    try:
        with grpc.insecure_channel(proc.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            images, _ = mnist_images(1)
            assert stub.ModelInfer(image_request(images)).model_version == "1"
            shutil.copytree(repo / "mnist" / "1", repo / "mnist" / "2")
            assert _wait_for(lambda: stub.ModelInfer(image_request(images)).model_version == "2")
            meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="mnist"))
            assert list(meta.versions) == ["2"]  # latest 1: version 1 was unloaded
            # A broken config is reported and the serving version stays.
            (repo / "mnist" / "config.pbtxt").write_text("this is not a model config")
            assert _wait_for(lambda: "failed to load" in proc.log)
            assert stub.ModelInfer(image_request(images)).model_version == "2"
            # A new model folder appears and is served; a removed one is unloaded.
            shutil.copytree(repo / "mnist", repo / "digits")
            (repo / "digits" / "config.pbtxt").write_text(
                mnist_config.replace('name: "mnist"', 'name: "digits"'))
            assert _wait_for(lambda: stub.ModelReady(pb.ModelReadyRequest(name="digits")).ready)
            assert stub.ModelInfer(image_request(images, model="digits")).model_name == "digits"
            shutil.rmtree(repo / "digits")
            assert _wait_for(lambda: not stub.ModelReady(pb.ModelReadyRequest(name="digits")).ready)
    finally:
        proc.stop()


def test_version_policies_all_and_specific(repo):
    shutil.copytree(repo / "mnist" / "1", repo / "mnist" / "3")
    _set_policy(repo, "mnist", "version_policy { all { } }")
    images, _ = mnist_images(1)
    proc = ServerProcess(repo)
    try:
        with grpc.insecure_channel(proc.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="mnist"))
            assert list(meta.versions) == ["1", "3"]
            assert stub.ModelInfer(image_request(images, model_version="1")).model_version == "1"
            assert stub.ModelInfer(image_request(images)).model_version == "3"  # newest
            stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="mnist"))
            assert sorted(s.version for s in stats.model_stats) == ["1", "3"]
    finally:
        proc.stop()
    _set_policy(repo, "mnist", "version_policy { specific { versions: [ 1 ] } }")
    proc = ServerProcess(repo)
    try:
        with grpc.insecure_channel(proc.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ModelInfer(image_request(images)).model_version == "1"
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(image_request(images, model_version="3"))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        proc.stop()


def test_repository_without_loadable_model_starts_not_ready(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.pbtxt").write_text('name: "broken" platform: "onnxruntime_onnx"')
    proc = ServerProcess(tmp_path, expect_ready=False)
    try:
        with grpc.insecure_channel(proc.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(pb.ServerLiveRequest()).live
            assert not stub.ServerReady(pb.ServerReadyRequest()).ready
            index = stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
            assert [(m.name, m.state) for m in index] == [("broken", "UNAVAILABLE")]
            assert "input" in index[0].reason
    finally:
        proc.stop()
    assert "NOT ready" in proc.log and "broken" in proc.log
