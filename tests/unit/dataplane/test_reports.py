"""Latency quantiles from buckets and the reports' merge across workers."""

from __future__ import annotations

import pytest

from server.core.stats import LATENCY_BOUNDS_S, Histogram, estimate_quantile
from server.dataplane import reports
from server.observability.metrics import LATENCY_BUCKETS


def test_quantiles_come_from_the_buckets_linear_within_one():
    h = Histogram()
    for _ in range(90):
        h.observe(0.0009)  # in (0.0008, 0.001]
    for _ in range(10):
        h.observe(0.045)  # in (0.04, 0.05]
    p50 = estimate_quantile(h.bounds, h.counts, 0.5)
    assert 0.0008 < p50 <= 0.001
    assert estimate_quantile(h.bounds, h.counts, 0.99) == pytest.approx(0.04 + 0.01 * 0.9)
    assert estimate_quantile(h.bounds, [0] * len(h.counts), 0.5) is None
    h.observe(1e4)  # beyond the last bound: the last bound, a floor
    assert estimate_quantile(h.bounds, h.counts, 1.0) == LATENCY_BOUNDS_S[-1]


def test_prometheus_buckets_are_ours_summed():
    h = Histogram()
    for seconds in (0.00005, 0.0001, 0.00011, 0.003, 0.25, 9.0, 11.0):
        h.observe(seconds)
    # le is inclusive in both: 0.0001 is in le="0.0001"
    assert h.rebinned(LATENCY_BUCKETS) == [2, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1]


def _latency(count_at_1ms: int, count_at_10ms: int) -> dict:
    h = Histogram()
    for _ in range(count_at_1ms):
        h.observe(0.001)
    for _ in range(count_at_10ms):
        h.observe(0.01)
    return {"bounds_s": list(h.bounds), "workers": 1, "versions": {"m:1": {
        "name": "m", "version": "1", "count": sum(h.counts), "sum_s": h.sum,
        "counts": list(h.counts)}}}


def test_latency_merges_counts_then_estimates():
    # Worker A: all fast; worker B: all slow. Averaging their p99s would say ~5 ms; the
    # merged counts say 10 ms (half the requests took 10 ms).
    merged = reports.finish("latency", reports.merge("latency", [_latency(100, 0),
                                                                  _latency(0, 100)]))
    (row,) = merged["model_latency"]
    assert merged["workers"] == 2 and merged["estimated_from_buckets"] is True
    assert row["count"] == 200 and row["mean_ms"] == pytest.approx(5.5)
    assert 8.0 < row["p99_ms"] <= 10.0 and 0.8 < row["p50_ms"] <= 1.0


def _rollout(v1: int, v2: int, rows: int, agree: int) -> dict:
    return {"name": "m", "settings": {"canary_version": "2", "canary_weight": 0.3,
                                      "shadow_version": "2", "shadow_fraction": 1.0},
            "primary": "1", "workers": 1,
            "versions": {"1": {"version": "1", "role": "primary", "success": v1, "failures": 0},
                         "2": {"version": "2", "role": "canary", "success": v2, "failures": 0}},
            "shadows": {"1>2": {"primary": "1", "shadow": "2", "rows": rows, "agree": agree,
                                "dropped": 1, "failures": 0, "delta_counts": [rows] + [0] * 7,
                                "delta_sum": 0.0}}}


def test_rollout_sums_versions_and_shadow_rows():
    merged = reports.finish("rollout", reports.merge("rollout", [_rollout(70, 30, 70, 70),
                                                                  _rollout(60, 40, 60, 30)]))
    assert merged["workers"] == 2
    assert [(v["version"], v["requests"], v["share"]) for v in merged["versions"]] == [
        ("1", 130, 0.65), ("2", 70, 0.35)]
    (shadow,) = merged["shadows"]
    assert (shadow["rows"], shadow["agree"], shadow["disagree"], shadow["dropped"]) == (
        130, 100, 30, 2)
    assert shadow["agreement"] == pytest.approx(100 / 130)
    assert shadow["delta_counts"][0] == 130 and len(shadow["delta_bounds"]) == 7
