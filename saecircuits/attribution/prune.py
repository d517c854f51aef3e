"""Pruning a `FeatureGraph`: node threshold, top-k, cumulative influence, edges, dangling nodes.

Node rules rank feature and error nodes by |effect| (the metric and embedding nodes stay):
    threshold   keep nodes with |effect| >= t
    top_k       keep the k feature nodes with the largest |effect|, and the error nodes at
                least as large as the k-th of them
    influence   keep the fewest nodes whose |effect| reaches that share of the total
Edges: keep the fewest edges whose |weight| reaches `edge_influence` of the total (or
|weight| >= `edge_threshold`). Then nodes that no longer reach the metric are dropped.
"""
from __future__ import annotations

from collections.abc import Mapping

import networkx as nx

from ..errors import ConfigError, GraphError
from ..graph import FeatureGraph

SCORED = ("feature", "error")


def _check_share(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f"{name} must be a share in (0, 1], got {value!r}")


def select(effects: Mapping[str, float], kinds: Mapping[str, str], threshold: float | None = None,
           top_k: int | None = None, influence: float | None = None) -> list[str]:
    """Node ids kept by one rule (exactly one of threshold / top_k / influence), largest first."""
    given = [r for r in (threshold, top_k, influence) if r is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one of node threshold, top-k or influence")
    ranked = sorted(effects, key=lambda nid: -abs(effects[nid]))
    if threshold is not None:
        if not isinstance(threshold, (int, float)) or threshold < 0:
            raise ConfigError(f"node threshold must be a non-negative number, got {threshold!r}")
        keep = [nid for nid in ranked if abs(effects[nid]) >= threshold]
    elif top_k is not None:
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ConfigError(f"top-k must be a positive integer, got {top_k!r}")
        feats = [nid for nid in ranked if kinds[nid] == "feature"][:top_k]
        floor = abs(effects[feats[-1]]) if feats else float("inf")
        keep = [nid for nid in ranked if nid in set(feats)
                or (kinds[nid] != "feature" and abs(effects[nid]) >= floor)]
    else:
        _check_share("influence", influence)
        total = sum(abs(v) for v in effects.values())
        keep, acc = [], 0.0
        for nid in ranked:
            if acc >= influence * total:
                break
            keep.append(nid)
            acc += abs(effects[nid])
    return keep


def select_nonempty(effects: Mapping[str, float], kinds: Mapping[str, str], threshold=None, top_k=None,
                    influence=None) -> set[str]:
    """`select`, with a GraphError naming the rule when it keeps nothing."""
    keep = set(select(effects, kinds, threshold, top_k, influence))
    if not keep:
        largest = max((abs(v) for v in effects.values()), default=0.0)
        raise GraphError(f"the pruning rule (threshold={threshold}, top_k={top_k}, "
                         f"influence={influence}) keeps no node; the largest |effect| is {largest:.4g}")
    return keep


def prune_nodes(graph: FeatureGraph, threshold: float | None = None, top_k: int | None = None,
                influence: float | None = None) -> FeatureGraph:
    """A copy of `graph` with the feature/error nodes kept by the rule (other kinds stay)."""
    data = graph.graph.nodes
    scored = {n: d["effect"] for n, d in data(data=True) if d["kind"] in SCORED}
    kinds = {n: data[n]["kind"] for n in scored}
    keep = select_nonempty(scored, kinds, threshold, top_k, influence)
    out = graph.subgraph([n for n in graph.graph if n in keep or data[n]["kind"] not in SCORED])
    return out


def prune_edges(graph: FeatureGraph, edge_influence: float | None = 0.98,
                edge_threshold: float | None = None) -> FeatureGraph:
    """A copy keeping the fewest edges reaching `edge_influence` of total |weight| (or a threshold)."""
    out = graph.copy()
    ranked = sorted(out.graph.edges(data="weight"), key=lambda e: -abs(e[2]))
    if edge_threshold is not None:
        drop = [(u, v) for u, v, w in ranked if abs(w) < edge_threshold]
    else:
        _check_share("edge influence", edge_influence)
        total = sum(abs(w) for _, _, w in ranked)
        acc, drop = 0.0, []
        for u, v, w in ranked:
            if acc >= edge_influence * total:
                drop.append((u, v))
            acc += abs(w)
    out.graph.remove_edges_from(drop)
    return out


def remove_dangling(graph: FeatureGraph, target: str = "metric") -> FeatureGraph:
    """A copy without feature/error nodes that have no path to `target`."""
    if target not in graph.graph:
        raise GraphError(f"graph has no {target!r} node")
    reach = nx.ancestors(graph.graph, target) | {target}
    keep = [n for n, d in graph.graph.nodes(data=True) if n in reach or d["kind"] not in SCORED]
    return graph.subgraph(keep)
