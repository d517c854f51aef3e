"""`FeatureGraph`: a feature circuit as a networkx DiGraph plus run metadata.

Node ids (design.md): `{hook}/{pos}/{feature}` for SAE features, `{hook}/{pos}/err` for
SAE error nodes, `embed/{pos}` for token embeddings, `metric` (or `logit/{token}`) for
the target; `pos` is a token position or `*` when summed over positions.

Node attributes: kind ("feature" | "error" | "embed" | "metric" | "logit"), hook, layer
(int; -1 for embed, a large number for metric/logit), pos (int | None for `*`), feature
(int | None), activation (float), effect (float: attribution to the metric), label (str).
Edge attribute: weight (float: direct effect of source on target).
`meta` holds run facts: model, task, method, ablation, metric values, prompt tokens, ...
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import networkx as nx

from ..errors import GraphError
from ..fileio import write_json

NODE_KINDS = ("feature", "error", "embed", "metric", "logit")
GRAPH_FILE = "featuregraph.json"
_FORMAT_VERSION = 1


def node_id(hook: str, pos: int | None, feature: int | str | None = None) -> str:
    """Node id for a feature (`feature` int), error node (`"err"`) or embedding (`hook="embed"`)."""
    where = "*" if pos is None else str(int(pos))
    if hook == "embed" and feature is None:
        return f"embed/{where}"
    return f"{hook}/{where}/{feature}"


class FeatureGraph:
    """A directed graph of features, error nodes, embeddings and the metric."""

    def __init__(self, graph: nx.DiGraph | None = None, meta: dict[str, Any] | None = None):
        self.graph = graph if graph is not None else nx.DiGraph()
        self.meta: dict[str, Any] = dict(meta or {})

    # -- building -----------------------------------------------------------------------
    def add_node(self, nid: str, *, kind: str, hook: str | None = None, layer: int | None = None,
                 pos: int | None = None, feature: int | None = None, activation: float = 0.0,
                 effect: float = 0.0, label: str = "", **extra: Any) -> str:
        if kind not in NODE_KINDS:
            raise GraphError(f"unknown node kind {kind!r}; expected one of {NODE_KINDS}")
        for name, value in (("activation", activation), ("effect", effect)):
            if not math.isfinite(float(value)):
                raise GraphError(f"node {nid!r} has non-finite {name} {value!r}")
        self.graph.add_node(nid, kind=kind, hook=hook, layer=layer, pos=pos, feature=feature,
                            activation=float(activation), effect=float(effect), label=label, **extra)
        return nid

    def add_edge(self, source: str, target: str, weight: float) -> None:
        for nid in (source, target):
            if nid not in self.graph:
                raise GraphError(f"edge endpoint {nid!r} is not a node of the graph")
        if not math.isfinite(float(weight)):
            raise GraphError(f"edge {source!r} -> {target!r} has non-finite weight {weight!r}")
        self.graph.add_edge(source, target, weight=float(weight))

    # -- views --------------------------------------------------------------------------
    @property
    def nodes(self):
        return self.graph.nodes

    @property
    def edges(self):
        return self.graph.edges

    def __len__(self) -> int:
        return self.graph.number_of_nodes()

    def __contains__(self, nid: str) -> bool:
        return nid in self.graph

    def feature_nodes(self) -> list[str]:
        return [n for n, d in self.graph.nodes(data=True) if d["kind"] == "feature"]

    def copy(self) -> "FeatureGraph":
        return FeatureGraph(self.graph.copy(), json.loads(json.dumps(self.meta)))

    def subgraph(self, keep) -> "FeatureGraph":
        return FeatureGraph(self.graph.subgraph(list(keep)).copy(), dict(self.meta))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FeatureGraph):
            return NotImplemented
        return (dict(self.graph.nodes(data=True)) == dict(other.graph.nodes(data=True))
                and {(u, v): d for u, v, d in self.graph.edges(data=True)}
                == {(u, v): d for u, v, d in other.graph.edges(data=True)}
                and self.meta == other.meta)

    def __repr__(self) -> str:
        kinds = {}
        for _, d in self.graph.nodes(data=True):
            kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
        return f"FeatureGraph({kinds}, edges={self.graph.number_of_edges()})"

    # -- conversions (implemented in saecircuits.export) ---------------------------------
    def to_networkx(self) -> nx.DiGraph:
        """A plain networkx DiGraph copy (meta in `G.graph["meta"]`)."""
        from ..export import to_networkx

        return to_networkx(self)

    @classmethod
    def from_networkx(cls, g: nx.DiGraph, meta: dict[str, Any] | None = None) -> "FeatureGraph":
        from ..export import from_networkx

        return from_networkx(g, meta)

    def nodes_df(self):
        """pandas DataFrame, one row per node."""
        from ..export import nodes_df

        return nodes_df(self)

    def edges_df(self):
        """pandas DataFrame, one row per edge (source, target, weight)."""
        from ..export import edges_df

        return edges_df(self)

    def export(self, out_dir: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
        """Write the export directory (see `saecircuits.export.export_graph`)."""
        from ..export import export_graph

        return export_graph(self, out_dir, **kwargs)

    # -- persistence --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": "saecircuits.featuregraph", "version": _FORMAT_VERSION, "meta": self.meta,
                "nodes": [{"id": n, **d} for n, d in self.graph.nodes(data=True)],
                "edges": [{"source": u, "target": v, **d} for u, v, d in self.graph.edges(data=True)]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FeatureGraph":
        if not isinstance(data, dict) or data.get("format") != "saecircuits.featuregraph":
            raise GraphError("not a saecircuits feature graph (missing format marker)")
        graph = cls(meta=data.get("meta") or {})
        try:
            for node in data["nodes"]:
                node = dict(node)
                graph.add_node(node.pop("id"), **node)
            for edge in data["edges"]:
                edge = dict(edge)
                graph.add_edge(edge.pop("source"), edge.pop("target"), **edge)
        except (KeyError, TypeError, ValueError) as err:
            raise GraphError(f"corrupt feature graph: {err}") from err
        return graph

    def save(self, path: str | os.PathLike) -> Path:
        """Write the graph as JSON (a directory gets `featuregraph.json` inside)."""
        path = Path(path)
        if path.suffix != ".json":
            path = path / GRAPH_FILE
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureGraph":
        path = Path(path)
        if path.is_dir():
            path = path / GRAPH_FILE
        if not path.is_file():
            raise GraphError(f"no feature graph at {str(path)!r}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise GraphError(f"corrupt feature graph file {str(path)!r}: {err}") from err
        return cls.from_dict(data)
