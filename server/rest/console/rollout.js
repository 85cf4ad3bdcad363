// Canary split and shadow agreement per model (GET …/rollout, summed over every worker),
// refreshed while the page is open; hidden for a model without a rollout.
"use strict";

const ROLLOUT_REFRESH_MS = 3000;

function rolloutView(meta) {
  const section = el("details", {class: "rollout", "data-model": meta.name});
  section.hidden = true;
  const update = async () => {
    try {
      const rollout = await api(`/v2/models/${encodeURIComponent(meta.name)}/rollout`);
      renderRollout(section, rollout);
    } catch (error) {
      section.classList.add("stale");
    }
    setTimeout(update, ROLLOUT_REFRESH_MS);
  };
  update();
  return section;
}

function rolloutSummary(rollout) {
  const s = rollout.settings;
  const parts = [];
  if (s.canary_version !== null) parts.push(`canary v${s.canary_version} at ${percent(s.canary_weight)}`);
  if (s.shadow_version !== null) {
    const shadow = rollout.shadows[0];
    parts.push(`shadow v${s.shadow_version}` +
               (shadow && shadow.rows ? ` agrees on ${percent(shadow.agreement)}` : " (no rows yet)"));
  }
  return parts.join(" · ") || "no candidate";
}

function renderRollout(section, rollout) {
  section.classList.remove("stale");
  section.hidden = rollout.settings === null;
  if (section.hidden) return;
  const keepOpen = section.open;
  const workers = rollout.workers > 1 ? `, ${rollout.workers} workers` : "";
  const split = el("table", {class: "split"},
    el("thead", {}, el("tr", {}, el("th", {}, "version"), el("th", {}, "role"),
                       el("th", {}, "requests"), el("th", {}, "share"))),
    el("tbody", {}, ...rollout.versions.map(v => el("tr", {
      "data-version": v.version, "data-requests": v.requests, "data-share": v.share},
      el("td", {}, `v${v.version}`), el("td", {}, v.role || "–"),
      el("td", {class: "num requests"}, v.requests), el("td", {class: "num share"}, percent(v.share))))));
  section.replaceChildren(
    el("summary", {}, "rollout: ", el("span", {class: "steady"}, rolloutSummary(rollout))),
    el("div", {class: "muted"}, `requests per version since its load${workers}`), split,
    ...rollout.shadows.map(shadowView));
  section.open = keepOpen;
}

function shadowView(shadow) {
  const edges = [...shadow.delta_bounds.map(b => `≤ ${b}`), `> ${shadow.delta_bounds.at(-1)}`];
  const top = Math.max(1, ...shadow.delta_counts);
  const bars = el("span", {class: "bins"}, ...shadow.delta_counts.map((count, i) => {
    const bar = el("span", {class: "bin live", title: `|Δ score| ${edges[i]}: ${count} rows`});
    bar.style.height = `${Math.round(100 * count / top)}%`;
    return bar;
  }));
  return el("div", {class: "shadow", "data-primary": shadow.primary, "data-shadow": shadow.shadow,
                    "data-agreement": shadow.agreement, "data-rows": shadow.rows},
    el("div", {}, `shadow v${shadow.shadow} next to v${shadow.primary}: agreement `,
       el("strong", {class: "agreement"}, shadow.rows ? percent(shadow.agreement) : "–"),
       ` · ${shadow.rows} rows: ${shadow.agree} agree, ${shadow.disagree} disagree, ` +
       `${shadow.dropped} dropped (shadow behind), ${shadow.failures} failed`),
    el("div", {}, "|Δ top score| per row: ", bars,
       el("span", {class: "muted"}, ` mean ${number(shadow.delta_mean)}`)));
}
