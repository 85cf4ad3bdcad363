"""A model's rollout as a person reads it: the canary split, the shadow's agreement and
each version's latency, from the server's REST extensions (``GET /v2/models/<m>/rollout``
and ``…/latency``; with ``--workers N`` every worker's counts are in)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

from server.client.api import ClientError

DEFAULT_HTTP_URL = "http://localhost:8000"


def read_json(base_url: str, path: str, timeout_s: float) -> dict:
    url = base_url.rstrip("/") + path
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # the server's own words: {"error": ...}
        try:
            message = json.loads(exc.read()).get("error", "")
        except ValueError:
            message = ""
        raise ClientError(f"{url}: HTTP {exc.code}: {message or exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ClientError(f"cannot read {url}: {getattr(exc, 'reason', exc)} (is the REST "
                          "port right? --http-url)") from None


def read_rollout(base_url: str, model: str, timeout_s: float = 10.0) -> tuple[dict, dict]:
    """The model's rollout report and its latency report."""
    quoted = urllib.parse.quote(model, safe="")
    return (read_json(base_url, f"/v2/models/{quoted}/rollout", timeout_s),
            read_json(base_url, f"/v2/models/{quoted}/latency", timeout_s))


def rollout_lines(rollout: dict, latency: dict) -> list[str]:
    settings = rollout["settings"]
    workers = f"   ({rollout['workers']} workers)" if rollout["workers"] > 1 else ""
    if settings is None:
        head = f"{rollout['name']}: no rollout (serving v{rollout['primary']})"
    else:
        parts = [f"primary v{rollout['primary']}"]
        if settings["canary_version"] is not None:
            parts.append(f"canary v{settings['canary_version']} at "
                         f"{settings['canary_weight']:.0%} of unversioned requests")
        if settings["shadow_version"] is not None:
            parts.append(f"shadow v{settings['shadow_version']} on "
                         f"{settings['shadow_fraction']:.0%} of batches")
        head = f"{rollout['name']}: " + ", ".join(parts)
    quantiles = {row["version"]: row for row in latency.get("model_latency", [])}
    lines = [head + workers, "",
             f"{'version':<8} {'role':<8} {'requests':>9} {'share':>7} {'mean':>9} "
             f"{'p50':>9} {'p99':>9}"]
    for v in rollout["versions"]:
        q = quantiles.get(v["version"], {})
        lines.append(f"{'v' + v['version']:<8} {v['role'] or '-':<8} {v['requests']:>9} "
                     f"{v['share']:>7.1%} {_ms(q.get('mean_ms')):>9} {_ms(q.get('p50_ms')):>9} "
                     f"{_ms(q.get('p99_ms')):>9}")
    for s in rollout["shadows"]:
        agreement = f"{s['agreement']:.1%}" if s["rows"] else "no rows yet"
        lines += ["", f"shadow v{s['shadow']} next to v{s['primary']}: agreement {agreement}"
                      f"   rows {s['rows']}: {s['agree']} agree, {s['disagree']} disagree, "
                      f"{s['dropped']} dropped, {s['failures']} failed",
                  "  |delta top score|  " + "  ".join(
                      f"{label} {count}" for label, count in
                      zip([f"<={b:g}" for b in s["delta_bounds"]] +
                          [f">{s['delta_bounds'][-1]:g}"], s["delta_counts"]))]
    lines += ["", "requests and latency since each version's load; p50/p99 estimated from "
                  "the server's latency buckets"]
    return lines


def _ms(value) -> str:
    return "-" if value is None else f"{value:.2f} ms"
