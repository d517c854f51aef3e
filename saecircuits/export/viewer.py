"""The self-contained HTML viewer (`index.html`): graph, summary and dashboards inlined.

The page has no network access (a Content-Security-Policy forbids it); data is embedded
as JSON inside a `<script type="application/json">` block with `<`, `>`, `&` and the
JavaScript line separators escaped, and the page script inserts all text with
`textContent`, so token strings cannot inject markup.
"""
from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from ..attribution.graph import FeatureGraph
from ..fileio import write_text
from . import neuronpedia

_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def script_json(obj: Any) -> str:
    """JSON that is safe to place inside an HTML `<script>` element."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    return "".join(_ESCAPES.get(ch, ch) for ch in text)


def asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


NODE_KEYS = ("kind", "hook", "layer", "pos", "feature", "activation", "effect", "label")
EXTRA_KEYS = ("explanation", "explanation_score", "ctx_idx", "prob", "token")  # passed on when a node has them


def viewer_data(graph: FeatureGraph, summary: dict[str, Any],
                dashboards: dict[str, Any] | None = None,
                graph_json: dict[str, Any] | None = None) -> dict[str, Any]:
    """The object the page reads: graph nodes/edges, summary, dashboards by `hook:index`,
    and `graphJson` (the Neuronpedia graph.json the page's "download graph.json" button
    re-emits with `qParams.pinnedIds` / `supernodes` set; each node carries its `np_id`)."""
    if graph_json is None:
        graph_json = neuronpedia.graph_json(graph)
    np_ids = {n["saecircuits_id"]: n["node_id"] for n in graph_json.get("nodes", [])
              if isinstance(n, dict) and n.get("saecircuits_id") is not None and "node_id" in n}
    nodes = []
    for n, d in graph.graph.nodes(data=True):
        row = {"id": n, **{k: d.get(k) for k in NODE_KEYS},
               **{k: d[k] for k in EXTRA_KEYS if d.get(k) is not None}}
        if n in np_ids:
            row["np_id"] = np_ids[n]
        nodes.append(row)
    edges = [{"source": u, "target": v, "weight": d["weight"]}
             for u, v, d in graph.graph.edges(data=True)]
    return {"graph": {"nodes": nodes, "edges": edges}, "summary": summary,
            "dashboards": dashboards or {}, "graphJson": graph_json}


def render_html(data: dict[str, Any]) -> str:
    """The viewer page with `data` (see `viewer_data`) inlined."""
    return fill_page(asset("viewer.html"), asset("dashboard.js") + asset("viewer.js"), data)


def fill_page(page: str, script: str, data: Any) -> str:
    """Put the shared CSS, `script` and `data` into a page template's placeholders."""
    for marker, value in (("__STYLE__", asset("dashboard.css")), ("__SCRIPT__", script)):
        head, rest = page.split(marker, 1)
        page = head + value + rest
    head, rest = page.split("__DATA__", 1)  # last: the data is never searched again
    return head + script_json(data) + rest


def write_viewer(graph: FeatureGraph, path: str | os.PathLike, summary: dict[str, Any],
                 dashboards: dict[str, Any] | None = None,
                 graph_json: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    write_text(path, render_html(viewer_data(graph, summary, dashboards, graph_json)))
    return path
