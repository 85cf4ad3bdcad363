"""Merge rules of the per-version monitoring series across workers (drift, rollout)."""

from __future__ import annotations

from server.cluster.metrics_merge import merge


def _worker(psi: float, rows: int, agreement: float) -> str:
    return f"""# HELP onnxserve_drift_psi PSI
# TYPE onnxserve_drift_psi gauge
onnxserve_drift_psi{{model="m",version="1",signal="s"}} {psi}
# HELP onnxserve_drift_window_rows rows
# TYPE onnxserve_drift_window_rows gauge
onnxserve_drift_window_rows{{model="m",version="1"}} {rows}
# HELP onnxserve_drift_reference_proportion share
# TYPE onnxserve_drift_reference_proportion gauge
onnxserve_drift_reference_proportion{{model="m",version="1",signal="s",bin="+Inf"}} 0.25
# HELP onnxserve_rollout_share share
# TYPE onnxserve_rollout_share gauge
onnxserve_rollout_share{{model="m",version="2"}} 0.3
# HELP onnxserve_shadow_agreement_ratio agreement
# TYPE onnxserve_shadow_agreement_ratio gauge
onnxserve_shadow_agreement_ratio{{model="m",primary="1",shadow="2"}} {agreement}
"""


def test_shares_and_ratios_are_not_summed_across_workers():
    merged = {s.name: s.value for family in merge([_worker(0.1, 400, 0.99), _worker(0.3, 600, 0.9)])
              for s in family.samples}
    assert merged["onnxserve_drift_psi"] == 0.3  # the most shifted worker's window
    assert merged["onnxserve_drift_window_rows"] == 1000  # rows add up
    assert merged["onnxserve_drift_reference_proportion"] == 0.25  # the same everywhere
    assert merged["onnxserve_rollout_share"] == 0.3
    assert merged["onnxserve_shadow_agreement_ratio"] == 0.9  # the least agreeing worker
