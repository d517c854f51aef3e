// saecircuits graph viewer: self-contained, no network access. All text goes through
// textContent / setAttribute, never innerHTML, so token strings cannot inject markup.
// Layout: prompt tokens along x (position-summed `*` nodes in their own column on the
// right), layers and sublayers as rows (embeddings at the bottom, the metric on top).
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("saecircuits-data").textContent);
  const S = DATA.summary || {};
  const GJ = DATA.graphJson || null;
  const dashboards = DATA.dashboards || {};
  const tokens = S.prompt_tokens || (GJ && GJ.metadata && GJ.metadata.prompt_tokens) || [];
  const isOut = n => n.kind === "metric" || n.kind === "logit";
  const num = v => (typeof v === "number" && isFinite(v)) ? v : (v === null || v === undefined || v === "" || isNaN(+v) ? null : +v);
  const nodes = DATA.graph.nodes.map(n => {
    const p = n.pos !== undefined ? n.pos : n.ctx_idx;
    return Object.assign({}, n, {pos: p === "*" ? null : num(p), effect: num(n.effect) || 0,
                                 activation: num(n.activation), layer: num(n.layer)});
  });
  const byId = new Map(nodes.map(n => [n.id, n]));
  const edges = DATA.graph.edges.filter(e => byId.has(e.source) && byId.has(e.target))
    .map(e => ({source: e.source, target: e.target, weight: num(e.weight) || 0}))
    .sort((a, b) => Math.abs(a.weight) - Math.abs(b.weight));  // strongest drawn last
  const pinned = [];  // node ids, in pin order
  const supernodes = (GJ && GJ.qParams && Array.isArray(GJ.qParams.supernodes)) ? GJ.qParams.supernodes.map(s => s.slice()) : [];
  let selected = null;
  let view = {k: 1, x: 0, y: 0};

  function posText(n) { return n.pos === null ? "*" : n.pos; }
  const colKey = p => p === null ? "*" : String(p);
  function title(n) {
    if (n.kind === "feature") return n.hook + " #" + n.feature + " @" + posText(n);
    if (n.kind === "error") return "err " + n.hook + " @" + posText(n);
    if (n.kind === "embed") return "embed @" + posText(n);
    return isOut(n) ? (n.kind === "logit" ? "logit " + visTok(n.label || n.id) : "metric") : String(n.id);
  }
  function shortHook(n) {
    const h = String(n.hook || "");
    const m = /^(\w+)\.(\d+)/.exec(h);
    return m ? (m[1] === "resid" ? "L" + m[2] : m[1] + m[2]) : h;
  }
  function cut(t, k) { t = visTok(t); return t.length > k ? t.slice(0, k - 1) + "\u2026" : t; }
  function signed(x) { return (x >= 0 ? "+" : "\u2212") + fmt(Math.abs(x)).replace(/\.?0+$/, "").replace(/^$/, "0"); }
  function dashKey(n) { return n.kind === "feature" ? n.hook + ":" + n.feature : null; }
  function explanation(n) {
    const d = dashboards[dashKey(n)];
    return n.explanation || (d && d.explanation) || "";
  }
  // the explanation with its simulation score, e.g. "fires on names (score 0.42)"
  function explained(n) {
    const d = dashboards[dashKey(n)], ex = explanation(n);
    const sc = num(n.explanation ? n.explanation_score : d && d.explanation_score);
    return ex && sc !== null ? ex + " (score " + sc.toFixed(2) + ")" : ex;
  }
  // Task batches are left-padded, so node positions may count from the start of the longest
  // prompt: when they reach past the shown prompt, its tokens are aligned to the right end.
  const maxNodePos = Math.max(-1, ...nodes.map(n => n.pos === null ? -1 : n.pos));
  const tokShift = Math.max(0, maxNodePos + 1 - tokens.length);
  function tokenAt(p) { return p !== null && tokens[p - tokShift] !== undefined ? tokens[p - tokShift] : null; }

  // ---- summary bar ----
  const sumEl = document.getElementById("summary");
  const has = v => v !== undefined && v !== null;
  for (const [k, v] of [["task", S.task], ["method", S.method],
                        ["metric", S.metric_clean !== undefined ? fmt(S.metric_clean) : S.metric],
                        ["faithfulness", has(S.faithfulness) ? fmt(S.faithfulness) : null],
                        ["replacement", has(S.replacement_score) ? fmt(S.replacement_score) : null],
                        ["completeness", has(S.completeness_score) ? fmt(S.completeness_score) : null],
                        ["error share", has(S.error_share) ? (100 * S.error_share).toFixed(0) + "%" : null],
                        ["nodes", S.n_nodes], ["edges", S.n_edges]]) {
    if (v === undefined || v === null) continue;
    el("b", {}, k + ": ", sumEl); el("span", {"data-key": k}, String(v) + "   ", sumEl);
  }
  const promptText = S.prompt || (GJ && GJ.metadata && GJ.metadata.prompt) || "";
  if (promptText) {
    const row = el("div", {class: "prompt", "data-key": "prompt"}, null, sumEl);
    el("b", {}, "prompt: ", row); el("span", {}, promptText, row);
  }
  for (const w of (S.warnings || (GJ && GJ.metadata && GJ.metadata.warnings) || [])) {
    el("div", {class: "warning", "data-key": "warning"}, "⚠ " + w, sumEl);
  }

  // ---- legend ----
  const legend = document.getElementById("legend");
  function legendRow(draw, text) {
    const row = el("div", {}, null, legend);
    const s = sv("svg", {width: 18, height: 14}, row);
    draw(s); el("span", {}, text, row);
  }
  legendRow(s => sv("circle", {cx: 9, cy: 7, r: 6, fill: "rgb(70,110,230)", stroke: "#555"}, s), "feature raising the metric (effect > 0)");
  legendRow(s => sv("circle", {cx: 9, cy: 7, r: 6, fill: "rgb(230,70,70)", stroke: "#555"}, s), "feature lowering it (effect < 0)");
  legendRow(s => sv("rect", {x: 3, y: 1, width: 12, height: 12, fill: "#cfcfcf", stroke: "#3060c0", "stroke-width": 2}, s), "SAE error (unexplained; border = sign)");
  legendRow(s => sv("rect", {x: 3, y: 1, width: 12, height: 12, fill: "#efe6c4", stroke: "#555"}, s), "token embedding");
  legendRow(s => sv("polygon", {points: "9,0 16,4 16,10 9,14 2,10 2,4", fill: "#ffd966", stroke: "#555"}, s), "metric / output logit");
  legendRow(s => { sv("line", {x1: 1, y1: 4, x2: 17, y2: 4, stroke: "#3060c0", "stroke-width": 2.5}, s);
                   sv("line", {x1: 1, y1: 11, x2: 17, y2: 11, stroke: "#c03030", "stroke-width": 1}, s); },
            "edge + / \u2212, width = |weight|");
  el("div", {class: "muted"}, "node size = |effect|; x: prompt token (* = summed over positions); y: layer", legend);

  // ---- layout ----
  const SUB = {embed: -1, attn: 0.2, mlp: 0.4, resid: 0.6};
  function rankOf(n) {
    if (n.kind === "embed") return -1;
    if (isOut(n)) return 1e9;
    const m = /^(\w+)\.(\d+)/.exec(String(n.hook || ""));
    const layer = n.layer !== null ? n.layer : (m ? +m[2] : 0);
    const sub = SUB[m ? m[1] : ""];
    return layer + (sub === undefined ? 0.6 : sub);
  }
  function rowLabel(n) { return n.kind === "embed" ? "embeddings" : isOut(n) ? "output" : String(n.hook); }
  const canvas = document.getElementById("canvas");
  const tip = document.getElementById("tip");
  const nodeThr = document.getElementById("nodeThr"), edgeThr = document.getElementById("edgeThr");
  const nLabels = document.getElementById("nLabels");
  const maxEff = Math.max(1e-12, ...nodes.filter(n => !isOut(n)).map(n => Math.abs(n.effect)));
  const maxW = Math.max(1e-12, ...edges.map(e => Math.abs(e.weight)));
  const measure = document.createElement("canvas").getContext("2d");
  function textWidth(t, px) { measure.font = px + "px -apple-system, Segoe UI, Helvetica, Arial, sans-serif"; return measure.measureText(t).width; }

  function visibleSets() {
    const tn = +nodeThr.value * maxEff, te = +edgeThr.value * maxW;
    document.getElementById("nodeThrVal").textContent = fmt(tn);
    document.getElementById("edgeThrVal").textContent = fmt(te);
    const vn = new Set(nodes.filter(n => isOut(n) || Math.abs(n.effect) >= tn || pinned.includes(n.id)).map(n => n.id));
    const ve = edges.filter(e => Math.abs(e.weight) >= te && vn.has(e.source) && vn.has(e.target));
    return {vn, ve};
  }

  function layout(W, H, vn) {
    const shown = nodes.filter(n => vn.has(n.id));
    const L = 84, R = 14, T = 14, B = 40;
    const floating = n => isOut(n) && n.pos === null;
    const placed = shown.filter(n => !floating(n));
    const positional = placed.some(n => n.pos !== null);
    const maxPos = Math.max(-1, ...placed.filter(n => n.pos !== null).map(n => n.pos));
    const cols = [];
    if (positional) for (let p = 0; p <= Math.max(maxPos, Math.min(tokens.length + tokShift, 64) - 1); p++) cols.push(p);
    if (placed.some(n => n.pos === null) || !cols.length) cols.push(null);
    const ranks = [...new Set(shown.map(rankOf))].sort((a, b) => a - b);
    const cells = new Map();
    for (const n of placed) {
      const key = rankOf(n) + "|" + colKey(n.pos);
      if (!cells.has(key)) cells.set(key, []);
      cells.get(key).push(n);
    }
    const maxCell = new Map(cols.map(c => [colKey(c), 0]));
    for (const [key, list] of cells) {
      list.sort((a, b) => Math.abs(b.effect) - Math.abs(a.effect));
      const c = key.split("|")[1];
      maxCell.set(c, Math.max(maxCell.get(c) || 0, list.length));
    }
    // empty token columns get just the width of their token; the rest share the space
    // by how many nodes their busiest cell holds
    const tokW = c => Math.min(70, Math.max(14, textWidth(visTok(tokenAt(c) || String(c)), 11) + 8));
    const weight = c => { const m = maxCell.get(colKey(c)) || 0; return m === 0 ? 0 : Math.min(8, 1 + 0.45 * (m - 1)); };
    const avail = Math.max(100, W - L - R);
    const fixedW = cols.reduce((s, c) => s + (weight(c) === 0 ? tokW(c) : 0), 0);
    const totalW = cols.reduce((s, c) => s + weight(c), 0) || 1;
    const flexW = Math.max(avail * 0.4, avail - fixedW), shrink = Math.min(1, (avail - flexW) / Math.max(1, fixedW));
    const colGeom = new Map();
    let x = L;
    for (const c of cols) {
      const w = weight(c) === 0 ? tokW(c) * shrink : flexW * weight(c) / totalW;
      colGeom.set(colKey(c), {x0: x, w}); x += w;
    }
    const rh = Math.max(18, (H - T - B) / Math.max(1, ranks.length));
    const rowY = new Map(ranks.map((r, i) => [r, T + (ranks.length - 1 - i) * rh + rh / 2]));
    const rMax = Math.max(4, Math.min(12, rh * 0.28));
    for (const [key, list] of cells) {
      const [r, c] = key.split("|");
      const g = colGeom.get(c), n = list.length, inner = Math.max(6, g.w - 6);
      const sp = Math.max(7, Math.min(90, inner / n));  // wide cells leave room for labels
      const perLine = Math.max(1, Math.floor(inner / sp + 1e-6)), lines = Math.ceil(n / perLine);
      const gap = Math.min(2.2 * rMax, (rh * 0.8) / lines);
      list.forEach((nd, i) => {
        const line = Math.floor(i / perLine), inLine = Math.min(perLine, n - line * perLine);
        nd._x = g.x0 + g.w / 2 + (i % perLine - (inLine - 1) / 2) * sp;
        nd._y = rowY.get(+r) + (line - (lines - 1) / 2) * gap;
      });
    }
    const floats = shown.filter(floating);
    floats.forEach((n, i) => { n._x = L + avail / 2 + (i - (floats.length - 1) / 2) * 4 * rMax; n._y = rowY.get(rankOf(n)); });
    for (const n of shown) n._r = isOut(n) ? rMax : 2.5 + (rMax - 2.5) * Math.sqrt(Math.min(1, Math.abs(n.effect) / maxEff));
    return {cols, colGeom, ranks, rowY, rh, L, T, B, W, H, shown};
  }

  function fillOf(n) {
    if (n.kind === "error") return "#cfcfcf";
    if (n.kind === "embed") return "#efe6c4";
    if (isOut(n)) return "#ffd966";
    const t = Math.sqrt(Math.min(1, Math.abs(n.effect) / maxEff));
    const lo = [225, 230, 250], hi = n.effect >= 0 ? [45, 90, 225] : [225, 45, 45];
    const base = n.effect >= 0 ? lo : [250, 228, 228];
    const c = base.map((b, i) => Math.round(b + (hi[i] - b) * t));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  // label placement: candidates around the node, no overlap with other labels, few nodes covered
  function placeLabels(lay, order) {
    const boxes = [], placed = [];
    const inside = b => b.x >= 2 && b.y >= 2 && b.x + b.w <= lay.W - 2 && b.y + b.h <= lay.H - lay.B + 4;
    const hit = (a, b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
    const circles = lay.shown.map(n => ({x: n._x - n._r, y: n._y - n._r, w: 2 * n._r, h: 2 * n._r, id: n.id}));
    for (const n of order) {
      const main = isOut(n) ? (n.kind === "logit" ? "logit " + cut(n.label || n.id, 18) : "metric " + cut(n.label || "", 18))
        : cut(explanation(n) || n.label || (n.kind === "error" ? "SAE error" : n.kind === "embed" ? "embedding" : title(n)), 24);
      const sub = (n.kind === "feature" ? shortHook(n) + " #" + n.feature + " " : n.kind === "error" ? shortHook(n) + " " : "") + signed(n.effect);
      const w = Math.max(textWidth(main, 10), textWidth(sub, 8.5)) + 4, h = 22;
      const r = n._r + 2, cands = [];
      for (const d of [0, 14, 30, 48, 70]) {
        cands.push([n._x + r + d, n._y - h / 2], [n._x - r - d - w, n._y - h / 2],
                   [n._x - w / 2, n._y - r - h - d], [n._x - w / 2, n._y + r + d],
                   [n._x + r + d, n._y - r - h - d / 2], [n._x - r - d - w, n._y - r - h - d / 2],
                   [n._x + r + d, n._y + r + d / 2], [n._x - r - d - w, n._y + r + d / 2]);
      }
      let best = null, bestScore = Infinity;
      cands.forEach(([bx, by], i) => {
        const b = {x: bx, y: by, w, h};
        let score = i * 0.5 + (inside(b) ? 0 : 1e6);
        for (const o of boxes) if (hit(b, o)) score += 1e5;
        for (const c of circles) if (c.id !== n.id && hit(b, c)) score += 8;
        if (score < bestScore) { bestScore = score; best = b; }
      });
      boxes.push(best);
      placed.push({n, box: best, main, sub});
    }
    return placed;
  }

  let svg = null, nodeEls = new Map(), edgeEls = [], viewport = null;
  function render() {
    const {vn, ve} = visibleSets();
    document.getElementById("counts").textContent = vn.size + " nodes, " + ve.length + " edges shown";
    if (!svg) renderPins();  // the bar and panel take their final size before measuring
    const W = Math.max(300, canvas.clientWidth), H = Math.max(200, canvas.clientHeight);
    lastSize = canvas.clientWidth + "x" + canvas.clientHeight;
    const lay = layout(W, H, vn);
    if (svg) svg.remove();
    svg = sv("svg", {id: "graph", width: W, height: H, viewBox: `0 0 ${W} ${H}`}, canvas);
    viewport = sv("g", {id: "viewport"}, svg);
    applyView();
    // row bands and names
    lay.ranks.forEach((r, i) => {
      const y = lay.rowY.get(r);
      if (i % 2 === 0) sv("rect", {class: "band", x: 0, y: y - lay.rh / 2, width: W * 4, height: lay.rh}, viewport);
      const names = [...new Set(lay.shown.filter(n => rankOf(n) === r).map(rowLabel))];
      const t = sv("text", {class: "rowname", x: 4, y: y + 3}, viewport); t.textContent = cut(names.join(","), 14);
    });
    // token axis
    const yAxis = H - lay.B + 14;
    for (const c of lay.cols) {
      const g = lay.colGeom.get(colKey(c));
      sv("line", {class: "grid", x1: g.x0, y1: lay.T - 6, x2: g.x0, y2: H - lay.B}, viewport);
      const t1 = sv("text", {class: "tok", x: g.x0 + g.w / 2, y: yAxis, "text-anchor": "middle"}, viewport);
      const tok = tokenAt(c);
      const maxChars = Math.max(2, Math.floor(g.w / 6.6));
      t1.textContent = c === null ? "*" : (tok !== null ? cut(tok, maxChars) : "");
      if (c === null) sv("line", {x1: g.x0, y1: lay.T - 6, x2: g.x0, y2: H - lay.B, stroke: "#999", "stroke-dasharray": "4,3"}, viewport);
      const t2 = sv("text", {class: "axis", x: g.x0 + g.w / 2, y: yAxis + 13, "text-anchor": "middle"}, viewport);
      t2.textContent = c === null ? "all positions" : String(c);
      if (tok !== null) { const tt = sv("title", {}, t1); tt.textContent = JSON.stringify(tok); }
    }
    // edges
    const edgeLayer = sv("g", {}, viewport);
    edgeEls = ve.map(e => {
      const a = byId.get(e.source), b = byId.get(e.target), t = Math.abs(e.weight) / maxW, my = (a._y + b._y) / 2;
      const path = sv("path", {class: "edge", d: `M${a._x.toFixed(1)},${a._y.toFixed(1)} C${a._x.toFixed(1)},${my.toFixed(1)} ${b._x.toFixed(1)},${my.toFixed(1)} ${b._x.toFixed(1)},${b._y.toFixed(1)}`,
        stroke: e.weight >= 0 ? "#3060c0" : "#c03030", "stroke-width": (0.4 + 4.5 * t).toFixed(2),
        "stroke-opacity": (0.08 + 0.72 * Math.sqrt(t)).toFixed(3), "data-source": e.source, "data-target": e.target}, edgeLayer);
      return {e, path};
    });
    // nodes
    const nodeLayer = sv("g", {}, viewport);
    nodeEls = new Map();
    for (const n of lay.shown) {
      const g = sv("g", {class: "node", "data-id": n.id, "data-kind": n.kind, transform: `translate(${n._x.toFixed(1)},${n._y.toFixed(1)})`}, nodeLayer);
      const r = n._r;
      if (n.kind === "error" || n.kind === "embed") {
        sv("rect", {class: "shape", x: -r, y: -r, width: 2 * r, height: 2 * r, fill: fillOf(n),
                    stroke: n.kind === "error" ? (n.effect >= 0 ? "#3060c0" : "#c03030") : "#555",
                    style: n.kind === "error" ? "stroke-width:2" : ""}, g);
      } else if (isOut(n)) {
        const pts = [[0, -r], [r, -r / 2], [r, r / 2], [0, r], [-r, r / 2], [-r, -r / 2]].map(p => p.join(",")).join(" ");
        sv("polygon", {class: "shape", points: pts, fill: fillOf(n)}, g);
      } else sv("circle", {class: "shape", r: r.toFixed(2), fill: fillOf(n)}, g);
      g.addEventListener("mouseenter", () => showTip(n));
      g.addEventListener("mousemove", ev => { tip.style.left = (ev.clientX + 12) + "px"; tip.style.top = (ev.clientY + 12) + "px"; });
      g.addEventListener("mouseleave", () => { tip.style.display = "none"; });
      g.addEventListener("click", ev => { ev.stopPropagation(); clickNode(n.id); });
      nodeEls.set(n.id, g);
    }
    // labels: outputs always, then the top-|effect| nodes, then pinned ones
    const k = Math.max(0, Math.floor(+nLabels.value || 0));
    const ranked = lay.shown.filter(n => !isOut(n)).sort((a, b) => Math.abs(b.effect) - Math.abs(a.effect));
    const order = [...lay.shown.filter(isOut), ...ranked.slice(0, k)];
    for (const id of pinned) { const n = byId.get(id); if (vn.has(id) && !order.includes(n)) order.push(n); }
    const labelLayer = sv("g", {}, viewport);
    for (const {n, box, main, sub} of placeLabels(lay, order)) {
      const g = sv("g", {class: "lab", "data-id": n.id}, labelLayer);
      const cx = Math.max(box.x, Math.min(n._x, box.x + box.w)), cy = Math.max(box.y, Math.min(n._y, box.y + box.h));
      if (Math.hypot(cx - n._x, cy - n._y) > n._r + 6) sv("line", {class: "leader", x1: n._x, y1: n._y, x2: cx, y2: cy}, g);
      const t = sv("text", {class: "nlabel", x: box.x + 2, y: box.y + 10, "data-id": n.id}, g);
      const a = sv("tspan", {x: box.x + 2}, t); a.textContent = main;
      const b = sv("tspan", {class: "sub", x: box.x + 2, dy: 10.5}, t); b.textContent = sub;
    }
    svg.addEventListener("click", () => { if (!dragged) { selected = null; refreshState(); showDetails(null); } });
    wirePanZoom();
    refreshState();
  }

  function showTip(n) {
    const dash = dashboards[dashKey(n)];
    const tok = n.token || tokenAt(n.pos);
    const lines = [title(n)];
    if (n.label) lines.push(visTok(n.label));
    const ex = explained(n); if (ex) lines.push("explanation: " + ex);
    lines.push("effect " + fmt(n.effect) + (n.activation !== null ? "   activation " + fmt(n.activation) : ""));
    if (tok !== null) lines.push("token " + JSON.stringify(tok));
    if (dash) lines.push("top tokens: " + visTok(dash.label || "") + "\nfreq " + fmt(dash.activation_frequency) + " (click for dashboard)");
    tip.textContent = lines.join("\n");
    tip.style.display = "block";
  }

  // ---- pan and zoom (a transform on the viewport group; 'fit' resets it) ----
  let dragged = false;
  function applyView() { if (viewport) viewport.setAttribute("transform", `translate(${view.x},${view.y}) scale(${view.k})`); }
  function wirePanZoom() {
    svg.addEventListener("wheel", ev => {
      ev.preventDefault();
      const r = svg.getBoundingClientRect(), mx = ev.clientX - r.left, my = ev.clientY - r.top;
      const f = Math.exp(-ev.deltaY * 0.0015), k = Math.max(0.5, Math.min(12, view.k * f));
      view = {k, x: mx - (mx - view.x) * k / view.k, y: my - (my - view.y) * k / view.k};
      applyView();
    }, {passive: false});
    svg.addEventListener("mousedown", ev => {
      if (ev.button !== 0) return;
      const sx = ev.clientX, sy = ev.clientY, v0 = Object.assign({}, view);
      dragged = false;
      const move = e => {
        if (Math.abs(e.clientX - sx) + Math.abs(e.clientY - sy) > 3) { dragged = true; svg.classList.add("panning"); }
        if (dragged) { view = {k: v0.k, x: v0.x + e.clientX - sx, y: v0.y + e.clientY - sy}; applyView(); }
      };
      const up = () => { window.removeEventListener("mousemove", move); window.removeEventListener("mouseup", up); svg.classList.remove("panning"); setTimeout(() => { dragged = false; }, 0); };
      window.addEventListener("mousemove", move); window.addEventListener("mouseup", up);
    });
  }
  function fit() { view = {k: 1, x: 0, y: 0}; render(); }

  // ---- selection, paths, pins ----
  function reach(start, forward) {
    const seen = new Set(), stack = [start];
    while (stack.length) {
      const id = stack.pop();
      for (const {e} of edgeEls) {
        const [from, to] = forward ? [e.source, e.target] : [e.target, e.source];
        if (from === id && !seen.has(to)) { seen.add(to); stack.push(to); }
      }
    }
    return seen;
  }
  function refreshState() {
    svg.classList.toggle("focus", selected !== null && nodeEls.has(selected));
    const up = selected ? reach(selected, false) : new Set(), down = selected ? reach(selected, true) : new Set();
    const onPath = id => id === selected || up.has(id) || down.has(id);
    for (const [id, g] of nodeEls) {
      g.classList.toggle("selected", id === selected);
      g.classList.toggle("pinned", pinned.includes(id));
      g.classList.toggle("path", selected !== null && onPath(id));
    }
    for (const lab of svg.querySelectorAll("g.lab")) lab.classList.toggle("path", selected !== null && onPath(lab.dataset.id));
    for (const {e, path} of edgeEls) {
      const hi = selected !== null && ((e.target === selected || up.has(e.target)) && up.has(e.source) ||
                                       (e.source === selected || down.has(e.source)) && down.has(e.target));
      path.classList.toggle("path", hi);
    }
    renderPins();
  }
  function clickNode(id) {
    if (dragged) return;
    if (selected === id && pinned.includes(id)) pinned.splice(pinned.indexOf(id), 1);
    else if (!pinned.includes(id)) pinned.push(id);
    selected = id;
    refreshState();
    showDetails(id);
  }
  function npId(id) { const n = byId.get(id); return n && n.np_id ? n.np_id : id; }
  function exportJson() {
    const out = GJ ? JSON.parse(JSON.stringify(GJ)) : {metadata: {prompt_tokens: tokens}, nodes: [], links: []};
    out.qParams = Object.assign({}, out.qParams || {}, {
      pinnedIds: pinned.map(npId), supernodes: supernodes.map(s => s.slice()),
      clickedId: selected ? npId(selected) : "", linkType: (out.qParams && out.qParams.linkType) || "both"});
    return out;
  }
  window.saecircuitsGraphJson = exportJson;
  function download() {
    const blob = new Blob([JSON.stringify(exportJson(), null, 1)], {type: "application/json"});
    const a = el("a", {href: URL.createObjectURL(blob), download: "graph.json"}, null, document.body);
    a.click(); setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }
  function renderPins() {
    const box = document.getElementById("pins");
    box.replaceChildren();
    el("b", {}, "Pinned subgraph (" + pinned.length + ")", box);
    for (const id of pinned) {
      const n = byId.get(id);
      const row = el("div", {class: "pin", "data-id": id}, null, box);
      el("span", {}, title(n), row); el("span", {class: "muted"}, cut(explanation(n) || n.label || "", 22), row);
      const x = el("span", {class: "x", title: "unpin"}, "\u00d7", row);
      row.addEventListener("click", () => { selected = id; refreshState(); showDetails(id); });
      x.addEventListener("click", ev => { ev.stopPropagation(); pinned.splice(pinned.indexOf(id), 1); if (selected === id) selected = null; refreshState(); });
    }
    for (const s of supernodes) el("div", {class: "muted"}, "supernode " + s[0] + ": " + (s.length - 1) + " nodes", box);
    const ctl = el("div", {}, null, box);
    const name = el("input", {id: "superName", placeholder: "supernode name"}, null, ctl);
    const group = el("button", {id: "group"}, "group pinned", ctl);
    group.addEventListener("click", () => {
      if (!pinned.length) return;
      supernodes.push([name.value || "supernode " + (supernodes.length + 1), ...pinned.map(npId)]);
      refreshState();
    });
    const dl = el("button", {id: "download", title: "graph.json with qParams.pinnedIds and supernodes set (Neuronpedia / circuit-tracer)"}, "download graph.json", ctl);
    dl.addEventListener("click", download);
  }

  function showDetails(id) {
    const panel = document.getElementById("details");
    panel.replaceChildren();
    if (id === null) { el("p", {class: "muted"}, "Click a node to pin it and see its paths and dashboard.", panel); return; }
    const n = byId.get(id);
    el("h2", {id: "node-title"}, title(n), panel);
    const ex = explained(n);
    if (ex) el("div", {class: "explanation", id: "node-explanation"}, ex, panel);
    const kv = el("div", {class: "kv"}, null, panel);
    const tok = tokenAt(n.pos);
    for (const [k, v] of [["id", n.id], ["kind", n.kind], ["hook", n.hook], ["layer", n.layer], ["position", posText(n)],
                          ["token", tok !== null ? visTok(tok) : ""], ["activation", fmt(n.activation)],
                          ["effect", fmt(n.effect)], ["label", n.label]]) {
      el("span", {}, k, kv); el("span", {}, v === null || v === undefined ? "" : v, kv);
    }
    const ins = edges.filter(e => e.target === id).sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, 8);
    const outs = edges.filter(e => e.source === id).sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, 8);
    for (const [name, list, other] of [["Strongest inputs", ins, "source"], ["Strongest outputs", outs, "target"]]) {
      if (!list.length) continue;
      el("h3", {}, name, panel);
      for (const e of list) {
        const o = byId.get(e[other]);
        const r = el("div", {class: e.weight >= 0 ? "pos" : "neg"}, fmt(e.weight) + "  " + title(o) + (explanation(o) || o.label ? "  " + cut(explanation(o) || o.label, 30) : ""), panel);
        r.style.cursor = "pointer"; r.addEventListener("click", () => { selected = e[other]; refreshState(); showDetails(e[other]); });
      }
    }
    const key = dashKey(n);
    if (key && dashboards[key]) renderDashboard(panel, dashboards[key]);
    else if (key) el("p", {class: "muted"}, "No dashboard was exported for this feature.", panel);
    try { history.replaceState(null, "", "#node=" + encodeURIComponent(id)); } catch (err) { /* file:// in some browsers */ }
  }
  window.saecircuitsSelect = id => { selected = id; refreshState(); showDetails(id); };

  nodeThr.addEventListener("input", render); edgeThr.addEventListener("input", render);
  nLabels.addEventListener("input", render);
  document.getElementById("fit").addEventListener("click", fit);
  let lastSize = "";
  const onResize = () => { if (canvas.clientWidth + "x" + canvas.clientHeight !== lastSize) render(); };
  if (window.ResizeObserver) new ResizeObserver(onResize).observe(canvas);
  window.addEventListener("resize", onResize);
  render();
  const m = /^#node=(.+)$/.exec(location.hash);
  if (m && byId.has(decodeURIComponent(m[1]))) window.saecircuitsSelect(decodeURIComponent(m[1]));
  // ready once the layout has settled (a late change of the canvas size re-renders first)
  requestAnimationFrame(() => requestAnimationFrame(() => {
    if (canvas.clientWidth + "x" + canvas.clientHeight !== lastSize) render();
    document.body.setAttribute("data-ready", "1");
  }));
})();
