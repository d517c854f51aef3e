"""Graphviz DOT and SVG for a FeatureGraph.

Nodes are ranked by layer (embeddings at the bottom, the metric on top) and ordered by
token position inside a rank; labels show the hook, feature index, position and the
node's short description (its auto-interp `explanation` when it has one, else its label);
fill colour follows the sign of the node's effect (blue positive, red negative), edge
colour the sign of the weight and edge width |weight|; features are rounded boxes, error
nodes grey dashed boxes. Labels are HTML-escaped Graphviz HTML labels, so any token or
explanation text (quotes, newlines, `<script>`) is drawn literally.

To be readable at a glance the picture keeps only the `max_nodes` largest-|effect| nodes
(plus the metric / logit nodes) and the strongest edges between them, carries a legend in
its title, and is scaled down by Graphviz to at most `MAX_SIZE_IN` inches (<= 1600 pt)
wide; the full graph stays in graph.json, the CSVs and the HTML viewer.
"""
from __future__ import annotations

import html
import os
from collections import defaultdict
from pathlib import Path

import graphviz

from ..graph import FeatureGraph
from ..errors import ExportError
from ..fileio import write_text

MAX_LABEL = 26
TOP_NODES = 40  # default number of non-output nodes drawn
ROW_NODES = 8  # at most this many nodes side by side in one row of the picture
SPLINE_NODES = 80
CELL_W, ROW_H = 2.45, 0.95  # grid spacing in inches (a node is at most ~2.2 in wide)
MAX_SIZE_IN = 22.0  # Graphviz `size`: 22 in = 1584 pt, the bound on the picture's width
LEGEND = (("#6f8fef", "box", "feature raising the metric"),
          ("#ef7f7f", "box", "feature lowering it"),
          ("#e6e6e6", "box", "SAE error (unexplained part)"),
          ("#f4f1de", "box", "token embedding"),
          ("#ffe8a3", "octagon", "metric / logit"))


def short(text: str, limit: int = MAX_LABEL) -> str:
    """One-line, length-limited version of `text` (newlines and tabs made visible)."""
    text = str(text).replace("\r", "\\r").replace("\n", "⏎").replace("\t", "⇥")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def node_title(nid: str, d: dict) -> str:
    """First label line: what the node is, e.g. `resid.12 #1234 @5`, `err resid.12 @5`."""
    pos = "*" if d.get("pos") is None else d["pos"]
    kind = d["kind"]
    if kind == "feature":
        return f"{d.get('hook')} #{d.get('feature')} @{pos}"
    if kind == "error":
        return f"err {d.get('hook')} @{pos}"
    if kind == "embed":
        return f"embed @{pos}"
    return "metric" if kind == "metric" else nid


def _rank_key(d: dict) -> float:
    layer = d.get("layer")
    if d["kind"] == "embed":
        return -1.0
    if d["kind"] in ("metric", "logit"):
        return float("inf")
    sub = {"attn": 0.2, "mlp": 0.4}.get(str(d.get("hook") or "").split(".")[0], 0.6)
    return (float(layer) if layer is not None else 0.0) + sub


def _fill(effect: float, scale: float) -> str:
    """Light blue (positive) / light red (negative), stronger for larger |effect|."""
    t = min(1.0, abs(effect) / scale) if scale > 0 else 0.0
    shade = int(235 - 120 * t)
    return f"#{shade:02x}{shade:02x}ff" if effect >= 0 else f"#ff{shade:02x}{shade:02x}"


def top_nodes(graph: FeatureGraph, max_nodes: int | None = TOP_NODES) -> list[str]:
    """The metric / logit nodes plus the `max_nodes` others with the largest |effect|."""
    data = dict(graph.graph.nodes(data=True))
    outs = [n for n, d in data.items() if d["kind"] in ("metric", "logit")]
    rest = sorted((n for n, d in data.items() if d["kind"] not in ("metric", "logit")),
                  key=lambda n: -abs(data[n].get("effect") or 0.0))
    return outs + (rest if max_nodes is None else rest[:max(0, int(max_nodes))])


def _token(graph: FeatureGraph, pos) -> str | None:
    """The prompt token at node position `pos`; task batches are left-padded, so when node
    positions reach past the prompt, its tokens are aligned to the last position."""
    tokens = graph.meta.get("prompt_tokens") or []
    last = max((d["pos"] for _, d in graph.graph.nodes(data=True)
                if isinstance(d.get("pos"), int)), default=-1)
    i = pos - max(0, last + 1 - len(tokens)) if isinstance(pos, int) else -1
    return str(tokens[i]) if 0 <= i < len(tokens) else None


def _legend(title: str | None) -> str:
    """An HTML-label table: the title, then one swatch per node kind and the edge colours."""
    cells = "".join(f'<td bgcolor="{c}" border="1"> </td><td align="left">{html.escape(t)}</td>'
                    for c, _, t in LEGEND)
    edges = ('<td><font color="#3060c0"><b>&#8594;</b></font></td><td align="left">positive edge</td>'
             '<td><font color="#c03030"><b>&#8594;</b></font></td>'
             '<td align="left">negative edge (width = |weight|; node colour strength = |effect|)</td>')
    head = f'<tr><td><b>{html.escape(short(title, 140))}</b></td></tr>' if title else ""
    row = '<tr><td><table border="0" cellspacing="3" cellpadding="1"><tr>{}</tr></table></td></tr>'
    return (f'<<table border="0" cellspacing="0" cellpadding="1">{head}{row.format(cells)}'
            f'{row.format(edges)}</table>>')


def to_dot(graph: FeatureGraph, title: str | None = None,
           max_nodes: int | None = TOP_NODES) -> str:
    """DOT source for the `max_nodes` largest-|effect| nodes (None: all) and the strongest
    edges among them (at most 3 per node); a legend under the title; width <= 1584 pt."""
    g = graphviz.Digraph("featuregraph", engine="dot")
    # `layout=neato` with pinned positions: a fixed grid (see below) that `dot -Tsvg
    # graph.dot` reproduces; rank/rankdir keep the file meaningful for a plain dot layout
    every = dict(graph.graph.nodes(data=True))
    keep = top_nodes(graph, max_nodes)
    g.attr(layout="neato", rankdir="BT", newrank="true", nodesep="0.15", ranksep="0.45",
           # edges routed around nodes; straight lines for big pictures (routing is slow)
           splines="true" if len(keep) <= SPLINE_NODES else "line", overlap="true",
           fontname="Helvetica", fontsize="11", size=f"{MAX_SIZE_IN:g},{MAX_SIZE_IN:g}")
    n_drawn = sum(1 for n in keep if every[n]["kind"] not in ("metric", "logit"))
    n_total = sum(1 for d in every.values() if d["kind"] not in ("metric", "logit"))
    if n_drawn < n_total:
        title = (f"{title}  |  " if title else "") + \
            f"top {n_drawn} of {n_total} nodes by |effect| (all in index.html / graph.json)"
    g.attr(label=_legend(title), labelloc="t")
    g.attr("node", fontname="Helvetica", fontsize="9", style="filled", margin="0.04,0.02")
    nodes = {n: every[n] for n in keep}
    kept = set(keep)
    all_edges = [(u, v, d["weight"]) for u, v, d in graph.graph.edges(data=True)
                 if u in kept and v in kept]
    all_edges.sort(key=lambda e: -abs(e[2]))
    edges = all_edges if max_nodes is None else all_edges[:3 * max(1, len(keep))]
    eff_scale = max((abs(d.get("effect") or 0.0) for d in nodes.values()
                     if d["kind"] not in ("metric", "logit")), default=0.0)
    w_scale = max((abs(w) for _, _, w in edges), default=0.0)
    ranks: dict[float, list[str]] = defaultdict(list)
    for nid, d in nodes.items():
        ranks[_rank_key(d)].append(nid)
    rows: list[list[str]] = []
    for rank, members in sorted(ranks.items()):
        members.sort(key=lambda n: (-1 if nodes[n].get("pos") is None else nodes[n]["pos"],
                                    str(nodes[n].get("hook")), str(nodes[n].get("feature"))))
        # a wide layer is folded into stacked rows of at most ROW_NODES (invisible edges
        # stack all rows in layer order), so the picture stays narrow enough to read unscaled
        chunk = -(-len(members) // -(-len(members) // ROW_NODES))
        rows += [members[i:i + chunk] for i in range(0, len(members), chunk)]
    pos = {}  # fixed grid: rows bottom to top, token order left to right, rows centred
    for r, members in enumerate(rows):
        for i, nid in enumerate(members):
            pos[nid] = f"{(i - (len(members) - 1) / 2) * CELL_W:.2f},{r * ROW_H:.2f}!"
    for members in rows:
        with g.subgraph(name=f"rank_{len(g.body)}") as sub:
            sub.attr(rank="same")
            for nid in members:
                d = nodes[nid]
                effect = d.get("effect") or 0.0
                lines = []
                head = d.get("explanation") or d.get("label")  # auto-interp text first
                if head:
                    lines.append(f"<b>{html.escape(short(head))}</b>")
                where = node_title(nid, d)
                tok = _token(graph, d.get("pos"))
                if tok is not None:
                    where += f" {short(repr(tok), 14)}"
                lines.append(html.escape(short(where, 44)) if head
                             else f"<b>{html.escape(short(where, 44))}</b>")
                lines.append(f"eff {effect:+.3g}")
                attrs = {"label": "<" + "<br/>".join(lines) + ">", "tooltip": short(nid, 80),
                         "pos": pos[nid],
                         "fillcolor": _fill(effect, eff_scale)}
                if d["kind"] == "error":
                    attrs.update(shape="box", style="filled,dashed", fillcolor="#e6e6e6",
                                 color="#3060c0" if effect >= 0 else "#c03030")
                elif d["kind"] == "embed":
                    attrs.update(shape="box", style="filled", fillcolor="#f4f1de")
                elif d["kind"] in ("metric", "logit"):
                    attrs.update(shape="doubleoctagon", fillcolor="#ffe8a3")
                else:  # rounded boxes: narrower than ellipses around the same label
                    attrs.update(shape="box", style="filled,rounded")
                sub.node(_gv_id(nid), **attrs)
            for a, b in zip(members, members[1:]):  # keep position order inside the rank
                sub.edge(_gv_id(a), _gv_id(b), style="invis")
    for u, v, w in edges:
        width = 0.4 + 4.0 * (abs(w) / w_scale if w_scale > 0 else 0.0)
        g.edge(_gv_id(u), _gv_id(v), penwidth=f"{width:.2f}", arrowsize="0.5",
               color="#3060c0" if w >= 0 else "#c03030", tooltip=f"{w:+.4g}")
    return g.source


def _gv_id(nid: str) -> str:
    """Graphviz node names are quoted by the graphviz package; only keep them printable."""
    return nid.replace("\n", " ").replace("\\", "/")


def render_svg(dot_source: str) -> str:
    """Render DOT to SVG text with the `dot` binary (ExportError if it is missing or fails)."""
    return render(dot_source, "svg").decode("utf-8")


def render(dot_source: str, fmt: str = "svg") -> bytes:
    """Render DOT with the `dot` binary to `fmt` ("svg", "png"); ExportError if it fails."""
    try:
        out = graphviz.pipe("dot", fmt, dot_source.encode("utf-8"), quiet=True)
    except graphviz.ExecutableNotFound as err:
        raise ExportError("cannot render SVG: the Graphviz 'dot' binary is not on PATH "
                          "(install graphviz, e.g. `apt-get install graphviz` or "
                          "`brew install graphviz`); graph.dot can still be rendered later "
                          "with `dot -Tsvg graph.dot -o graph.svg`") from err
    except graphviz.CalledProcessError as err:
        raise ExportError(f"Graphviz 'dot' failed: {err.stderr!r}") from err
    return out


def write_dot(graph: FeatureGraph, path: str | os.PathLike, title: str | None = None,
              max_nodes: int | None = TOP_NODES) -> str:
    source = to_dot(graph, title, max_nodes)
    write_text(Path(path), source)
    return source
