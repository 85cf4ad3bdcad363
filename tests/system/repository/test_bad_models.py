"""A model that disagrees with its config never serves, never takes the server down.

In process: tiny ONNX graphs (onnx.helper) whose config.pbtxt disagrees with them are
refused at load with a reason naming the tensor and both shapes, whatever exception
type ONNX Runtime raises. End to end: a real server starts with a bad model beside
mnist, and explicit and poll loads of bad models fail cleanly.
"""

from __future__ import annotations

import asyncio
import copy
import shutil

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.core.errors import ModelLoadError
from server.core.model import ModelVersion
from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
from server.core.repository import READY, UNAVAILABLE, ModelEntry, ModelRepository
from server.core.runtime import RuntimeOptions
from tests.conftest import ServerProcess
from tests.support import onnx_models as om
from tests.support.loadkit import metric, scrape, tracebacks, wait_until
from tests.support.wire import image_request, mnist_images

OPTIONS = RuntimeOptions(intra_op_threads=1, use_gpu=False)


def _repository(root) -> tuple[ModelRepository, list]:
    repository = ModelRepository(root, OPTIONS, drain_timeout_s=5.0)
    events: list = []
    repository.listeners.append(lambda *event: events.append(event))
    return repository, events


async def _refused(root, name: str) -> tuple[ModelLoadError, ModelEntry, list]:
    """The error of a load that must fail, and the model's entry right after it."""
    repository, events = _repository(root)
    with pytest.raises(ModelLoadError) as info:
        await repository.load(name)
    entry = copy.copy(repository.entry(name))
    await repository.close()
    return info.value, entry, events


# (builder, config input dims, config output dims, max_batch_size, what the reason says)
BAD = {
    "input_dims": (lambda p: om.identity(p), [5], [4], 8,
                   ["input 'x'", "dims [5]", "dimension 1 is 5 against 4"]),
    "input_rank": (lambda p: om.identity(p), [2, 2], [4], 8,
                   ["input 'x'", "3 dimensions against 2"]),
    "output_dims": (lambda p: om.matmul(p, 28, 28, declare_output=True), [28], [10], 8,
                    ["output 'y'", "dims [10]", "dimension 1 is 10 against 28"]),
    "output_dims_11": (lambda p: om.identity(p, ("batch", 10)), [10], [11], 8,
                       ["output 'y'", "dimension 1 is 11 against 10"]),
    # ORT infers [4] for this graph's undeclared output: caught before any run.
    "output_loses_batch": (lambda p: om.sum_rows(p, 4), [4], [4], 8,
                           ["output 'y'", "graph's output is [4]", "2 dimensions against 1"]),
    # Shapes unknown to ORT (undeclared input, so no inference): only running tells.
    "undeclared_output": (lambda p: om.matmul(p, 28, 28, declare_input=False), [28], [10],
                          8, ["warm-up run with a batch of 8 rows",
                              "output 'y' as FP32 [8, 28]", "FP32 [8, 10]"]),
    # ORT raises its own exception type (not a ServingError) in the warm-up run.
    "ort_run_fails": (lambda p: om.matmul(p, 4, 4, declare_input=False), [5], [4], 8,
                      ["warm-up run with a batch of 8 rows failed in ONNX Runtime"]),
    "fixed_batch_dim": (lambda p: om.identity(p, (1, 4)), [4], [4], 8,
                        ["fixes its first (batch) dimension at 1", "max_batch_size 8"]),
    "no_batch_dims": (lambda p: om.identity(p, (3, 4)), [3, 5], [3, 4], 0,
                      ["input 'x'", "dimension 1 is 5 against 4"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_model_that_disagrees_with_its_config_is_refused_with_the_reason(tmp_path, case):
    build, input_dims, output_dims, max_batch, fragments = BAD[case]
    om.write_model(tmp_path, "bad", build,
                   om.config("bad", input_dims, output_dims, max_batch_size=max_batch))
    error, entry, events = asyncio.run(_refused(tmp_path, "bad"))
    message = str(error)
    assert message.startswith("bad:1: "), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert entry.state == UNAVAILABLE and entry.reason == message
    assert entry.load_failures == 1
    assert [e[0] for e in events] == ["load_failed"]


@pytest.mark.parametrize("graph_shape, input_dims, max_batch", [
    (("batch", 4), [-1], 8),       # config -1: any size; warm-up uses the graph's 4
    ((None, "n"), [4], 8),         # symbolic graph dims: anything
    ((3, 4), [3, 4], 0),           # no batching: fully static shapes
    ((1, 4), [4], 1),              # a fixed batch of 1 with max_batch_size 1
])
def test_dims_that_agree_load_and_serve(tmp_path, graph_shape, input_dims, max_batch):
    output_dims = input_dims if max_batch or -1 not in input_dims else [3, 4]
    om.write_model(tmp_path, "good", lambda p: om.identity(p, graph_shape),
                   om.config("good", input_dims, output_dims, max_batch_size=max_batch))

    async def scenario():
        repository, events = _repository(tmp_path)
        try:
            await repository.load("good")
            model = repository.get("good")
            shape = ([2] if max_batch > 1 else [1] if max_batch else []) + [
                4 if d == -1 else d for d in input_dims]
            value = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
            out = await model.infer({"x": value})
            np.testing.assert_array_equal(out["y"], value)
            return list(events)
        finally:
            await repository.close()

    assert [e[0] for e in asyncio.run(scenario())] == ["loaded"]


@pytest.mark.parametrize("length, fragment", [
    (16, "token ids of shape [rows, 32], but the graph's input is ['batch', 16]: dimension 1 "
         "is 32 against 16"),
    ("tokens", None),
])
def test_text_model_token_input_is_checked_against_the_tokenizer(tmp_path, models_dir,
                                                                length, fragment):
    """The graph behind a text pre-processor must take [rows, bucket] for every bucket."""
    version = tmp_path / "reviews" / "1"
    om.token_scorer(version / "model.onnx", length)
    for name in ("tokenizer.json", "vocab.txt"):
        shutil.copy2(models_dir / "sentiment" / "1" / name, version / name)
    config = (models_dir / "sentiment" / "config.pbtxt").read_text()
    (tmp_path / "reviews" / "config.pbtxt").write_text(
        config.replace('name: "sentiment"', 'name: "reviews"').replace("max_batch_size: 64",
                                                                       "max_batch_size: 2"))
    if fragment is not None:
        error, entry, _ = asyncio.run(_refused(tmp_path, "reviews"))
        assert fragment in str(error) and entry.state == UNAVAILABLE, str(error)
        return

    async def scenario():
        repository, _ = _repository(tmp_path)
        try:
            await repository.load("reviews")
            text = np.array([[b"a fine film"]], dtype=object)
            return (await repository.get("reviews").infer({"text": text}))["probability"]
        finally:
            await repository.close()

    assert asyncio.run(scenario()).shape == (1, 1)


def test_any_exception_while_loading_is_a_load_error(tmp_path, monkeypatch):
    """Whatever goes wrong (here: a bug-like RuntimeError in the warm-up) is recorded."""
    om.write_model(tmp_path, "good", om.identity, om.config("good", [4], [4]))

    def broken_warmup(self):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(ModelVersion, "warmup", broken_warmup)
    error, entry, events = asyncio.run(_refused(tmp_path, "good"))
    assert str(error) == "good:1: loading failed: RuntimeError: boom second line"
    assert entry.state == UNAVAILABLE and entry.load_failures == 1
    assert [e[0] for e in events] == ["load_failed"]


def test_failed_reload_keeps_the_old_version_and_frees_the_new_session(tmp_path):
    om.write_model(tmp_path, "m", lambda p: om.identity(p, ("batch", 10)),
                   om.config("m", [10], [10]))

    async def scenario():
        repository, events = _repository(tmp_path)
        closed = []
        try:
            await repository.load("m")
            old = repository.get("m")
            # Version 2's graph answers [N, 28] where the config says [10], and does not
            # declare it: only its warm-up run can tell.
            om.matmul(tmp_path / "m" / "2" / "model.onnx", 10, 28, declare_input=False)
            original_close = ModelVersion.close

            async def spy(self, drain_timeout_s):
                closed.append(self.label)
                await original_close(self, drain_timeout_s)

            ModelVersion.close = spy
            try:
                with pytest.raises(ModelLoadError, match="output 'y' as FP32 \\[8, 28\\]"):
                    await repository.load("m")
            finally:
                ModelVersion.close = original_close
            entry = repository.entry("m")
            assert repository.get("m") is old and entry.state == READY
            assert "m:2" in entry.reason and entry.load_failures == 1
            out = await old.infer({"x": np.ones((1, 10), np.float32)})
            assert out["y"].shape == (1, 10)
        finally:
            await repository.close()
        return closed

    assert asyncio.run(scenario()) == ["m:2"]  # the refused version was closed at once


# ---- end to end --------------------------------------------------------------------------
def _bad_mnist(models_dir, repo, name="broken", input_dims="28, 28, 3"):
    """A copy of mnist whose config's input dims disagree with the graph."""
    shutil.copytree(models_dir / "mnist", repo / name)
    path = repo / name / "config.pbtxt"
    path.write_text(path.read_text().replace('name: "mnist"', f'name: "{name}"')
                    .replace("dims: [ 28, 28, 1 ]", f"dims: [ {input_dims} ]"))


def _health(address) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=10)
    return reply.status


def _serving(stub, address) -> tuple[bool, bool]:
    """(ServerReady, grpc.health says SERVING): they must always agree."""
    ready = stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    return ready, _health(address) == health_pb2.HealthCheckResponse.SERVING


def test_server_starts_with_a_bad_model_and_serves_the_others(tmp_path, models_dir):
    shutil.copytree(models_dir / "mnist", tmp_path / "mnist")
    _bad_mnist(models_dir, tmp_path)
    proc = ServerProcess(tmp_path, expect_ready=False)
    try:
        assert proc.proc.poll() is None, proc.log
        with grpc.insecure_channel(proc.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            images, _ = mnist_images(2)
            assert stub.ModelInfer(image_request(images), timeout=30).model_name == "mnist"
            index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
            assert index["mnist"].state == "READY"
            assert index["broken"].state == "UNAVAILABLE"
            assert "broken:1" in index["broken"].reason
            assert "dimension 3 is 3 against 1" in index["broken"].reason
            # A start-up model that fails keeps the server not ready, and health agrees.
            assert _serving(stub, proc.address) == (False, False)
            samples = scrape(proc.metrics_port)
            assert metric(samples, "onnxserve_model_load_failures_total", model="broken") == 1
            assert metric(samples, "onnxserve_model_ready", model="mnist") == 1
    finally:
        proc.stop()
    assert "NOT ready" in proc.log and "broken" in proc.log
    assert not tracebacks(proc.log), proc.log


def test_explicit_loads_of_bad_models_fail_cleanly(tmp_path, models_dir):
    shutil.copytree(models_dir / "mnist", tmp_path / "mnist")
    _bad_mnist(models_dir, tmp_path)
    shutil.copytree(models_dir / "mnist", tmp_path / "eleven")  # config output dims [11]
    path = tmp_path / "eleven" / "config.pbtxt"
    path.write_text(path.read_text().replace('name: "mnist"', 'name: "eleven"')
                    .replace("dims: [ 10 ]", "dims: [ 11 ]"))
    om.write_model(tmp_path, "wide", lambda p: om.matmul(p, 28, 28, declare_input=False),
                   om.config("wide", [28], [10]))
    proc = ServerProcess(tmp_path, "--model-control-mode", "explicit",
                         "--startup-models", "mnist")
    try:
        with grpc.insecure_channel(proc.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for name, fragment in (("broken", "dimension 3 is 3 against 1"),
                                   ("eleven", "output 'probabilities'"),
                                   ("wide", "output 'y' as FP32 [8, 28]")):
                with pytest.raises(grpc.RpcError) as info:
                    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name),
                                             timeout=60)
                assert info.value.code() == grpc.StatusCode.INTERNAL, info.value
                assert f"{name}:1" in info.value.details() and fragment in info.value.details()
                row = next(m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
                           if m.name == name)
                assert row.state == "UNAVAILABLE" and fragment in row.reason
                # A failed run-time load leaves a ready server ready (see load_startup).
                assert _serving(stub, proc.address) == (True, True)
            samples = scrape(proc.metrics_port)
            assert metric(samples, "onnxserve_model_load_failures_total", model="wide") == 1
            images, _ = mnist_images(1)
            assert stub.ModelInfer(image_request(images), timeout=30).model_name == "mnist"
    finally:
        proc.stop()
    assert not tracebacks(proc.log), proc.log


def test_poll_mode_reports_a_bad_model_and_keeps_serving(tmp_path, models_dir):
    shutil.copytree(models_dir / "mnist", tmp_path / "mnist")
    proc = ServerProcess(tmp_path, "--model-control-mode", "poll",
                         "--repository-poll-interval-s", "0.3")
    try:
        with grpc.insecure_channel(proc.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            _bad_mnist(models_dir, tmp_path)

            def broken_row():
                rows = stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
                return next((m for m in rows if m.name == "broken"
                             and m.state == "UNAVAILABLE" and "broken:1" in m.reason), None)

            assert wait_until(broken_row, timeout_s=60), proc.log
            assert wait_until(lambda: metric(scrape(proc.metrics_port),
                                             "onnxserve_model_load_failures_total",
                                             model="broken") == 1, timeout_s=30)
            assert _serving(stub, proc.address) == (True, True)
            images, _ = mnist_images(1)
            assert stub.ModelInfer(image_request(images), timeout=30).model_name == "mnist"
    finally:
        proc.stop()
    assert not tracebacks(proc.log), proc.log


def test_a_cancelled_load_does_not_stay_loading(tmp_path, models_dir):
    """A load RPC whose caller gives up is cancelled: the model must not stay LOADING."""
    shutil.copytree(models_dir / "mnist", tmp_path / "mnist")  # warm-up: 64 batch sizes

    async def scenario() -> str:
        repository, _ = _repository(tmp_path)
        try:
            load = asyncio.ensure_future(repository.load("mnist"))
            for _ in range(50_000):  # until the load has begun (it yields to the loop)
                entry = repository.entry("mnist")
                if entry is not None and entry.state == "LOADING":
                    break
                await asyncio.sleep(0.001)
            load.cancel()
            with pytest.raises(asyncio.CancelledError):
                await load
            return repository.entry("mnist").state
        finally:
            await repository.close()

    assert asyncio.run(scenario()) == UNAVAILABLE
