"""Graphviz DOT and SVG for a FeatureGraph.

Nodes are ranked by layer (embeddings at the bottom, the metric on top) and ordered by
token position inside a rank; labels show the hook, feature index, position and the
node's short description; fill colour follows the sign of the node's effect (blue
positive, red negative), edge colour the sign of the weight and edge width |weight|;
error nodes are grey dashed boxes. Labels are HTML-escaped Graphviz HTML labels, so
any token text (quotes, newlines, `<script>`) is drawn literally.
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

MAX_LABEL = 28


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


def to_dot(graph: FeatureGraph, title: str | None = None) -> str:
    """DOT source for the graph (readable for ~30–200 nodes)."""
    g = graphviz.Digraph("featuregraph", engine="dot")
    g.attr(rankdir="BT", newrank="true", nodesep="0.15", ranksep="0.55", splines="true",
           fontname="Helvetica", fontsize="11")
    if title:
        g.attr(label=f"<{html.escape(short(title, 120))}>", labelloc="t")
    g.attr("node", fontname="Helvetica", fontsize="9", style="filled", margin="0.04,0.02")
    nodes = dict(graph.graph.nodes(data=True))
    eff_scale = max((abs(d.get("effect", 0.0)) for d in nodes.values()
                     if d["kind"] not in ("metric", "logit")), default=0.0)
    w_scale = max((abs(d["weight"]) for _, _, d in graph.graph.edges(data=True)), default=0.0)
    ranks: dict[float, list[str]] = defaultdict(list)
    for nid, d in nodes.items():
        ranks[_rank_key(d)].append(nid)
    for rank, members in sorted(ranks.items()):
        members.sort(key=lambda n: (-1 if nodes[n].get("pos") is None else nodes[n]["pos"],
                                    str(nodes[n].get("hook")), str(nodes[n].get("feature"))))
        with g.subgraph(name=f"rank_{len(g.body)}") as sub:
            sub.attr(rank="same")
            for nid in members:
                d = nodes[nid]
                lines = [f"<b>{html.escape(short(node_title(nid, d), 40))}</b>"]
                if d.get("label"):
                    lines.append(html.escape(short(d["label"])))
                lines.append(f"eff {d.get('effect', 0.0):+.3g}")
                attrs = {"label": "<" + "<br/>".join(lines) + ">", "tooltip": short(nid, 80),
                         "fillcolor": _fill(d.get("effect", 0.0), eff_scale)}
                if d["kind"] == "error":
                    attrs.update(shape="box", style="filled,dashed", fillcolor="#e6e6e6",
                                 color="#777777")
                elif d["kind"] == "embed":
                    attrs.update(shape="box", style="filled,rounded", fillcolor="#f4f1de")
                elif d["kind"] in ("metric", "logit"):
                    attrs.update(shape="doubleoctagon", fillcolor="#ffe8a3")
                else:
                    attrs.update(shape="ellipse")
                sub.node(_gv_id(nid), **attrs)
            for a, b in zip(members, members[1:]):  # keep position order inside the rank
                sub.edge(_gv_id(a), _gv_id(b), style="invis")
    for u, v, d in graph.graph.edges(data=True):
        w = d["weight"]
        width = 0.4 + 4.0 * (abs(w) / w_scale if w_scale > 0 else 0.0)
        g.edge(_gv_id(u), _gv_id(v), penwidth=f"{width:.2f}", arrowsize="0.5",
               color="#3060c0" if w >= 0 else "#c03030", tooltip=f"{w:+.4g}")
    return g.source


def _gv_id(nid: str) -> str:
    """Graphviz node names are quoted by the graphviz package; only keep them printable."""
    return nid.replace("\n", " ").replace("\\", "/")


def render_svg(dot_source: str) -> str:
    """Render DOT to SVG text with the `dot` binary (ExportError if it is missing or fails)."""
    try:
        out = graphviz.pipe("dot", "svg", dot_source.encode("utf-8"), quiet=True)
    except graphviz.ExecutableNotFound as err:
        raise ExportError("cannot render SVG: the Graphviz 'dot' binary is not on PATH "
                          "(install graphviz, e.g. `apt-get install graphviz` or "
                          "`brew install graphviz`); graph.dot can still be rendered later "
                          "with `dot -Tsvg graph.dot -o graph.svg`") from err
    except graphviz.CalledProcessError as err:
        raise ExportError(f"Graphviz 'dot' failed: {err.stderr!r}") from err
    return out.decode("utf-8")


def write_dot(graph: FeatureGraph, path: str | os.PathLike, title: str | None = None) -> str:
    source = to_dot(graph, title)
    write_text(Path(path), source)
    return source
