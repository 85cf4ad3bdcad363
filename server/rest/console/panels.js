// The try-it panel of each model: draw or upload digits, type reviews, or send JSON;
// many pictures or one review per line are scored in one request, with a table of results.
"use strict";

async function infer(meta, inputs) {
  return api(`/v2/models/${encodeURIComponent(meta.name)}/infer`,
    {method: "POST", headers: {"Content-Type": "application/json"},
     body: JSON.stringify({inputs})});
}

// Runs one inference for the panel, showing progress, the answer or a readable error.
async function run(result, work) {
  result.replaceChildren(el("span", {class: "muted"}, "running…"));
  const started = performance.now();
  try {
    const shown = await work();
    shown.push(el("div", {class: "muted"}, `answered in ${(performance.now() - started).toFixed(1)} ms over HTTP`));
    result.replaceChildren(...shown);
  } catch (error) {
    showError(result, error);
  }
}

function showError(result, error) {
  result.replaceChildren(el("div", {class: "error"}, readable(error)));
}

function buildPanel(meta, config, card) {
  const result = el("div", {class: "result"});
  const panel = el("div", {class: "panel", "data-model": meta.name},
                   el("h3", {}, meta.name, " ", el("span", {class: "muted"},
                      `v${meta.versions.join(", v")} · ${meta.platform}`)),
                   describe(meta, config, card), driftView(meta),
                   rolloutView(meta));
  const input = meta.inputs.length === 1 ? meta.inputs[0] : null;
  const maxBatch = (config && config.max_batch_size) || 0;
  if (input && input.datatype === "FP32" && isImage(input.shape)) {
    panel.append(imageForm(meta, input, maxBatch, result));
  } else if (input && input.datatype === "BYTES") {
    panel.append(textForm(meta, input, maxBatch, result));
  } else {
    panel.append(jsonForm(meta, result));
  }
  panel.append(result);
  return panel;
}

// What the model takes and gives, and its card's figures when the repository has one.
function describe(meta, config, card) {
  const tensor = t => el("li", {}, el("code", {}, t.name), ` ${t.datatype} [${t.shape.join(", ")}]`);
  const parts = [el("div", {class: "muted"}, "inputs"), el("ul", {class: "tensors"}, ...meta.inputs.map(tensor)),
                 el("div", {class: "muted"}, "outputs"), el("ul", {class: "tensors"}, ...meta.outputs.map(tensor))];
  if (config && config.max_batch_size) parts.push(el("div", {class: "muted"}, `up to ${config.max_batch_size} rows per request`));
  if (card) parts.push(cardFigures(card));
  return el("details", {class: "about"}, el("summary", {}, "interface and model card"), ...parts);
}

function cardFigures(card) {
  const metrics = card.metrics || {};
  const accuracy = Object.entries(metrics).find(([key]) => key.includes("accuracy"));
  const rows = [
    ["description", card.description],
    [accuracy ? accuracy[0].replaceAll("_", " ") : null, accuracy ? percent(accuracy[1]) : null],
    ["examples tested", metrics.test_examples],
    ["training data", card.data && card.data.description],
    ["trained", card.created && card.created.slice(0, 10)],
  ].filter(([key, value]) => key && value !== undefined && value !== null);
  return el("dl", {class: "card"}, ...rows.flatMap(([key, value]) => [el("dt", {}, key), el("dd", {}, String(value))]));
}

function isImage(shape) {
  const dims = shape.slice(shape.length === 4 ? 1 : 0);
  return dims.length === 3 && dims[2] === 1 && dims[0] === dims[1] && dims[0] > 0;
}

function batched(meta) { return meta.inputs[0].shape[0] === -1; }

// Rows in requests of at most maxBatch (one per request for a model without batching).
async function inferRows(meta, input, rows, rowShape, datatype, maxBatch) {
  const per = batched(meta) ? Math.max(1, maxBatch || rows.length) : 1;
  const answers = [];
  for (let i = 0; i < rows.length; i += per) {
    const chunk = rows.slice(i, i + per);
    const shape = batched(meta) ? [chunk.length, ...rowShape] : rowShape;
    const answer = await infer(meta, [{name: input.name, datatype, shape, data: chunk.flat()}]);
    answers.push(answer.outputs[0]);
  }
  const values = answers.flatMap(output => output.data.map(Number));
  const width = values.length / rows.length;
  return rows.map((_, i) => values.slice(i * width, (i + 1) * width));
}

// ---- text: one review, or one per line -------------------------------------------------
function textForm(meta, input, maxBatch, result) {
  const area = el("textarea", {class: "review", value: "A wonderful, moving film with great acting.",
                               placeholder: "Type a review, or several: one per line."});
  const button = el("button", {class: "run"}, "Score");
  button.addEventListener("click", () => {
    const lines = area.value.split("\n").map(line => line.trim()).filter(Boolean);
    if (!lines.length) { showError(result, new Error("Type a review first (one per line for several).")); return; }
    run(result, async () => {
      const scores = await inferRows(meta, input, lines.map(line => [line]), [1], "BYTES", maxBatch);
      if (lines.length === 1) return showAnswer(meta, meta.outputs[0].name, scores[0]);
      return [table(["review", "sentiment", "positive"], lines.map((line, i) => {
        const p = scores[i][0];
        return [shorten(line, 60), p >= 0.5 ? "positive" : "negative", percent(p)];
      }))];
    });
  });
  return el("div", {}, area, el("div", {class: "row"}, button,
            el("span", {class: "muted"}, "one review per line scores them together")));
}

// ---- images: draw with the mouse (or finger), or upload pictures ---------------------------
function imageForm(meta, input, maxBatch, result) {
  const size = input.shape[input.shape.length - 2];
  const canvas = el("canvas", {class: "draw", width: 224, height: 224});
  const ctx = canvas.getContext("2d");
  const preview = el("canvas", {class: "preview", width: 28, height: 28, title: "what the model sees"});
  let uploads = null;  // [{name, pixels}] after an upload, until the next drawing
  const clear = () => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, 224, 224); uploads = null; };
  clear();
  let drawing = false;
  const point = e => {
    const box = canvas.getBoundingClientRect();
    return [(e.clientX - box.left) * 224 / box.width, (e.clientY - box.top) * 224 / box.height];
  };
  canvas.addEventListener("pointerdown", e => {
    if (uploads) clear();
    drawing = true; canvas.setPointerCapture(e.pointerId);
    ctx.beginPath(); ctx.moveTo(...point(e));
  });
  canvas.addEventListener("pointermove", e => {
    if (!drawing) return;
    ctx.strokeStyle = "#fff"; ctx.lineWidth = 16; ctx.lineCap = ctx.lineJoin = "round";
    ctx.lineTo(...point(e)); ctx.stroke();
  });
  const send = () => {
    let items = uploads;
    if (!items) {
      const pixels = prepareDigit(greyOfImageData(ctx.getImageData(0, 0, 224, 224)));
      if (!pixels) { showError(result, new Error("Draw a digit first, or upload a picture of one.")); return; }
      items = [{name: "drawing", pixels}];
    }
    showPreview(preview, items[0].pixels);
    run(result, async () => {
      const rows = items.map(item => Array.from(item.pixels));
      const scores = await inferRows(meta, input, rows, [size, size, 1], "FP32", maxBatch);
      if (items.length === 1) return showAnswer(meta, meta.outputs[0].name, scores[0]);
      return [table(["picture", "digit", "confidence", "next"], items.map((item, i) => {
        const order = scores[i].map((p, d) => [p, d]).sort((a, b) => b[0] - a[0]);
        return [item.name, String(order[0][1]), percent(order[0][0]), `${order[1][1]} (${percent(order[1][0])})`];
      }))];
    });
  };
  canvas.addEventListener("pointerup", () => { if (drawing) { drawing = false; send(); } });
  const upload = el("input", {type: "file", accept: "image/*", multiple: true});
  upload.addEventListener("change", async () => {
    const files = Array.from(upload.files);
    upload.value = "";  // the same file again is a new choice
    if (!files.length) return;
    try {
      const items = [];
      for (const file of files) items.push(await readDigit(file));
      drawPicture(ctx, items[0].bitmap);
      uploads = items;
      send();
    } catch (error) {
      showError(result, error);
    }
  });
  const clearButton = el("button", {class: "secondary"}, "Clear");
  clearButton.addEventListener("click", () => { clear(); result.replaceChildren(); });
  const button = el("button", {class: "run"}, "Classify");
  button.addEventListener("click", send);
  return el("div", {}, el("div", {class: "row"}, canvas, preview),
            el("div", {class: "row"}, button, clearButton, upload),
            el("div", {class: "muted"}, "Draw a digit, or upload pictures of digits (several at once score together)."));
}

// A file -> {name, bitmap, pixels}; an error a person can act on when it is not a digit picture.
async function readDigit(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (error) {
    throw new Error(`${file.name}: not a picture this browser can read (try PNG or JPEG).`);
  }
  const page = document.createElement("canvas");
  page.width = bitmap.width; page.height = bitmap.height;
  const context = page.getContext("2d");
  context.drawImage(bitmap, 0, 0);
  const pixels = prepareDigit(greyOfImageData(context.getImageData(0, 0, page.width, page.height)));
  if (!pixels) throw new Error(`${file.name}: no digit found (the picture is blank or one flat colour).`);
  return {name: file.name, bitmap, pixels};
}

function drawPicture(ctx, bitmap) {
  ctx.fillStyle = "#777"; ctx.fillRect(0, 0, 224, 224);
  const scale = Math.min(224 / bitmap.width, 224 / bitmap.height);
  const w = bitmap.width * scale, h = bitmap.height * scale;
  ctx.drawImage(bitmap, (224 - w) / 2, (224 - h) / 2, w, h);
}

function showPreview(canvas, pixels) {
  const context = canvas.getContext("2d"), image = context.createImageData(28, 28);
  pixels.forEach((v, i) => { image.data.set([v * 255, v * 255, v * 255, 255], i * 4); });
  context.putImageData(image, 0, 0);
}

// ---- answers ------------------------------------------------------------------------------
function showAnswer(meta, outputName, values) {
  const labels = labelsFor(meta, outputName, values);
  let top = 0;
  values.forEach((v, i) => { if (v > values[top]) top = i; });
  const parts = [];
  if (labels.summary) parts.push(el("div", {class: "answer"}, labels.summary));
  else if (values.length > 1) parts.push(el("div", {class: "answer"}, `${outputName}: ${labels.names[top]}`));
  const probabilities = values.every(v => v >= 0 && v <= 1);
  const scale = probabilities ? 1 : Math.max(...values.map(Math.abs), 1e-9);
  values.slice(0, 64).forEach((value, i) => {
    const fill = el("div", {class: "fill"});
    fill.style.width = `${Math.min(100, Math.abs(value) / scale * 100)}%`;
    parts.push(el("div", {class: i === top && values.length > 1 ? "bar top" : "bar",
                          "data-label": labels.names[i], "data-value": String(value)},
      el("span", {}, labels.names[i]), el("div", {class: "track"}, fill),
      el("span", {class: "value"}, probabilities ? percent(value) : number(value))));
  });
  return parts;
}

function labelsFor(meta, outputName, values) {
  if (isImage(meta.inputs[0].shape) && values.length === 10) {
    return {names: values.map((_, i) => `digit ${i}`)};
  }
  if (values.length === 1 && values[0] >= 0 && values[0] <= 1 && meta.inputs[0].datatype === "BYTES") {
    const p = values[0];
    return {names: [outputName], summary: `${p >= 0.5 ? "positive" : "negative"} (${percent(p)} positive)`};
  }
  return {names: values.map((_, i) => values.length === 1 ? outputName : `${outputName}[${i}]`)};
}

function table(head, rows) {
  return el("table", {class: "results"},
            el("thead", {}, el("tr", {}, ...head.map(h => el("th", {}, h)))),
            el("tbody", {}, ...rows.map(row => el("tr", {}, ...row.map(cell => el("td", {}, cell))))));
}

function shorten(text, width) { return text.length <= width ? text : text.slice(0, width - 1) + "…"; }

// ---- any other model: one JSON array per input, prefilled with zeros of the right shape ----
function jsonForm(meta, result) {
  const areas = meta.inputs.map(input => {
    const shape = input.shape.map(d => (d < 0 ? 1 : d));
    const count = shape.reduce((a, b) => a * b, 1);
    const example = input.datatype === "BYTES" ? Array(count).fill("")
      : input.datatype === "BOOL" ? Array(count).fill(false) : Array(count).fill(0);
    const area = el("textarea", {class: "json", value: JSON.stringify(example)});
    return {input, shape, area};
  });
  const button = el("button", {class: "run"}, "Infer");
  button.addEventListener("click", () => {
    let inputs;
    try {
      inputs = areas.map(({input, shape, area}) => (
        {name: input.name, datatype: input.datatype, shape, data: JSON.parse(area.value)}));
    } catch (error) {
      showError(result, new Error(`not JSON: ${error.message}`));
      return;
    }
    run(result, async () => {
      const answer = await infer(meta, inputs);
      return answer.outputs.flatMap(output => showAnswer(meta, output.name, output.data.map(Number)));
    });
  });
  return el("div", {}, ...areas.flatMap(({input, shape, area}) => [
    el("div", {class: "muted"}, `${input.name} · ${input.datatype} · shape [${shape}] (row-major data)`),
    area]), el("div", {class: "row"}, button));
}
