// saecircuits graph viewer: self-contained, no network access. All text goes through
// textContent / setAttribute, never innerHTML, so token strings cannot inject markup.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("saecircuits-data").textContent);
  const nodes = DATA.graph.nodes, edges = DATA.graph.edges, dashboards = DATA.dashboards || {};
  const byId = new Map(nodes.map(n => [n.id, n]));
  let selected = null;

  function title(n) {
    const p = n.pos === null || n.pos === undefined ? "*" : n.pos;
    if (n.kind === "feature") return n.hook + " #" + n.feature + " @" + p;
    if (n.kind === "error") return "err " + n.hook + " @" + p;
    if (n.kind === "embed") return "embed @" + p;
    return n.kind === "metric" ? "metric" : n.id;
  }
  function dashKey(n) { return n.kind === "feature" ? n.hook + ":" + n.feature : null; }

  // ---- summary ----
  const S = DATA.summary || {};
  const sumEl = document.getElementById("summary");
  const parts = [["task", S.task], ["method", S.method], ["metric", S.metric_clean !== undefined ? fmt(S.metric_clean) : S.metric],
                 ["faithfulness", S.faithfulness !== undefined && S.faithfulness !== null ? fmt(S.faithfulness) : null],
                 ["nodes", S.n_nodes], ["edges", S.n_edges]];
  for (const [k, v] of parts) {
    if (v === undefined || v === null) continue;
    el("b", {}, k + ": ", sumEl); el("span", {"data-key": k}, String(v) + "   ", sumEl);
  }

  // ---- layout: y by layer (embeddings bottom, metric top), x by position ----
  // rows: embeddings, then per layer attn < mlp < resid, then the metric on top
  const SUB = {attn: 0.2, mlp: 0.4};
  function rankOf(n) {
    if (n.kind === "embed") return -1;
    if (n.kind === "metric" || n.kind === "logit") return 1e9;
    const base = n.layer === null || n.layer === undefined ? 0 : n.layer;
    return base + (SUB[String(n.hook || "").split(".")[0]] || 0.6);
  }
  const rowName = {};
  for (const n of nodes) rowName[rankOf(n)] = n.kind === "embed" ? "embed" : (n.kind === "metric" || n.kind === "logit") ? "metric" : String(n.hook);
  const rankVals = [...new Set(nodes.map(rankOf))].sort((a, b) => a - b);
  // targets without a position (the metric) are centred above everything else
  const floating = n => (n.kind === "metric" || n.kind === "logit") && (n.pos === null || n.pos === undefined);
  const placed = nodes.filter(n => !floating(n));
  const posVals = [...new Set(placed.map(n => n.pos === null || n.pos === undefined ? -1 : n.pos))].sort((a, b) => a - b);
  const cells = new Map();
  for (const n of placed) {
    const key = rankOf(n) + "|" + (n.pos === null || n.pos === undefined ? -1 : n.pos);
    if (!cells.has(key)) cells.set(key, []);
    cells.get(key).push(n);
  }
  const colCount = new Map(posVals.map(p => [p, 1]));
  for (const [key, list] of cells) {
    list.sort((a, b) => Math.abs(b.effect) - Math.abs(a.effect));
    const p = +key.split("|")[1];
    colCount.set(p, Math.max(colCount.get(p), list.length));
  }
  const DX = 26, DY = 64, LEFT = 90, TOP = 30, COLGAP = 24;
  const colX = new Map(); let x = LEFT;
  for (const p of posVals) { colX.set(p, x); x += colCount.get(p) * DX + COLGAP; }
  const width = Math.max(x + 20, 400), height = TOP + rankVals.length * DY + 60;
  const rowY = new Map(rankVals.map((r, i) => [r, TOP + (rankVals.length - 1 - i) * DY + 20]));
  for (const [key, list] of cells) {
    const [r, p] = key.split("|").map(Number);
    list.forEach((n, i) => { n._x = colX.get(p) + i * DX + DX / 2; n._y = rowY.get(r); });
  }
  const floats = nodes.filter(floating), mid = (LEFT + Math.max(x - COLGAP, LEFT + DX)) / 2;
  floats.forEach((n, i) => { n._x = mid + (i - (floats.length - 1) / 2) * 3 * DX; n._y = rowY.get(rankOf(n)); });
  const maxEff = Math.max(1e-12, ...nodes.filter(n => n.kind !== "metric" && n.kind !== "logit").map(n => Math.abs(n.effect || 0)));
  const maxW = Math.max(1e-12, ...edges.map(e => Math.abs(e.weight)));

  const svg = sv("svg", {width: width, height: height, id: "graph"}, document.getElementById("canvas"));
  // axes
  const tokens = (DATA.summary && DATA.summary.prompt_tokens) || [];
  for (const p of posVals) {
    const t = sv("text", {x: colX.get(p) + 2, y: height - 20, class: "axis"}, svg);
    t.textContent = p < 0 ? "*" : (p + (tokens[p] !== undefined ? " " + visTok(tokens[p]).slice(0, 12) : ""));
  }
  for (const r of rankVals) {
    const t = sv("text", {x: 6, y: rowY.get(r) + 4, class: "axis"}, svg);
    t.textContent = rowName[r];
  }
  const edgeLayer = sv("g", {}, svg), nodeLayer = sv("g", {}, svg);
  const edgeEls = edges.map(e => {
    const a = byId.get(e.source), b = byId.get(e.target);
    const my = (a._y + b._y) / 2;
    const path = sv("path", {class: "edge", d: `M${a._x},${a._y} C${a._x},${my} ${b._x},${my} ${b._x},${b._y}`,
      stroke: e.weight >= 0 ? "#3060c0" : "#c03030", "stroke-width": (0.5 + 4 * Math.abs(e.weight) / maxW).toFixed(2)}, edgeLayer);
    return {e, path};
  });
  function fillOf(n) {
    if (n.kind === "error") return "#d9d9d9";
    if (n.kind === "embed") return "#f4f1de";
    if (n.kind === "metric" || n.kind === "logit") return "#ffd966";
    const t = Math.min(1, Math.abs(n.effect) / maxEff), s = Math.round(235 - 150 * t);
    return n.effect >= 0 ? `rgb(${s},${s},255)` : `rgb(255,${s},${s})`;
  }
  const tip = document.getElementById("tip");
  const nodeEls = new Map();
  for (const n of nodes) {
    const g = sv("g", {class: "node", "data-id": n.id, "data-kind": n.kind, transform: `translate(${n._x},${n._y})`}, nodeLayer);
    if (n.kind === "error" || n.kind === "embed") sv("rect", {x: -8, y: -8, width: 16, height: 16, fill: fillOf(n), "stroke-dasharray": n.kind === "error" ? "3,2" : ""}, g);
    else sv("circle", {r: n.kind === "metric" || n.kind === "logit" ? 11 : 8, fill: fillOf(n)}, g);
    g.addEventListener("mouseenter", ev => {
      const dash = dashboards[dashKey(n)];
      tip.textContent = title(n) + (n.label ? "\n" + visTok(n.label) : "") + "\neffect " + fmt(n.effect) +
        (dash ? "\ntop tokens: " + visTok(dash.label || "") + "\nfreq " + fmt(dash.activation_frequency) + " (click for dashboard)" : "");
      tip.style.display = "block";
    });
    g.addEventListener("mousemove", ev => { tip.style.left = (ev.clientX + 12) + "px"; tip.style.top = (ev.clientY + 12) + "px"; });
    g.addEventListener("mouseleave", () => { tip.style.display = "none"; });
    g.addEventListener("click", () => select(n.id));
    nodeEls.set(n.id, g);
  }

  // ---- filtering ----
  const nodeThr = document.getElementById("nodeThr"), edgeThr = document.getElementById("edgeThr");
  function applyFilter() {
    const tn = +nodeThr.value * maxEff, te = +edgeThr.value * maxW;
    document.getElementById("nodeThrVal").textContent = fmt(tn);
    document.getElementById("edgeThrVal").textContent = fmt(te);
    const visible = new Set();
    for (const n of nodes) {
      const keep = n.kind === "metric" || n.kind === "logit" || Math.abs(n.effect) >= tn;
      nodeEls.get(n.id).style.display = keep ? "" : "none";
      if (keep) visible.add(n.id);
    }
    let shown = 0;
    for (const {e, path} of edgeEls) {
      const keep = Math.abs(e.weight) >= te && visible.has(e.source) && visible.has(e.target);
      path.style.display = keep ? "" : "none"; if (keep) shown++;
    }
    document.getElementById("counts").textContent = visible.size + " nodes, " + shown + " edges shown";
  }
  nodeThr.addEventListener("input", applyFilter); edgeThr.addEventListener("input", applyFilter);
  applyFilter();

  // ---- details panel ----
  function select(id) {
    const n = byId.get(id); if (!n) return;
    if (selected) nodeEls.get(selected).classList.remove("selected");
    selected = id; nodeEls.get(id).classList.add("selected");
    for (const {e, path} of edgeEls) path.classList.toggle("hi", e.source === id || e.target === id);
    const panel = document.getElementById("panel");
    panel.replaceChildren();
    el("h2", {id: "node-title"}, title(n), panel);
    const kv = el("div", {class: "kv"}, null, panel);
    for (const [k, v] of [["id", n.id], ["kind", n.kind], ["hook", n.hook], ["layer", n.layer], ["position", n.pos === null ? "*" : n.pos],
                          ["token", n.pos !== null && tokens[n.pos] !== undefined ? visTok(tokens[n.pos]) : ""],
                          ["activation", fmt(n.activation)], ["effect", fmt(n.effect)], ["label", n.label]]) {
      el("span", {}, k, kv); el("span", {}, v === null || v === undefined ? "" : v, kv);
    }
    const ins = edges.filter(e => e.target === id).sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, 8);
    const outs = edges.filter(e => e.source === id).sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, 8);
    for (const [name, list, other] of [["Strongest inputs", ins, "source"], ["Strongest outputs", outs, "target"]]) {
      if (!list.length) continue;
      el("h3", {}, name, panel);
      for (const e of list) {
        const r = el("div", {class: e.weight >= 0 ? "pos" : "neg"}, fmt(e.weight) + "  " + title(byId.get(e[other])), panel);
        r.style.cursor = "pointer"; r.addEventListener("click", () => select(e[other]));
      }
    }
    const key = dashKey(n);
    if (key && dashboards[key]) renderDashboard(panel, dashboards[key]);
    else if (key) el("p", {class: "muted"}, "No dashboard was exported for this feature.", panel);
    try { history.replaceState(null, "", "#node=" + encodeURIComponent(id)); } catch (err) { /* file:// in some browsers */ }
  }
  window.saecircuitsSelect = select;
  const m = /^#node=(.+)$/.exec(location.hash);
  if (m) select(decodeURIComponent(m[1]));
  document.body.setAttribute("data-ready", "1");
})();
