// Drift per model: each signal's PSI against the training reference and its live vs
// reference proportions per bin, refreshed while the page is open (GET …/drift).
"use strict";

const DRIFT_REFRESH_MS = 5000;
const DRIFT_SHIFTED = 0.2;  // PSI above this reads as a shifted population
const DRIFT_MIN_ROWS = 200;  // fewer rows cannot fill ten bins: no verdict yet

// A panel section that keeps itself current; empty for a model without a reference.
function driftView(meta) {
  const section = el("details", {class: "drift", "data-model": meta.name});
  const update = async () => {
    try {
      const drift = await api(`/v2/models/${encodeURIComponent(meta.name)}/drift`);
      renderDrift(section, drift);
    } catch (error) {
      if (/HTTP 404/.test(error.message)) { section.hidden = true; return; }  // no reference
      section.classList.add("stale");
    }
    setTimeout(update, DRIFT_REFRESH_MS);
  };
  update();
  return section;
}

function renderDrift(section, drift) {
  section.hidden = false;
  section.classList.remove("stale");
  const worst = Math.max(0, ...drift.signals.map(s => s.psi));
  const judged = drift.rows >= DRIFT_MIN_ROWS;
  const state = drift.rows === 0 ? "no traffic yet"
    : !judged ? `${drift.rows} rows: too few to judge (under ${DRIFT_MIN_ROWS})`
    : worst > DRIFT_SHIFTED ? `shifted (PSI ${worst.toFixed(2)})` : `as trained (PSI ≤ ${worst.toFixed(2)})`;
  const summary = el("summary", {}, "drift vs training reference: ",
                     el("span", {class: worst > DRIFT_SHIFTED && judged ? "shifted" : "steady"}, state));
  const rows = drift.signals.map(signal => el("tr", {"data-signal": signal.name},
    el("td", {}, signal.name),
    el("td", {class: "num psi"}, drift.rows ? signal.psi.toFixed(3) : "–"),
    el("td", {}, binChart(signal))));
  section.replaceChildren(summary,
    el("div", {class: "muted"}, `${drift.rows} rows in the window; bars: reference (grey) and live (blue) share per bin`),
    el("table", {class: "signals"}, el("thead", {}, el("tr", {}, el("th", {}, "signal"), el("th", {}, "PSI"),
                                                          el("th", {}, "live vs reference"))),
       el("tbody", {}, ...rows)));
}

function binChart(signal) {
  const top = Math.max(1e-9, ...signal.live, ...signal.reference);
  const bar = (share, kind) => {
    const node = el("span", {class: `bin ${kind}`});
    node.style.height = `${Math.round(100 * share / top)}%`;
    return node;
  };
  const edges = [...signal.edges.map(e => number(e)), "∞"];
  return el("span", {class: "bins"}, ...signal.reference.map((share, i) => el("span", {
    class: "pair", title: `≤ ${edges[i]}: reference ${percent(share)}, live ${percent(signal.live[i])}`},
    bar(share, "reference"), bar(signal.live[i], "live"))));
}
