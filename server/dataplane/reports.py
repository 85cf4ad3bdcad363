"""Our REST extensions' per-model reports, as plain JSON-ready dicts:

- ``rollout``: a model's canary and shadow settings, the requests each version answered
  (the canary split) and what the shadow said next to the primary (agreement, rows that
  agree, disagree or were dropped, the |delta score| histogram);
- ``latency``: each version's successful-request latency histogram (core.stats buckets)
  and its p50/p90/p99, *estimated from the buckets* (linear within one, as Prometheus's
  histogram_quantile does), beside the exact mean.

A report is built in two steps so that several worker processes make one: ``build``
gives one process's raw counts (what a peer sends), ``merge`` sums raw reports (server.
cluster), ``finish`` adds what is derived from the counts (shares, ratios, quantiles).
Counts run since each version's last load (a reload starts them anew).
"""

from __future__ import annotations

from copy import deepcopy

from server.core.errors import InvalidInputError, ModelNotReadyError
from server.core.rollout import DELTA_BUCKETS
from server.core.stats import LATENCY_BOUNDS_S, estimate_quantile

KINDS = ("rollout", "latency")
QUANTILES = (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99))


def build(kind: str, repository, name: str, version: str = "") -> dict:
    if kind == "rollout":
        return rollout_counts(repository, name)
    if kind == "latency":
        return latency_counts(repository, name, version)
    raise InvalidInputError(f"unknown report {kind!r}; known: {list(KINDS)}")


def merge(kind: str, reports: list[dict]) -> dict:
    return merge_rollout(reports) if kind == "rollout" else merge_latency(reports)


def finish(kind: str, report: dict) -> dict:
    return finish_rollout(report) if kind == "rollout" else finish_latency(report)


# ---- rollout ---------------------------------------------------------------------------
def rollout_counts(repository, name: str) -> dict:
    repository.get(name)  # unknown or not serving: the usual 404 / 503
    entry = repository.entry(name)
    rollout = entry.rollout
    spec = rollout.spec if rollout is not None else None
    primary = rollout.primary if rollout is not None else max(entry.versions)
    versions = {}
    for number, model in sorted(entry.versions.items()):
        role = ("primary" if number == primary else
                "canary" if spec and number == spec.canary_version else
                "shadow" if spec and number == spec.shadow_version else "")
        stats = model.stats
        versions[str(number)] = {"version": str(number), "role": role,
                                 "success": stats.success.count, "failures": stats.fail.count}
    shadows = {}
    for number, model in sorted(entry.versions.items()):
        link = getattr(model, "shadow", None)
        if link is None:
            continue
        s = link.stats
        key = f"{number}>{link.candidate.version}"
        shadows[key] = {"primary": str(number), "shadow": str(link.candidate.version),
                        "rows": s.rows, "agree": s.agree, "dropped": s.dropped_rows,
                        "failures": s.failures, "delta_counts": list(s.delta_counts),
                        "delta_sum": s.delta_sum}
    settings = None if spec is None else {
        "canary_version": _text(spec.canary_version), "canary_weight": spec.canary_weight,
        "shadow_version": _text(spec.shadow_version), "shadow_fraction": spec.shadow_fraction}
    return {"name": name, "settings": settings, "primary": str(primary), "workers": 1,
            "versions": versions, "shadows": shadows}


def _text(number: int | None) -> str | None:
    return None if number is None else str(number)


def merge_rollout(reports: list[dict]) -> dict:
    """Counts summed by version and by (primary, shadow); settings and roles from the
    first report (the answering worker's: every worker serves the same plan)."""
    merged = deepcopy(reports[0])
    for other in reports[1:]:
        merged["workers"] += other.get("workers", 1)
        for key, counts in other.get("versions", {}).items():
            into = merged["versions"].setdefault(key, dict(counts, success=0, failures=0))
            into["success"] += counts["success"]
            into["failures"] += counts["failures"]
        for key, counts in other.get("shadows", {}).items():
            into = merged["shadows"].get(key)
            if into is None:
                merged["shadows"][key] = deepcopy(counts)
                continue
            for field in ("rows", "agree", "dropped", "failures", "delta_sum"):
                into[field] += counts[field]
            into["delta_counts"] = [a + b for a, b in zip(into["delta_counts"],
                                                          counts["delta_counts"])]
    return merged


def finish_rollout(report: dict) -> dict:
    """Lists in version order, with each version's share of the requests and each
    shadow's agreement ratio (1.0 before any row, as the metric)."""
    versions = sorted(report["versions"].values(), key=lambda v: int(v["version"]))
    total = sum(v["success"] + v["failures"] for v in versions)
    for v in versions:
        v["requests"] = v["success"] + v["failures"]
        v["share"] = v["requests"] / total if total else 0.0
    shadows = sorted(report["shadows"].values(), key=lambda s: int(s["primary"]))
    for s in shadows:
        s["disagree"] = s["rows"] - s["agree"]
        s["agreement"] = s["agree"] / s["rows"] if s["rows"] else 1.0
        s["delta_mean"] = s["delta_sum"] / s["rows"] if s["rows"] else 0.0
        s["delta_bounds"] = list(DELTA_BUCKETS)  # counts: one more, the last above these
    return dict(report, versions=versions, shadows=shadows)


# ---- latency ---------------------------------------------------------------------------
def latency_counts(repository, name: str, version: str = "") -> dict:
    """One model's versions (one version when named), or every loaded version's when
    ``name`` is empty (the console's table: one call)."""
    if name:
        served = repository.get(name, version)  # unknown: 404, not serving: 503
        models = [served] if version else \
            sorted(repository.entry(name).versions.values(), key=lambda m: m.version)
    else:
        models = sorted(repository.loaded_versions(), key=lambda m: (m.name, m.version))
    rows = {}
    for model in models:
        histogram = model.stats.latency
        rows[f"{model.name}:{model.version}"] = {
            "name": model.name, "version": str(model.version),
            "count": sum(histogram.counts), "sum_s": histogram.sum,
            "counts": list(histogram.counts)}
    if name and not rows:
        raise ModelNotReadyError(f"model {name!r} serves no version")
    return {"bounds_s": list(LATENCY_BOUNDS_S), "workers": 1, "versions": rows}


def merge_latency(reports: list[dict]) -> dict:
    """Bucket counts summed per version (then estimated: quantiles never average)."""
    merged = deepcopy(reports[0])
    for other in reports[1:]:
        if other.get("bounds_s") != merged["bounds_s"]:
            continue  # a worker of another build mid-upgrade: not comparable
        merged["workers"] += other.get("workers", 1)
        for key, row in other["versions"].items():
            into = merged["versions"].get(key)
            if into is None:
                merged["versions"][key] = deepcopy(row)
                continue
            into["count"] += row["count"]
            into["sum_s"] += row["sum_s"]
            into["counts"] = [a + b for a, b in zip(into["counts"], row["counts"])]
    return merged


def finish_latency(report: dict) -> dict:
    bounds = report["bounds_s"]
    rows = sorted(report["versions"].values(), key=lambda r: (r["name"], int(r["version"])))
    for row in rows:
        row["mean_ms"] = 1e3 * row["sum_s"] / row["count"] if row["count"] else None
        for field, q in QUANTILES:
            value = estimate_quantile(bounds, row["counts"], q)
            row[field] = None if value is None else 1e3 * value
    return {"estimated_from_buckets": True, "bounds_s": bounds,
            "workers": report["workers"], "model_latency": rows}
