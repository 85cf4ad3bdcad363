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
    renderTable(rows, rates(stats.model_stats || []));
    await ensurePanels(rows);
  } catch (error) {
    setPill(document.getElementById("server-state"), "not-ready", "unreachable");
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

function renderTable(rows, live) {
  const body = document.querySelector("#models tbody");
  body.replaceChildren(...rows.map(row => {
    const r = live[row.name];
    const state = el("span", {class: `pill ${row.state}`}, row.state);
    return el("tr", {"data-model": row.name},
      el("td", {}, row.name), el("td", {}, row.version || "–"), el("td", {}, state),
      el("td", {class: "num rps"}, r ? r.rps.toFixed(1) : "…"),
      el("td", {class: "num"}, r && r.latency_ms !== null ? `${r.latency_ms.toFixed(2)} ms` : "–"),
      el("td", {class: "num"}, r ? r.failps.toFixed(1) : "…"),
      el("td", {class: "muted"}, row.reason || ""));
  }));
}

// ---- try-it panels -----------------------------------------------------------------------
const panels = {};

async function ensurePanels(rows) {
  for (const row of rows) {
    if (row.state !== "READY" || panels[row.name]) continue;
    panels[row.name] = true;
    try {
      const meta = await api(`/v2/models/${encodeURIComponent(row.name)}`);
      document.getElementById("panels").append(buildPanel(meta));
    } catch (error) {
      panels[row.name] = false;
    }
  }
}

function buildPanel(meta) {
  const result = el("div", {class: "result"});
  const panel = el("div", {class: "panel", "data-model": meta.name},
                   el("h3", {}, meta.name, " ", el("span", {class: "muted"},
                      `v${meta.versions.join(", v")} · ${meta.platform}`)));
  const input = meta.inputs.length === 1 ? meta.inputs[0] : null;
  if (input && input.datatype === "FP32" && isImage(input.shape)) {
    panel.append(imageForm(meta, input, result));
  } else if (input && input.datatype === "BYTES") {
    panel.append(textForm(meta, input, result));
  } else {
    panel.append(jsonForm(meta, result));
  }
  panel.append(result);
  return panel;
}

function isImage(shape) {
  const dims = shape.slice(shape.length === 4 ? 1 : 0);
  return dims.length === 3 && dims[2] === 1 && dims[0] === dims[1] && dims[0] > 0;
}

async function infer(meta, inputs, result) {
  result.replaceChildren(el("span", {class: "muted"}, "running…"));
  const started = performance.now();
  try {
    const answer = await api(`/v2/models/${encodeURIComponent(meta.name)}/infer`,
      {method: "POST", headers: {"Content-Type": "application/json"},
       body: JSON.stringify({inputs})});
    showAnswer(meta, answer, result, performance.now() - started);
  } catch (error) {
    result.replaceChildren(el("div", {class: "error"}, error.message));
  }
}

function showAnswer(meta, answer, result, ms) {
  const parts = [];
  for (const output of answer.outputs) {
    const values = output.data.map(Number);
    const labels = labelsFor(meta, output, values);
    let top = 0;
    values.forEach((v, i) => { if (v > values[top]) top = i; });
    if (labels.summary) parts.push(el("div", {class: "answer"}, labels.summary));
    else if (values.length > 1) parts.push(el("div", {class: "answer"}, `${output.name}: ${labels.names[top]}`));
    const scale = values.every(v => v >= 0 && v <= 1) ? 1 : Math.max(...values.map(Math.abs), 1e-9);
    values.slice(0, 64).forEach((value, i) => {
      const fill = el("div", {class: "fill"});
      fill.style.width = `${Math.min(100, Math.abs(value) / scale * 100)}%`;
      parts.push(el("div", {class: i === top && values.length > 1 ? "bar top" : "bar",
                            "data-label": labels.names[i], "data-value": String(value)},
        el("span", {}, labels.names[i]), el("div", {class: "track"}, fill),
        el("span", {class: "value"}, formatValue(value))));
    });
  }
  parts.push(el("div", {class: "muted"}, `answered in ${ms.toFixed(1)} ms over HTTP`));
  result.replaceChildren(...parts);
}

function labelsFor(meta, output, values) {
  const image = meta.inputs.length === 1 && isImage(meta.inputs[0].shape);
  if (image && values.length === 10) {
    return {names: values.map((_, i) => `digit ${i}`)};
  }
  if (values.length === 1 && values[0] >= 0 && values[0] <= 1 && meta.inputs[0].datatype === "BYTES") {
    const p = values[0];
    return {names: [`${output.name}`],
            summary: `${p >= 0.5 ? "positive" : "negative"} (${(100 * p).toFixed(1)} % positive)`};
  }
  return {names: values.map((_, i) => values.length === 1 ? output.name : `${output.name}[${i}]`)};
}

function formatValue(v) {
  return Math.abs(v) >= 1000 || (Math.abs(v) < 0.001 && v !== 0) ? v.toExponential(2) : v.toFixed(3);
}

function batched(meta) {
  return meta.inputs[0].shape[0] === -1;
}

// Text: one review per request row.
function textForm(meta, input, result) {
  const area = el("textarea", {class: "review", placeholder: "Type a review…",
                               value: "A wonderful, moving film with great acting."});
  const run = el("button", {class: "run"}, "Score");
  run.addEventListener("click", () => {
    const shape = batched(meta) ? [1, 1] : [1];
    infer(meta, [{name: input.name, datatype: "BYTES", shape, data: [area.value]}], result);
  });
  return el("div", {}, area, el("div", {class: "row"}, run));
}

// Images: draw with the mouse (or finger), or upload a picture.
function imageForm(meta, input, result) {
  const size = input.shape[input.shape.length - 2];
  const canvas = el("canvas", {class: "draw", width: 224, height: 224});
  const ctx = canvas.getContext("2d");
  const clear = () => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, 224, 224); };
  clear();
  let drawing = false;
  const point = e => {
    const box = canvas.getBoundingClientRect();
    return [(e.clientX - box.left) * 224 / box.width, (e.clientY - box.top) * 224 / box.height];
  };
  canvas.addEventListener("pointerdown", e => {
    drawing = true; canvas.setPointerCapture(e.pointerId);
    ctx.beginPath(); ctx.moveTo(...point(e));
  });
  canvas.addEventListener("pointermove", e => {
    if (!drawing) return;
    ctx.strokeStyle = "#fff"; ctx.lineWidth = 16; ctx.lineCap = ctx.lineJoin = "round";
    ctx.lineTo(...point(e)); ctx.stroke();
  });
  const send = () => {
    const pixels = toModelPixels(canvas, size);
    const shape = batched(meta) ? [1, size, size, 1] : [size, size, 1];
    infer(meta, [{name: input.name, datatype: "FP32", shape, data: pixels}], result);
  };
  canvas.addEventListener("pointerup", () => { if (drawing) { drawing = false; send(); } });
  const upload = el("input", {type: "file", accept: "image/*"});
  upload.addEventListener("change", () => {
    const file = upload.files[0];
    if (!file) return;
    const image = new Image();
    image.onload = () => { drawUpload(ctx, image); URL.revokeObjectURL(image.src); send(); };
    image.src = URL.createObjectURL(file);
  });
  const clearButton = el("button", {class: "secondary"}, "Clear");
  clearButton.addEventListener("click", () => { clear(); result.replaceChildren(); });
  const run = el("button", {class: "run"}, "Classify");
  run.addEventListener("click", send);
  return el("div", {}, canvas, el("div", {class: "row"}, run, clearButton, upload),
            el("div", {class: "muted"}, "Draw a digit, or upload a picture of one."));
}

// An uploaded picture, grey, as light-on-dark like MNIST (dark ink on paper is inverted).
function drawUpload(ctx, image) {
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, 224, 224);
  const scale = Math.min(224 / image.width, 224 / image.height);
  const w = image.width * scale, h = image.height * scale;
  ctx.drawImage(image, (224 - w) / 2, (224 - h) / 2, w, h);
  const data = ctx.getImageData(0, 0, 224, 224);
  let sum = 0;
  for (let i = 0; i < data.data.length; i += 4) sum += grey(data.data, i);
  const invert = sum / (224 * 224) > 127;
  for (let i = 0; i < data.data.length; i += 4) {
    const g = invert ? 255 - grey(data.data, i) : grey(data.data, i);
    data.data[i] = data.data[i + 1] = data.data[i + 2] = g;
  }
  ctx.putImageData(data, 0, 0);
}

function grey(d, i) { return 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2]; }

// MNIST's own preparation: the ink's bounding box scaled into 20x20, centred in 28x28.
function toModelPixels(canvas, size) {
  const source = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let x0 = canvas.width, y0 = canvas.height, x1 = -1, y1 = -1;
  for (let y = 0; y < canvas.height; y++) {
    for (let x = 0; x < canvas.width; x++) {
      if (source[(y * canvas.width + x) * 4] > 40) {
        x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      }
    }
  }
  const small = el("canvas", {width: size, height: size});
  const sctx = small.getContext("2d");
  sctx.fillStyle = "#000"; sctx.fillRect(0, 0, size, size);
  if (x1 >= 0) {
    const w = x1 - x0 + 1, h = y1 - y0 + 1, box = size * 20 / 28;
    const scale = box / Math.max(w, h);
    sctx.imageSmoothingQuality = "high";
    sctx.drawImage(canvas, x0, y0, w, h, (size - w * scale) / 2, (size - h * scale) / 2,
                   w * scale, h * scale);
  }
  const pixels = sctx.getImageData(0, 0, size, size).data;
  const out = [];
  for (let i = 0; i < pixels.length; i += 4) out.push(pixels[i] / 255);
  return out;
}

// Any other model: one JSON array per input, prefilled with zeros of the right shape.
function jsonForm(meta, result) {
  const areas = meta.inputs.map(input => {
    const shape = input.shape.map(d => (d < 0 ? 1 : d));
    const count = shape.reduce((a, b) => a * b, 1);
    const example = input.datatype === "BYTES" ? Array(count).fill("")
      : input.datatype === "BOOL" ? Array(count).fill(false) : Array(count).fill(0);
    const area = el("textarea", {class: "json", value: JSON.stringify(example)});
    return {input, shape, area};
  });
  const run = el("button", {class: "run"}, "Infer");
  run.addEventListener("click", () => {
    try {
      const inputs = areas.map(({input, shape, area}) => (
        {name: input.name, datatype: input.datatype, shape, data: JSON.parse(area.value)}));
      infer(meta, inputs, result);
    } catch (error) {
      result.replaceChildren(el("div", {class: "error"}, `not JSON: ${error.message}`));
    }
  });
  return el("div", {}, ...areas.flatMap(({input, shape, area}) => [
    el("div", {class: "muted"}, `${input.name} · ${input.datatype} · shape [${shape}] (row-major data)`),
    area]), el("div", {class: "row"}, run));
}

refresh();
setInterval(refresh, REFRESH_MS);
