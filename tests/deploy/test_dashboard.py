"""The Grafana dashboard only queries metrics a real server exports.

Starts the server on the committed models, sends a little traffic (successes and a
failure), scrapes /metrics over HTTP and checks every series name that the
dashboard's PromQL (and the alert rules) select is in the scrape. Histogram names
are checked as written (`_bucket`, `_sum`, `_count` are samples of the family).
"""

from __future__ import annotations

import json
import re

import grpc
import numpy as np
import pytest

from server.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess
from tests.deploy.manifests import MONITORING, documents
from tests.support.loadkit import scrape
from tests.support.wire import image_request, text_request

# Exported only where NVML sees a GPU (nvidia-ml-py in the GPU image): exempt when the
# test machine has none, checked like the rest when it has.
GPU_METRICS = {"onnxserve_gpu_utilization_ratio", "onnxserve_gpu_memory_used_bytes",
               "onnxserve_gpu_memory_total_bytes"}

_FUNCTIONS_AND_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "le", "inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """Series names an expression selects (not functions, labels, keywords, numbers)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    return {name for name in _IDENT.findall(text)
            if name.lower() not in _FUNCTIONS_AND_KEYWORDS}


def test_metric_name_parser():
    expr = ('histogram_quantile(0.99, sum by (le, model) (rate(onnxserve_x_bucket'
            '{model=~"$model", outcome!="a b"}[$__rate_interval]))) / on (model) '
            'sum without (version) (increase(process_cpu_seconds_total[5m])) > bool 0.5')
    assert metric_names(expr) == {"onnxserve_x_bucket", "process_cpu_seconds_total"}


def dashboard_queries() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    assert len(exprs) >= 10, "the dashboard lost its queries"
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", variable["definition"]))
    return exprs


def alert_queries() -> list[str]:
    groups = documents(MONITORING / "alerts.yml")[0]["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


@pytest.fixture(scope="module")
def scraped_names(models_dir) -> set[str]:
    proc = ServerProcess(models_dir)
    try:
        channel = grpc.insecure_channel(proc.address)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for rows in (1, 3):
            stub.ModelInfer(image_request(np.zeros((rows, 28, 28, 1), np.float32)), timeout=30)
        stub.ModelInfer(text_request(["a fine film", "a dull film"]), timeout=30)
        with pytest.raises(grpc.RpcError):  # a failure, so error series exist
            stub.ModelInfer(image_request(np.zeros((1, 27, 28, 1), np.float32)), timeout=30)
        channel.close()
        samples = scrape(proc.metrics_port)
    finally:
        proc.stop()
    return {name for name, _ in samples}


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_queried_metric_is_exported(source, scraped_names):
    exprs = dashboard_queries() if source == "dashboard" else alert_queries()
    wanted = set().union(*(metric_names(e) for e in exprs))
    assert any(name.startswith("onnxserve_") for name in wanted)
    gpu_present = bool(GPU_METRICS & scraped_names)
    exempt = set() if gpu_present else GPU_METRICS
    missing = sorted(wanted - scraped_names - exempt)
    assert not missing, (f"{source} queries metrics the server does not export: {missing}; "
                         f"exported: {sorted(n for n in scraped_names if n.startswith('onnx'))}")


def test_dashboard_covers_the_operational_questions():
    exprs = "\n".join(dashboard_queries())
    for needle in ("histogram_quantile(0.5,", "histogram_quantile(0.99,",
                   "onnxserve_batch_size_sum", "onnxserve_queue_depth",
                   'outcome!="success"', "onnxserve_gpu_utilization_ratio",
                   "onnxserve_gpu_memory_used_bytes", "process_cpu_seconds_total",
                   "process_resident_memory_bytes"):
        assert needle in exprs, f"no panel queries {needle}"
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
