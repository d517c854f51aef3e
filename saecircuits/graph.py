"""The graph floor: node vocabulary (`Node`) and `FeatureGraph`, below attribution and export.

Node ids (design.md): `{hook}/{pos}/{feature}` for SAE features, `{hook}/{pos}/err` for
SAE error nodes, `embed/{pos}` for token embeddings, `metric` (or `logit/{token}`) for
the target; `pos` is a token position or `*` when summed over positions.

Node attributes: kind ("feature" | "error" | "embed" | "metric" | "logit"), hook, layer
(int; -1 for embed, a large number for metric/logit), pos (int | None for `*`), feature
(int | None), activation (float), effect (float: attribution to the metric), label (str).
Edge attribute: weight (float: direct effect of source on target).
`meta` holds run facts: model, task, method, ablation, metric values, prompt tokens, ...

Export (`saecircuits.export`) builds on this module; this module imports nothing above it.
"""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx

from .errors import GraphError
from .fileio import file_in, write_json

NODE_KINDS = ("feature", "error", "embed", "metric", "logit")
GRAPH_FILE = "featuregraph.json"
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Node:
    """One node of a circuit: `Node(hook, pos, feature, kind)`.

    hook: hook-point name (None for metric/logit/embed); pos: token position or None (`*`,
    summed over positions); feature: latent index (feature), token id (logit) or None.
    kind: "feature" | "error" | "embed" | "metric" | "logit". Build with the class methods.
    """

    hook: str | None
    pos: int | None
    feature: int | None = None
    kind: str = "feature"

    def __post_init__(self) -> None:
        if self.kind not in NODE_KINDS:
            raise GraphError(f"unknown node kind {self.kind!r}; expected one of {NODE_KINDS}")

    @classmethod
    def feat(cls, hook: str, pos: int | None, feature: int) -> "Node":
        return cls(hook, pos, int(feature), "feature")

    @classmethod
    def error(cls, hook: str, pos: int | None) -> "Node":
        return cls(hook, pos, None, "error")

    @classmethod
    def embed(cls, pos: int | None) -> "Node":
        return cls("embed", pos, None, "embed")

    @classmethod
    def metric(cls) -> "Node":
        return cls(None, None, None, "metric")

    @property
    def is_error(self) -> bool:
        return self.kind == "error"

    @property
    def id(self) -> str:
        """The graph id (module docstring)."""
        where = "*" if self.pos is None else str(int(self.pos))
        if self.kind == "metric":
            return "metric"
        if self.kind == "logit":
            return f"logit/{self.feature}"
        if self.kind == "embed":
            return f"embed/{where}"
        return f"{self.hook}/{where}/{'err' if self.kind == 'error' else self.feature}"

    @classmethod
    def parse(cls, nid: str) -> "Node":
        """Inverse of `.id`."""
        if not isinstance(nid, str) or not nid:
            raise GraphError(f"node id must be a non-empty string, got {nid!r}")
        if nid == "metric":
            return cls.metric()
        head, _, rest = nid.partition("/")
        try:
            if head == "logit" and rest:
                return cls(None, None, int(rest), "logit")
            if head == "embed" and rest and "/" not in rest:
                return cls.embed(None if rest == "*" else int(rest))
            hook, where, feat = nid.rsplit("/", 2)
            pos = None if where == "*" else int(where)
            return cls.error(hook, pos) if feat == "err" else cls.feat(hook, pos, int(feat))
        except ValueError:
            raise GraphError(f"not a node id: {nid!r} (expected hook/pos/feature, hook/pos/err, "
                             "embed/pos or metric)") from None

    @classmethod
    def coerce(cls, node) -> "Node":
        """A Node from a Node, an id string or a legacy `(hook, pos, feature | "err")` tuple."""
        if isinstance(node, Node):
            return node
        if isinstance(node, str):
            return cls.parse(node)
        if isinstance(node, tuple) and len(node) == 3:
            hook, pos, feat = node
            return cls.error(hook, pos) if feat == "err" else cls.feat(hook, pos, feat)
        raise GraphError(f"not a node: {node!r}")

    # legacy tuple view `(hook, pos, feature | "err")` for scripts written against the tuples
    def _legacy(self) -> tuple:
        return (self.hook, self.pos, "err" if self.kind == "error" else self.feature)

    def __iter__(self):
        return iter(self._legacy())

    def __getitem__(self, i):
        return self._legacy()[i]

    def __str__(self) -> str:
        return self.id


def node_id(hook: str, pos: int | None, feature: int | str | None = None) -> str:
    """Node id for a feature (`feature` int), error node (`"err"`) or embedding (`hook="embed"`)."""
    if hook == "embed" and feature is None:
        return Node.embed(pos).id
    if feature == "err":
        return Node.error(hook, pos).id
    return Node.feat(hook, pos, feature).id


NODE_COLUMNS = ("id", "kind", "hook", "layer", "pos", "feature", "activation", "effect", "label")
EDGE_COLUMNS = ("source", "target", "weight")
_EXPORTER = None  # set by saecircuits.export (export depends on the graph, never the reverse)


def register_exporter(fn) -> None:
    """Called by `saecircuits.export` so that `FeatureGraph.export` works without importing up."""
    global _EXPORTER
    _EXPORTER = fn


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

    # -- conversions ------------------------------------------------------------------
    def to_networkx(self) -> nx.DiGraph:
        """A plain networkx DiGraph copy (a deep copy of meta in `G.graph["meta"]`)."""
        out = self.graph.copy()
        out.graph = {"meta": copy.deepcopy(self.meta)}
        return out

    @classmethod
    def from_networkx(cls, g: nx.DiGraph, meta: dict[str, Any] | None = None) -> "FeatureGraph":
        """Validate and wrap a DiGraph (nodes need `kind`; edges need `weight`)."""
        if not isinstance(g, nx.DiGraph) or g.is_multigraph():
            raise GraphError(f"expected a networkx DiGraph, got {type(g).__name__}")
        out = cls(meta=copy.deepcopy(meta if meta is not None else g.graph.get("meta", {})))
        try:
            for n, d in g.nodes(data=True):
                d = dict(d)
                if "kind" not in d:
                    raise GraphError(f"node {n!r} has no 'kind' attribute")
                out.add_node(str(n), **d)
            for u, v, d in g.edges(data=True):
                d = dict(d)
                if "weight" not in d:
                    raise GraphError(f"edge {u!r} -> {v!r} has no 'weight' attribute")
                out.add_edge(str(u), str(v), d.pop("weight"))
                out.graph.edges[str(u), str(v)].update(d)
        except (TypeError, ValueError) as err:
            if isinstance(err, GraphError):
                raise
            raise GraphError(f"invalid graph attributes: {err}") from err
        return out

    def nodes_df(self):
        """pandas DataFrame, one row per node (nullable `Int64` layer/pos/feature)."""
        import pandas as pd

        rows = [{"id": n, **d} for n, d in self.graph.nodes(data=True)]
        extras = sorted({k for r in rows for k in r} - set(NODE_COLUMNS))
        frame = pd.DataFrame(rows, columns=list(NODE_COLUMNS) + extras)
        for col in ("layer", "pos", "feature"):
            frame[col] = frame[col].astype("Int64")
        for col in ("activation", "effect"):
            frame[col] = frame[col].astype("float64")
        for col in ("id", "kind", "hook", "label") + tuple(extras):
            frame[col] = frame[col].astype(object)
        return frame

    def edges_df(self):
        """pandas DataFrame, one row per edge (source, target, weight float64, extras)."""
        import pandas as pd

        rows = [{"source": u, "target": v, **d} for u, v, d in self.graph.edges(data=True)]
        extras = sorted({k for r in rows for k in r} - set(EDGE_COLUMNS))
        frame = pd.DataFrame(rows, columns=list(EDGE_COLUMNS) + extras)
        frame["weight"] = frame["weight"].astype("float64")
        return frame

    def export(self, out_dir: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
        """Write the export directory: the same as `saecircuits.export.export_graph(self, ...)`,
        which registers itself here when `saecircuits.export` is imported."""
        if _EXPORTER is None:
            raise GraphError("import saecircuits.export first (or call "
                             "saecircuits.export.export_graph(graph, out_dir))")
        return _EXPORTER(self, out_dir, **kwargs)

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
        path = file_in(path, GRAPH_FILE, "no feature graph at {path}", GraphError)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise GraphError(f"corrupt feature graph file {str(path)!r}: {err}") from err
        return cls.from_dict(data)
