"""Drift as a person reads it, from a server's Prometheus /metrics (any number of workers:
the merged /metrics keeps each signal's highest PSI)."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass, field

from server.client.api import ClientError

DEFAULT_METRICS_URL = "http://localhost:8002/metrics"
SHIFTED_PSI = 0.2
# Fewer rows than this in a window say nothing yet: a handful of rows cannot fill ten bins
# (the alert rule waits for 1,000).
MIN_ROWS = 200


@dataclass
class VersionDrift:
    model: str
    version: str
    rows: int = 0
    psi: dict[str, float] = field(default_factory=dict)  # signal -> PSI

    @property
    def shifted(self) -> list[str]:
        if self.rows < MIN_ROWS:
            return []
        return [name for name, value in self.psi.items() if value > SHIFTED_PSI]


def read_drift(metrics_url: str = DEFAULT_METRICS_URL, timeout_s: float = 10.0) -> list[VersionDrift]:
    """Every model version's drift signals, sorted by model and version."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout_s) as response:
            text = response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ClientError(f"cannot read {metrics_url}: {getattr(exc, 'reason', exc)} (is the "
                          "metrics port right? --metrics-url)") from None
    found: dict[tuple[str, str], VersionDrift] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name not in ("onnxserve_drift_psi", "onnxserve_drift_window_rows"):
                continue
            key = (sample.labels.get("model", ""), sample.labels.get("version", ""))
            entry = found.setdefault(key, VersionDrift(*key))
            if sample.name == "onnxserve_drift_window_rows":
                entry.rows = int(sample.value)
            else:
                entry.psi[sample.labels.get("signal", "")] = sample.value
    return [found[key] for key in sorted(found)]


def drift_lines(versions: list[VersionDrift], model: str | None = None) -> list[str]:
    chosen = [v for v in versions if model is None or v.model == model]
    if not chosen:
        what = f"model {model!r}" if model else "no model"
        raise ClientError(f"{what} reports drift: it needs a reference.json beside its "
                          "model.onnx (python -m server.reference) and --drift-enabled true")
    lines = []
    for v in chosen:
        signals = "   ".join(f"{name} {value:.3f}" for name, value in v.psi.items())
        verdict = ("no traffic yet" if not v.rows else
                   f"too few rows to judge (under {MIN_ROWS})" if v.rows < MIN_ROWS else
                   f"SHIFTED: {', '.join(v.shifted)}" if v.shifted else "as trained")
        lines.append(f"{v.model} v{v.version}  {v.rows} rows   {signals}   {verdict}")
    return lines
