"""The console's rollout panel and latency quantiles in a real headless Chromium: a canary
and a shadow set at load time show as the split per version and the shadow's agreement;
the models table shows p50 and p99 beside the mean while traffic runs."""

from __future__ import annotations

import threading

import grpc
import pytest

from server.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess
from tests.support.browser import browser, watched_page  # noqa: F401  (fixture)
from tests.support.restkit import call_json
from tests.support.rolloutkit import override, two_version_repo
from tests.support.wire import image_request, mnist_images


@pytest.fixture()
def rollout_server(tmp_path, models_dir):
    repo = two_version_repo(models_dir, tmp_path / "repo")
    proc = ServerProcess(repo, "--model-control-mode", "explicit", "--startup-models", "mnist")
    config = override(proc.http_port, canary_version="2", canary_weight="0.3",
                      shadow_version="2", shadow_fraction="1.0")
    status, doc = call_json(proc.http_port, "POST", "/v2/repository/models/mnist/load",
                            {"parameters": {"config": config}})
    assert status == 200, doc
    yield proc
    proc.stop()


def test_rollout_panel_and_latency_quantiles(rollout_server, browser):
    proc = rollout_server
    stop = threading.Event()
    sent = []

    def traffic():
        images, _ = mnist_images(20)
        with grpc.insecure_channel(proc.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not stop.is_set():
                sent.append(stub.ModelInfer(image_request(images[len(sent) % 20][None]),
                                            timeout=60).model_version)

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        page = watched_page(browser, proc.http_url + "/")
        section = "details.rollout[data-model=mnist]"
        page.wait_for_selector(f"{section} summary", timeout=30_000)
        assert "canary v2 at 30.0 %" in page.inner_text(f"{section} summary")
        page.click(f"{section} summary")
        # Both versions answered, and the shadow (a copy of version 1) agrees on every row.
        page.wait_for_function(
            "s => [...document.querySelectorAll(s + ' tr[data-version]')]"
            ".every(r => Number(r.dataset.requests) > 0) && "
            "Number((document.querySelector(s + ' .shadow') || {dataset: {}}).dataset.rows) > 0",
            arg=section, polling=200, timeout=60_000)
        assert page.inner_text(f"{section} tr[data-version='2'] td:nth-child(2)") == "canary"
        assert page.inner_text(f"{section} .shadow .agreement") == "100.0 %"
        # p50 and p99 of the last refresh beside the mean, while requests run.
        row = "#models tr[data-model=mnist]"
        page.wait_for_function("s => / ms$/.test(document.querySelector(s + ' .p99')"
                               ".textContent)", arg=row, polling=100, timeout=30_000)
        p50 = float(page.inner_text(f"{row} .p50").split()[0])
        p99 = float(page.inner_text(f"{row} .p99").split()[0])
        assert 0 < p50 <= p99
        assert [h.strip() for h in page.inner_text("#models thead").split("\t")][4:7] == [
            "mean latency", "p50", "p99"]
        assert not page.problems, page.problems
        page.close()
    finally:
        stop.set()
        thread.join(timeout=60)
