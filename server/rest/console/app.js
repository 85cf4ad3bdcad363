// onnx-serve console: models, live statistics and a try-it panel per model.
// Plain browser JavaScript against the server's own KServe v2 REST API; no build step,
// nothing fetched from elsewhere, so it works offline.
"use strict";

const REFRESH_MS = 2000;
const previous = {};  // model -> {t, success, ns, fail}: the last statistics sample

async function api(path, options) {
  const response = await fetch(path, options);
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = {error: text}; }
  if (!response.ok) {
    throw new Error(`HTTP ${response.status}: ${(body && body.error) || text}`);
  }
  return body;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
  return node;
}

// ---- models table and live statistics ------------------------------------------------
async function refresh() {
  try {
    const meta = await api("/v2");
    document.getElementById("server-version").textContent = `${meta.name} ${meta.version}`;
    const ready = await fetch("/v2/health/ready").then(r => r.ok);
    setPill(document.getElementById("server-state"), ready ? "ready" : "not-ready",
            ready ? "server ready" : "server not ready");
    const rows = await api("/v2/repository/index", {method: "POST", body: "{}"});
    const stats = await api("/v2/models/stats");
    const latency = await api("/v2/models/latency").catch(() => null);  // latency.js
    renderTable(rows, rates(stats.model_stats || []), latencyQuantiles(latency));
    await ensurePanels(rows);
  } catch (error) {
    setPill(document.getElementById("server-state"), "not-ready", "unreachable");
    markStale();
  }
}

// Without the server, nothing in the table is known any more: say so instead of showing
// the last READY rows and rates as if they were current.
function markStale() {
  for (const name of Object.keys(previous)) delete previous[name];
  for (const row of document.querySelectorAll("#models tbody tr")) {
    row.classList.add("stale");
    const cells = row.querySelectorAll("td");
    cells[2].replaceChildren(el("span", {class: "pill unknown"}, "unknown"));
    for (const i of [3, 4, 5, 6, 7]) cells[i].textContent = "–";
    cells[8].textContent = "server unreachable";
  }
}

function setPill(node, kind, text) {
  node.className = `pill ${kind}`;
  node.textContent = text;
}

// Requests/s and mean latency per model over the last refresh interval.
function rates(modelStats) {
  const now = performance.now() / 1000;
  const totals = {};
  for (const s of modelStats) {
    const t = totals[s.name] || (totals[s.name] = {success: 0, ns: 0, fail: 0});
    t.success += s.inference_stats.success.count;
    t.ns += s.inference_stats.success.ns;
    t.fail += s.inference_stats.fail.count;
  }
  const out = {};
  for (const [name, t] of Object.entries(totals)) {
    const last = previous[name];
    if (last && now > last.t && t.success >= last.success) {
      const seconds = now - last.t, done = t.success - last.success;
      out[name] = {rps: done / seconds, failps: Math.max(0, t.fail - last.fail) / seconds,
                   latency_ms: done ? (t.ns - last.ns) / done / 1e6 : null};
    }
    previous[name] = {t: now, ...t};
  }
  return out;
}

function renderTable(rows, live, quantiles) {
  const body = document.querySelector("#models tbody");
  body.replaceChildren(...rows.map(row => {
    const r = live[row.name];
    const q = quantiles[row.name] || {};
    const state = el("span", {class: `pill ${row.state}`}, row.state);
    return el("tr", {"data-model": row.name},
      el("td", {}, row.name), el("td", {}, row.version || "–"), el("td", {}, state),
      el("td", {class: "num rps"}, r ? r.rps.toFixed(1) : "…"),
      el("td", {class: "num"}, r && r.latency_ms !== null ? `${r.latency_ms.toFixed(2)} ms` : "–"),
      el("td", {class: "num p50"}, milliseconds(q.p50_ms)),
      el("td", {class: "num p99"}, milliseconds(q.p99_ms)),
      el("td", {class: "num"}, r ? r.failps.toFixed(1) : "…"),
      el("td", {class: "muted"}, row.reason || ""));
  }));
}

// ---- try-it panels (panels.js) -----------------------------------------------------------
const panels = {};

async function ensurePanels(rows) {
  for (const row of rows) {
    if (row.state !== "READY" || panels[row.name]) continue;
    panels[row.name] = true;
    const base = `/v2/models/${encodeURIComponent(row.name)}`;
    try {
      const meta = await api(base);
      const config = await api(`${base}/config`).catch(() => null);
      const card = await api(`${base}/card`).catch(() => null);  // only where the repository has one
      document.getElementById("panels").append(buildPanel(meta, config, card));
    } catch (error) {
      panels[row.name] = false;
    }
  }
}

// ---- numbers and errors for people ------------------------------------------------------
function percent(p) {
  const value = 100 * p;
  if (value > 0 && value < 0.1) return "<0.1 %";
  if (value < 100 && value > 99.9) return ">99.9 %";
  return `${value.toFixed(1)} %`;
}

function number(v) {
  if (v === 0 || !Number.isFinite(v)) return String(v);
  const magnitude = Math.abs(v);
  if (magnitude >= 1e6 || magnitude < 1e-4) return v.toExponential(2);
  return Number(v.toPrecision(4)).toString();
}

function readable(error) {
  if (error instanceof TypeError) {  // fetch() could not reach the server at all
    return "The server is unreachable: the request could not be sent (is the server up?)";
  }
  return error.message;
}

refresh();
setInterval(refresh, REFRESH_MS);
