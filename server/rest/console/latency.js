// p50 and p99 request latency per model over the last refresh, beside the mean: the
// server's latency buckets (GET /v2/models/latency, every worker's counts summed), this
// refresh's counts minus the last one's, estimated within a bucket as the server does.
"use strict";

const previousLatency = {};  // model -> bucket counts at the last refresh

function latencyQuantiles(report) {
  const out = {};
  if (!report) return out;
  const totals = {};
  for (const row of report.model_latency) {
    const t = totals[row.name] || (totals[row.name] = row.counts.map(() => 0));
    row.counts.forEach((count, i) => { t[i] += count; });
  }
  for (const [name, counts] of Object.entries(totals)) {
    const last = previousLatency[name];
    previousLatency[name] = counts;
    if (!last || last.length !== counts.length) continue;
    const window = counts.map((count, i) => count - last[i]);
    if (window.some(count => count < 0)) continue;  // a reload started the counts anew
    out[name] = {p50_ms: quantileMs(report.bounds_s, window, 0.5),
                 p99_ms: quantileMs(report.bounds_s, window, 0.99)};
  }
  return out;
}

// Linear within the bucket that holds the rank; the last bound for the overflow bucket.
function quantileMs(bounds, counts, q) {
  const total = counts.reduce((a, b) => a + b, 0);
  if (!total) return null;
  const rank = q * total;
  let seen = 0;
  for (let i = 0; i < counts.length; i++) {
    if (counts[i] && seen + counts[i] >= rank) {
      if (i === bounds.length) return 1e3 * bounds[bounds.length - 1];
      const low = i ? bounds[i - 1] : 0;
      return 1e3 * (low + (bounds[i] - low) * Math.max(rank - seen, 0) / counts[i]);
    }
    seen += counts[i];
  }
  return 1e3 * bounds[bounds.length - 1];
}

function milliseconds(ms) {
  if (ms === null || ms === undefined) return "–";
  return ms >= 100 ? `${ms.toFixed(0)} ms` : ms >= 10 ? `${ms.toFixed(1)} ms` : `${ms.toFixed(2)} ms`;
}
