"""Write a FeatureGraph's export directory (design.md) atomically, and load graphs back.

Directory contents (format "all"): graph.json + graph-metadata.json (Neuronpedia),
nodes.csv, edges.csv, graph.graphml, graph.nodelink.json, graph.dot, graph.svg, graph.png,
index.html (viewer), summary.json; `parquet=True` adds nodes/edges.parquet.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..graph import GRAPH_FILE, FeatureGraph
from ..errors import ExportError, GraphError
from ..fileio import atomic_dir, write_json, write_text
from . import dot as dot_mod
from . import neuronpedia, networkx_io, tables, viewer
from .explanations import ExplanationsLike, as_explanations, dashboards_with_explanations, \
    with_explanations

log = logging.getLogger(__name__)

FORMATS = ("all", "dot", "svg", "graphml", "nodelink", "csv", "parquet", "neuronpedia", "html")
_ALL = ("neuronpedia", "csv", "graphml", "nodelink", "dot", "svg", "html")
_META_KEYS = ("task", "method", "ablation", "model", "metric", "prompt", "warnings", "completeness",
              "edge_faithfulness", "error_share", "replacement_score", "completeness_score",
              "features_alone", "target")


def summarize(graph: FeatureGraph) -> dict[str, Any]:
    """summary.json: task, method, metric values, faithfulness (or replacement/completeness
    scores), error share, the trace's warnings, node/edge counts."""
    meta = graph.meta
    out: dict[str, Any] = {k: meta[k] for k in _META_KEYS if k in meta}
    for k, v in meta.items():
        if (k.startswith("metric") or k.startswith("faithful")) and k not in out:
            out[k] = v
    kinds = Counter(d["kind"] for _, d in graph.graph.nodes(data=True))
    out.update(n_nodes=graph.graph.number_of_nodes(), n_edges=graph.graph.number_of_edges(),
               nodes_by_kind=dict(sorted(kinds.items())),
               prompt_tokens=neuronpedia.prompt_tokens(graph))
    return out


def _load_dashboards(dashboards: Mapping[str, Any] | str | os.PathLike | None) -> dict[str, Any]:
    if dashboards is None:
        return {}
    if isinstance(dashboards, Mapping):
        return dict(dashboards)
    from .dashboards import load_dashboards

    return load_dashboards(dashboards)


def _formats(formats: Iterable[str] | str) -> list[str]:
    formats = [formats] if isinstance(formats, str) else list(formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ExportError(f"unknown export format(s) {bad or formats}; choose from {FORMATS}")
    chosen = list(_ALL) if "all" in formats else formats
    if "parquet" in formats and "parquet" not in chosen:
        chosen.append("parquet")
    return chosen


def export_graph(graph: FeatureGraph, out_dir: str | os.PathLike, overwrite: bool = False,
                 dashboards: Mapping[str, Any] | str | os.PathLike | None = None,
                 formats: Iterable[str] | str = "all", parquet: bool = False,
                 tokenizer=None, svg_nodes: int | None = dot_mod.TOP_NODES,
                 explanations: ExplanationsLike = None) -> dict[str, Any]:
    """Write the export directory for `graph`; returns the summary (with `files`).

    Args:
        dashboards: feature dashboards for the viewer: a mapping `"hook:index" -> data`
            (see `export.dashboards`) or a dashboards directory written by `write_dashboards`.
        formats: "all" or any of FORMATS; "svg" also writes graph.dot.
        overwrite: replace an existing non-empty directory (refused otherwise).
        tokenizer: if given and `graph.meta` has a `prompt` but no `prompt_tokens`, the
            prompt's tokens are added to the views (viewer axis, graph.json, summary).
        svg_nodes: graph.dot / graph.svg / graph.png draw only this many largest-|effect|
            nodes (plus the metric); None draws all of them.
        explanations: auto-interp explanations (`saecircuits explain`): an explanations.json,
            an explain --out directory or a mapping `"hook:index" -> text`. Feature nodes that
            have one carry `explanation` (+ `explanation_score`) in every file (a nodes.csv
            column, graph.json fields); graph.json's `clerp`, the DOT/SVG and viewer labels
            show it in place of the logit-lens label, which stays in `label`; the viewer's
            dashboards show it too.
    If the Graphviz `dot` binary is missing, graph.dot is still written, graph.svg and
    graph.png are left out and `summary["svg_error"]` says why (a warning is logged).
    """
    if not isinstance(graph, FeatureGraph):
        raise ExportError(f"expected a FeatureGraph, got {type(graph).__name__}")
    chosen = _formats(formats)
    if parquet and "parquet" not in chosen:
        chosen.append("parquet")
    expl = as_explanations(explanations)
    dash = dashboards_with_explanations(_load_dashboards(dashboards), expl)
    graph = with_explanations(graph, expl)
    shown = with_dashboard_labels(graph, dash)
    if tokenizer is not None and graph.meta.get("prompt") and not graph.meta.get("prompt_tokens"):
        shown = shown.copy() if shown is graph else shown
        ids = tokenizer(str(graph.meta["prompt"]))["input_ids"]
        shown.meta["prompt_tokens"] = tokenizer.batch_decode([[int(i)] for i in ids])
    summary = summarize(shown)
    files: list[str] = []
    gj = neuronpedia.graph_json(shown) if "neuronpedia" in chosen or "html" in chosen else None
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        if "neuronpedia" in chosen:
            np_graph = gj
            write_json(tmp / "graph.json", np_graph)
            write_json(tmp / "graph-metadata.json", neuronpedia.graph_metadata(shown))
            files += ["graph.json", "graph-metadata.json"]
            slug_file = f"{np_graph['metadata']['slug']}.json"  # what circuit-tracer's server fetches
            if slug_file not in files:
                write_json(tmp / slug_file, np_graph)
                files.append(slug_file)
        if "csv" in chosen:
            tables.write_csv(graph, tmp)
            files += ["nodes.csv", "edges.csv"]
        if "parquet" in chosen:
            tables.write_parquet(graph, tmp)
            files += ["nodes.parquet", "edges.parquet"]
        if "graphml" in chosen:
            networkx_io.write_graphml(graph, tmp / "graph.graphml")
            files.append("graph.graphml")
        if "nodelink" in chosen:
            networkx_io.write_node_link(graph, tmp / "graph.nodelink.json")
            files.append("graph.nodelink.json")
        if "dot" in chosen or "svg" in chosen:
            if svg_nodes is not None and (not isinstance(svg_nodes, int) or svg_nodes < 1):
                raise ExportError(f"svg_nodes must be a positive integer or None, got {svg_nodes!r}")
            source = dot_mod.write_dot(shown, tmp / "graph.dot", title=_title(summary),
                                       max_nodes=svg_nodes)
            files.append("graph.dot")
            if "svg" in chosen:
                try:
                    write_text(tmp / "graph.svg", dot_mod.render_svg(source))
                    (tmp / "graph.png").write_bytes(dot_mod.render(source, "png"))
                    files += ["graph.svg", "graph.png"]
                except ExportError as err:
                    summary["svg_error"] = str(err)
                    log.warning("%s", err)
        if "html" in chosen:
            viewer.write_viewer(shown, tmp / "index.html", summary, dash, gj)
            files.append("index.html")
        summary["dashboards"] = sorted(dash)
        if expl:
            summary["explained_nodes"] = sum(1 for _, d in graph.graph.nodes(data=True)
                                             if d.get("explanation") is not None)
        summary["files"] = files + ["summary.json"]
        summary["meta"] = graph.meta
        write_json(tmp / "summary.json", summary)
    return summary


def with_dashboard_labels(graph: FeatureGraph, dashboards: Mapping[str, Any]) -> FeatureGraph:
    """A copy whose unlabelled feature nodes take their dashboard's short description."""
    if not dashboards:
        return graph
    out = graph.copy()
    for _, d in out.graph.nodes(data=True):
        key = f"{d.get('hook')}:{d.get('feature')}"
        if d["kind"] == "feature" and not d.get("label") and key in dashboards:
            d["label"] = str(dashboards[key].get("label") or "")
    return out


def _title(summary: dict[str, Any]) -> str:
    bits = [f"{k}: {summary[k]}" for k in ("task", "method") if k in summary]
    bits.append(f"{summary['n_nodes']} nodes, {summary['n_edges']} edges")
    return "  |  ".join(bits)


def load_graph(path: str | os.PathLike) -> FeatureGraph:
    """Load a graph from featuregraph.json, an export directory, GraphML or node-link JSON."""
    path = Path(path)
    if not path.exists():
        raise GraphError(f"no graph at {str(path)!r}")
    if path.is_dir():
        for name, reader in ((GRAPH_FILE, FeatureGraph.load),
                             ("graph.graphml", networkx_io.read_graphml),
                             ("graph.nodelink.json", networkx_io.read_node_link)):
            if (path / name).is_file():
                return reader(path / name)
        if (path / "nodes.csv").is_file():
            return tables.read_csv(path, _summary_meta(path))
        raise GraphError(f"{str(path)!r} holds no {GRAPH_FILE}, graph.graphml, "
                         "graph.nodelink.json or nodes.csv")
    if path.suffix == ".graphml":
        return networkx_io.read_graphml(path)
    if path.name.endswith(".nodelink.json"):
        return networkx_io.read_node_link(path)
    return FeatureGraph.load(path)


def _summary_meta(folder: Path) -> dict[str, Any]:
    path = folder / "summary.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("meta") or {}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise GraphError(f"corrupt summary file {str(path)!r}: {err}") from err
