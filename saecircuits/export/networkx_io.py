"""FeatureGraph <-> networkx DiGraph, GraphML and node-link JSON (round trips exactly).

`to_networkx(graph)` returns a copy whose `G.graph["meta"]` holds the run metadata.
GraphML cannot hold None or nested values: None attributes are left out and restored on
load, nested extras and the metadata are stored as JSON text (`meta_json`, `<attr>__json`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import networkx as nx

from ..graph import FeatureGraph
from ..errors import GraphError
from ..fileio import atomic_path, write_json

_BASE_NODE = ("kind", "hook", "layer", "pos", "feature", "activation", "effect", "label")
_JSON_SUFFIX = "__json"


def to_networkx(graph: FeatureGraph) -> nx.DiGraph:
    """A copy of the graph; `G.graph["meta"]` is a deep copy of `graph.meta`."""
    return graph.to_networkx()


def from_networkx(g: nx.DiGraph, meta: dict[str, Any] | None = None) -> FeatureGraph:
    """Validate and wrap a DiGraph (nodes need `kind`; edges need `weight`)."""
    return FeatureGraph.from_networkx(g, meta)


def _flat(attrs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in attrs.items():
        if v is None:
            continue
        if isinstance(v, (str, int, float, bool)):
            out[k] = v
        else:
            out[k + _JSON_SUFFIX] = json.dumps(v, ensure_ascii=False, allow_nan=False)
    return out


def _unflat(attrs: dict[str, Any], base: tuple[str, ...]) -> dict[str, Any]:
    out = {k: None for k in base}
    for k, v in attrs.items():
        if k.endswith(_JSON_SUFFIX):
            out[k[: -len(_JSON_SUFFIX)]] = json.loads(v)
        else:
            out[k] = v
    return out


def write_graphml(graph: FeatureGraph, path: str | os.PathLike) -> Path:
    """Write GraphML (graph attribute `meta_json` carries the metadata)."""
    g = nx.DiGraph(meta_json=json.dumps(graph.meta, ensure_ascii=False, allow_nan=False))
    g.add_nodes_from((n, _flat(d)) for n, d in graph.graph.nodes(data=True))
    g.add_edges_from((u, v, _flat(d)) for u, v, d in graph.graph.edges(data=True))
    path = Path(path)
    with atomic_path(path) as tmp:
        nx.write_graphml(g, tmp, encoding="utf-8", named_key_ids=True)
    return path


def read_graphml(path: str | os.PathLike) -> FeatureGraph:
    path = Path(path)
    if not path.is_file():
        raise GraphError(f"no GraphML file at {str(path)!r}")
    try:
        g = nx.read_graphml(path, node_type=str)
        meta = json.loads(g.graph.get("meta_json", "{}"))
        plain = nx.DiGraph()
        plain.add_nodes_from((n, _unflat(d, _BASE_NODE)) for n, d in g.nodes(data=True))
        plain.add_edges_from((u, v, _unflat(d, ())) for u, v, d in g.edges(data=True))
    except (nx.NetworkXError, ValueError, KeyError, SyntaxError) as err:
        # ElementTree.ParseError derives from SyntaxError
        raise GraphError(f"corrupt GraphML file {str(path)!r}: {err}") from err
    for n, d in plain.nodes(data=True):
        if d.get("label") is None:
            d["label"] = ""
    return from_networkx(plain, meta)


def node_link(graph: FeatureGraph) -> dict[str, Any]:
    """networkx node-link data (`nodes`, `links`, `graph.meta`)."""
    return nx.node_link_data(to_networkx(graph), edges="links")


def write_node_link(graph: FeatureGraph, path: str | os.PathLike) -> Path:
    path = Path(path)
    write_json(path, node_link(graph))
    return path


def read_node_link(path: str | os.PathLike) -> FeatureGraph:
    path = Path(path)
    if not path.is_file():
        raise GraphError(f"no node-link JSON file at {str(path)!r}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        g = nx.node_link_graph(data, directed=True, multigraph=False, edges="links")
    except (json.JSONDecodeError, UnicodeDecodeError, nx.NetworkXError, KeyError, TypeError,
            AttributeError) as err:
        raise GraphError(f"corrupt node-link file {str(path)!r}: {err}") from err
    return from_networkx(g)
