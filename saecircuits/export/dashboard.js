// Feature dashboard rendering shared by the graph viewer and the dashboards page.
// All text goes through textContent / setAttribute (never innerHTML): token strings
// cannot inject markup.
"use strict";
const SVGNS = "http://www.w3.org/2000/svg";
function el(tag, attrs, text, parent) {
  const e = document.createElement(tag);
  for (const k in (attrs || {})) e.setAttribute(k, attrs[k]);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (parent) parent.appendChild(e);
  return e;
}
function sv(tag, attrs, parent) {
  const e = document.createElementNS(SVGNS, tag);
  for (const k in (attrs || {})) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}
function fmt(x) { return (x === null || x === undefined) ? "" : (Math.abs(x) >= 1e4 || (x !== 0 && Math.abs(x) < 1e-3) ? x.toExponential(2) : (+x).toFixed(3)); }
function visTok(t) { return String(t).replace(/\n/g, "\u23ce").replace(/\t/g, "\u21e5"); }
function shade(v, max) {
  if (!(max > 0) || !(v > 0)) return "transparent";
  const a = Math.min(1, v / max);
  return `rgba(255,140,0,${(0.08 + 0.8 * a).toFixed(3)})`;
}
function histogram(parent, h) {
  if (!h || !h.counts || !h.counts.length) return;
  const W = 380, H = 70, m = Math.max(...h.counts, 1), bw = W / h.counts.length;
  const s = sv("svg", {width: W, height: H + 14, class: "hist"}, parent);
  h.counts.forEach((c, i) => {
    const bh = c > 0 ? Math.max(1, H * Math.log1p(c) / Math.log1p(m)) : 0;
    sv("rect", {x: i * bw, y: H - bh, width: Math.max(1, bw - 1), height: bh, fill: "#e08a2c"}, s);
  });
  const lo = sv("text", {x: 0, y: H + 12, class: "axis"}, s); lo.textContent = fmt(h.edges[0]);
  const hi = sv("text", {x: W - 40, y: H + 12, class: "axis"}, s); hi.textContent = fmt(h.edges[h.edges.length - 1]);
}
function renderDashboard(panel, d) {
  const box = el("div", {class: "dashboard", "data-feature": d.hook + ":" + d.index}, null, panel);
  el("h3", {}, "Feature dashboard " + d.hook + " #" + d.index, box);
  if (d.explanation) {  // auto-interp text (LLM output: textContent only, like everything here)
    const score = typeof d.explanation_score === "number" ? " (score " + d.explanation_score.toFixed(2) + ")" : "";
    el("div", {class: "explanation", "data-key": "explanation"}, "explanation: " + d.explanation + score, box);
  }
  const kv = el("div", {class: "kv"}, null, box);
  for (const [k, v] of [["activation freq", fmt(d.activation_frequency)], ["max activation", fmt(d.act_max)],
                        ["description", d.label || ""], ["tokens seen", d.n_tokens]]) {
    el("span", {}, k, kv); el("span", {}, v, kv);
  }
  el("h3", {}, "Top activating contexts", box);
  const ctxs = el("div", {class: "contexts"}, null, box);
  for (const c of d.contexts || []) {
    const row = el("div", {class: "ctx"}, null, ctxs);
    el("span", {class: "ctxval"}, fmt(c.max), row);
    c.tokens.forEach((t, i) => {
      const s = el("span", {class: "tok" + (i === c.argmax ? " max" : ""), title: fmt(c.acts[i])}, visTok(t), row);
      s.style.background = shade(c.acts[i], d.act_max);
    });
  }
  if (!(d.contexts || []).length) el("p", {class: "muted"}, "never active on the corpus", ctxs);
  el("h3", {}, "Activation histogram (nonzero, log counts)", box);
  histogram(box, d.histogram);
  el("h3", {}, "Output tokens (decoder row \u00b7 unembedding)", box);
  const lg = el("div", {class: "logits"}, null, box);
  for (const [name, list, cls] of [["promoted", d.top_logits_values || [], "pos"], ["suppressed", d.bottom_logits_values || [], "neg"]]) {
    const col = el("div", {}, null, lg);
    el("b", {}, name, col);
    for (const [t, v] of list) { const r = el("div", {class: cls}, null, col); r.textContent = JSON.stringify(t) + " " + fmt(v); }
  }
}
