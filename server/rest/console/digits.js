// A picture of a digit -> the MNIST model's 28x28 input, MNIST's way. The same steps,
// constants and area resampling as server/client/images.py (the CLI), so a picture gets
// the same input from the browser and from the command line; a test holds them equal.
// A grey picture here is {h, w, data: Float64Array of 0..255 grey levels, row-major}.
"use strict";

const DIGIT = {
  SIZE: 28, BOX: 20,          // MNIST fits each digit into 20x20 inside 28x28
  MAX_SIDE: 1024,             // larger pictures are scaled down first
  INK_THRESHOLD: 0.25,        // (0..1 after the paper is removed) lighter is paper
  TRIM: 0.005,                // share of ink mass ignored at each side when cropping
  GRID: 8, PAPER_PERCENTILE: 20,       // the paper map
  SPECKS_SIDE: 96, SPECK_SHARE: 0.08,  // blobs smaller than this share are dust
};

function roundHalfUp(value) { return Math.max(1, Math.floor(value + 0.5)); }

// Luma of RGBA pixels composited on white paper (transparent = paper).
function greyOfImageData(imageData) {
  const {width: w, height: h, data} = imageData;
  const out = new Float64Array(w * h);
  for (let i = 0, p = 0; p < out.length; i += 4, p++) {
    const alpha = data[i + 3] / 255;
    const luma = 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
    out[p] = luma * alpha + 255 * (1 - alpha);
  }
  return {h, w, data: out};
}

// Float32Array(784) in [0, 1], light digit on black; null when no digit stands out.
function prepareDigit(grey) {
  if (Math.max(grey.h, grey.w) > DIGIT.MAX_SIDE) {
    const scale = DIGIT.MAX_SIDE / Math.max(grey.h, grey.w);
    grey = resizeArea(grey, roundHalfUp(grey.h * scale), roundHalfUp(grey.w * scale));
  }
  const ink = inkOf(grey);
  if (ink === null) return null;
  const [top, bottom, left, right] = inkBox(ink);
  const crop = sub(ink, top, bottom, left, right);
  const scale = DIGIT.BOX / Math.max(crop.h, crop.w);
  const height = Math.min(DIGIT.BOX, roundHalfUp(crop.h * scale));
  const width = Math.min(DIGIT.BOX, roundHalfUp(crop.w * scale));
  const digit = resizeArea(crop, height, width);
  const S = DIGIT.SIZE, frame = new Float64Array(S * S);
  const y0 = Math.floor((S - height) / 2), x0 = Math.floor((S - width) / 2);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) frame[(y0 + y) * S + x0 + x] = digit.data[y * width + x];
  }
  return Float32Array.from(centreMass(frame));
}

function inkOf(grey) {
  const {h, w} = grey;
  const border = [];
  for (let x = 0; x < w; x++) border.push(grey.data[x], grey.data[(h - 1) * w + x]);
  for (let y = 0; y < h; y++) border.push(grey.data[y * w], grey.data[y * w + w - 1]);
  const flip = median(border) > 127;
  const light = flip ? {h, w, data: grey.data.map(v => 255 - v)} : grey;
  const paper = paperOf(light);
  const above = light.data.map((v, i) => v - paper[i]);  // shade across a photo is not ink
  let peak = -Infinity;
  for (const v of above) if (v > peak) peak = v;
  if (peak < 32) return null;
  const data = above.map(v => {
    const ink = Math.min(1, Math.max(0, v / peak));
    return ink < DIGIT.INK_THRESHOLD ? 0 : ink;
  });
  return withoutSpecks({h, w, data});
}

function median(values) {
  const sorted = Float64Array.from(values).sort();
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

// Only blobs holding SPECK_SHARE of the biggest blob's ink, found on a small copy.
function withoutSpecks(ink) {
  const scale = Math.max(ink.h, ink.w) / DIGIT.SPECKS_SIDE;
  const height = scale <= 1 ? ink.h : roundHalfUp(ink.h / scale);
  const width = scale <= 1 ? ink.w : roundHalfUp(ink.w / scale);
  const small = resizeArea(ink, height, width);
  const {labels, masses} = blobs(small);
  let biggest = 0;
  for (const m of masses) biggest = Math.max(biggest, m);
  const keep = [false, ...masses.map(m => m >= DIGIT.SPECK_SHARE * biggest)];
  const data = new Float64Array(ink.h * ink.w);
  for (let y = 0; y < ink.h; y++) {
    const sy = Math.floor(y * height / ink.h);
    for (let x = 0; x < ink.w; x++) {
      const sx = Math.floor(x * width / ink.w);
      if (keep[labels[sy * width + sx]]) data[y * ink.w + x] = ink.data[y * ink.w + x];
    }
  }
  return {h: ink.h, w: ink.w, data};
}

// 8-connected blobs of the non-zero pixels: a label per pixel (0 = none), masses.
function blobs(image) {
  const {h, w, data} = image;
  const labels = new Int32Array(h * w), masses = [];
  for (let start = 0; start < h * w; start++) {
    if (!(data[start] > 0) || labels[start]) continue;
    masses.push(0);
    labels[start] = masses.length;
    const stack = [start];
    while (stack.length) {
      const p = stack.pop(), y = Math.floor(p / w), x = p % w;
      masses[masses.length - 1] += data[p];
      for (let ny = Math.max(0, y - 1); ny < Math.min(h, y + 2); ny++) {
        for (let nx = Math.max(0, x - 1); nx < Math.min(w, x + 2); nx++) {
          const q = ny * w + nx;
          if (data[q] > 0 && !labels[q]) { labels[q] = masses.length; stack.push(q); }
        }
      }
    }
  }
  return {labels, masses};
}

// The paper's level under every pixel: each cell's darkest PAPER_PERCENTILE, the lowest
// of each cell's neighbours, interpolated between cell centres.
function paperOf(grey) {
  const rows = cells(grey.h), cols = cells(grey.w);
  const levels = rows.map(([r0, r1]) => cols.map(([c0, c1]) => {
    const block = [];
    for (let y = r0; y < r1; y++) for (let x = c0; x < c1; x++) block.push(grey.data[y * grey.w + x]);
    const sorted = Float64Array.from(block).sort();
    return sorted[Math.floor((sorted.length - 1) * DIGIT.PAPER_PERCENTILE / 100)];
  }));
  const low = levels.map((row, i) => row.map((_, j) => {
    let m = Infinity;
    for (let di = -1; di <= 1; di++) {
      for (let dj = -1; dj <= 1; dj++) {
        const a = Math.min(rows.length - 1, Math.max(0, i + di));
        const b = Math.min(cols.length - 1, Math.max(0, j + dj));
        m = Math.min(m, levels[a][b]);
      }
    }
    return m;
  }));
  const cy = rows.map(([a, b]) => (a + b - 1) / 2), cx = cols.map(([a, b]) => (a + b - 1) / 2);
  const across = low.map(row => interp(grey.w, cx, row));  // rows x w
  const out = new Float64Array(grey.h * grey.w);
  for (let x = 0; x < grey.w; x++) {
    const column = interp(grey.h, cy, across.map(row => row[x]));
    for (let y = 0; y < grey.h; y++) out[y * grey.w + x] = column[y];
  }
  return out;
}

function cells(size) {
  const count = Math.min(DIGIT.GRID, size), out = [];
  for (let i = 0; i < count; i++) out.push([Math.floor(size * i / count), Math.floor(size * (i + 1) / count)]);
  return out;
}

// numpy.interp at 0..n-1: linear between points, the end values beyond them.
function interp(n, xs, ys) {
  const out = new Float64Array(n);
  let k = 0;
  for (let t = 0; t < n; t++) {
    if (t <= xs[0]) { out[t] = ys[0]; continue; }
    if (t >= xs[xs.length - 1]) { out[t] = ys[ys.length - 1]; continue; }
    while (xs[k + 1] < t) k++;
    const f = (t - xs[k]) / (xs[k + 1] - xs[k]);
    out[t] = ys[k] + f * (ys[k + 1] - ys[k]);
  }
  return out;
}

// [top, bottom) x [left, right) holding all but TRIM of the ink mass at each side.
function inkBox(ink) {
  const rowMass = new Float64Array(ink.h), colMass = new Float64Array(ink.w);
  for (let y = 0; y < ink.h; y++) {
    for (let x = 0; x < ink.w; x++) {
      const v = ink.data[y * ink.w + x];
      rowMass[y] += v; colMass[x] += v;
    }
  }
  const span = mass => {
    let total = 0;
    for (const v of mass) total += v;
    let running = 0, first = mass.length, last = mass.length;
    for (let i = 0; i < mass.length; i++) {
      running += mass[i];
      const c = running / total;
      if (first === mass.length && c > DIGIT.TRIM) first = i;
      if (last === mass.length && c >= 1 - DIGIT.TRIM) last = i;
    }
    return [first, Math.min(mass.length, last + 1)];
  };
  return [...span(rowMass), ...span(colMass)];
}

function sub(image, top, bottom, left, right) {
  const h = bottom - top, w = right - left, data = new Float64Array(h * w);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) data[y * w + x] = image.data[(top + y) * image.w + left + x];
  }
  return {h, w, data};
}

// Each output pixel is the mean of the input area it covers (fractional edges weighted).
function resizeArea(image, height, width) {
  const wy = areaWeights(image.h, height), wx = areaWeights(image.w, width);
  const tmp = new Float64Array(height * image.w);
  for (let o = 0; o < height; o++) {
    for (const [i, weight] of wy[o]) {
      for (let x = 0; x < image.w; x++) tmp[o * image.w + x] += weight * image.data[i * image.w + x];
    }
  }
  const data = new Float64Array(height * width);
  for (let y = 0; y < height; y++) {
    for (let o = 0; o < width; o++) {
      let sum = 0;
      for (const [i, weight] of wx[o]) sum += weight * tmp[y * image.w + i];
      data[y * width + o] = sum;
    }
  }
  return {h: height, w: width, data};
}

function areaWeights(sizeIn, sizeOut) {
  const step = sizeIn / sizeOut, out = [];
  for (let o = 0; o < sizeOut; o++) {
    const start = o * step, end = start + step, row = [];
    for (let i = Math.floor(start); i < Math.min(sizeIn, Math.ceil(end)); i++) {
      const overlap = Math.min(end, i + 1) - Math.max(start, i);
      if (overlap > 0) row.push([i, overlap / step]);
    }
    out.push(row);
  }
  return out;
}

function centreMass(frame) {
  const S = DIGIT.SIZE;
  let total = 0, my = 0, mx = 0, top = S, bottom = -1, left = S, right = -1;
  for (let y = 0; y < S; y++) {
    for (let x = 0; x < S; x++) {
      const v = frame[y * S + x];
      if (!v) continue;
      total += v; my += y * v; mx += x * v;
      top = Math.min(top, y); bottom = Math.max(bottom, y);
      left = Math.min(left, x); right = Math.max(right, x);
    }
  }
  // Never push ink off the frame: limit the shift to the empty margins.
  const dy = Math.min(S - 1 - bottom, Math.max(-top, Math.floor(S / 2 - my / total)));
  const dx = Math.min(S - 1 - right, Math.max(-left, Math.floor(S / 2 - mx / total)));
  const out = new Float64Array(S * S);
  for (let y = 0; y < S; y++) {
    for (let x = 0; x < S; x++) if (frame[y * S + x]) out[(y + dy) * S + x + dx] = frame[y * S + x];
  }
  return out;
}
