"""Neuronpedia / circuit-tracer attribution-graph JSON (`graph.json`, `graph-metadata.json`).

Schema (../shared/anchors.md): `metadata{slug, scan, prompt_tokens, prompt, node_threshold,
info{generator{name, version}}}`, `qParams{pinnedIds, supernodes, linkType, clickedId,
sg_pos}`, `nodes[]{node_id, feature, layer, ctx_idx, feature_type, jsNodeId, clerp,
influence, activation, is_target_logit}`, `links[]{source, target, weight}`.

Mapping: SAE features -> "cross layer transcoder" (the front end's feature type), error
nodes -> "mlp reconstruction error", embeddings -> "embedding" (layer "E"), the metric /
logit nodes -> "logit" (layer = deepest layer + 1). `influence` is the cumulative share
of |effect| over nodes sorted by |effect| (the quantity circuit-tracer's node threshold
cuts), so `node_threshold` keeps the same meaning.
"""
from __future__ import annotations

import re
from typing import Any

from .. import __version__ as _version
from ..graph import FeatureGraph

FEATURE_TYPES = {"feature": "cross layer transcoder", "error": "mlp reconstruction error",
                 "embed": "embedding", "metric": "logit", "logit": "logit"}


def slug_of(graph: FeatureGraph) -> str:
    base = str(graph.meta.get("slug") or graph.meta.get("task") or "saecircuits-graph")
    return re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")[:80] or "saecircuits-graph"


def prompt_tokens(graph: FeatureGraph) -> list[str]:
    tokens = graph.meta.get("prompt_tokens") or graph.meta.get("tokens") or []
    return [str(t) for t in tokens]


def _logit_clerp(d: dict[str, Any], meta: dict[str, Any]) -> str:
    token = d.get("token", d.get("label") or meta.get("target_token") or meta.get("clean_answer"))
    prob = d.get("prob", d.get("probability", meta.get("target_prob")))
    if token is None:
        return "metric"
    if prob is None:
        return f'Output "{token}"'
    return f'Output "{token}" (p={float(prob):.3f})'


def _influence(graph: FeatureGraph) -> dict[str, float]:
    mags = sorted(((abs(d.get("effect", 0.0)), n) for n, d in graph.graph.nodes(data=True)
                   if d["kind"] in ("feature", "error", "embed")), reverse=True)
    total = sum(m for m, _ in mags)
    out, running = {}, 0.0
    for m, n in mags:
        running += m
        out[n] = running / total if total > 0 else 1.0
    return out


def graph_json(graph: FeatureGraph, node_threshold: float = 0.8) -> dict[str, Any]:
    """The attribution-graph JSON object for `graph`."""
    data = dict(graph.graph.nodes(data=True))
    layers = [d["layer"] for d in data.values()
              if d["kind"] in ("feature", "error") and d.get("layer") is not None]
    top_layer = (max(layers) if layers else 0) + 1
    influence = _influence(graph)
    ids: dict[str, str] = {}
    nodes = []
    taken: set[str] = set()
    for nid, d in data.items():
        kind = d["kind"]
        ctx = int(d["pos"]) if d.get("pos") is not None else 0
        if kind == "embed":
            layer, feat = "E", None
            np_id = f"E_{ctx}_{ctx}"
        elif kind in ("metric", "logit"):
            layer, feat = str(top_layer), d.get("feature")
            np_id = f"{layer}_{feat if feat is not None else len(nodes)}_{ctx}"
        else:
            layer = str(int(d["layer"])) if d.get("layer") is not None else "0"
            feat = d.get("feature") if kind == "feature" else None
            np_id = f"{layer}_{feat if kind == 'feature' else 'err'}_{ctx}"
        if np_id in taken:  # e.g. resid.5 and mlp.5 features with one index at one position
            np_id = f"{np_id}_{d.get('hook')}"
        taken.add(np_id)
        ids[nid] = np_id
        is_logit = kind in ("metric", "logit")
        clerp = _logit_clerp(d, graph.meta) if is_logit else str(d.get("label") or "")
        nodes.append({
            "node_id": np_id, "feature": None if feat is None else int(feat), "layer": layer,
            "ctx_idx": ctx, "feature_type": FEATURE_TYPES[kind],
            "jsNodeId": np_id.rsplit("_", 1)[0] + f"-{ctx}" if not is_logit else np_id,
            "clerp": clerp, "influence": influence.get(nid),
            "activation": float(d.get("activation", 0.0)), "is_target_logit": is_logit,
            "saecircuits_id": nid, "hook": d.get("hook"), "effect": float(d.get("effect", 0.0)),
        })
    links = [{"source": ids[u], "target": ids[v], "weight": float(d["weight"])}
             for u, v, d in graph.graph.edges(data=True)]
    tokens = prompt_tokens(graph)
    metadata = {
        "slug": slug_of(graph), "scan": str(graph.meta.get("model") or "unknown"),
        "prompt_tokens": tokens, "prompt": str(graph.meta.get("prompt") or "".join(tokens)),
        "node_threshold": node_threshold,
        "info": {"generator": {"name": "saecircuits", "version": _version},
                 "method": graph.meta.get("method"), "task": graph.meta.get("task")},
    }
    pinned = [n["node_id"] for n in nodes if n["feature_type"] != "mlp reconstruction error"]
    return {"metadata": metadata,
            "qParams": {"pinnedIds": pinned[:64], "supernodes": [], "linkType": "both",
                        "clickedId": "", "sg_pos": ""},
            "nodes": nodes, "links": links}


def graph_metadata(graph: FeatureGraph) -> dict[str, Any]:
    """`graph-metadata.json`: the list circuit-tracer's local server reads to find graphs."""
    meta = graph_json(graph)["metadata"]
    return {"graphs": [{"slug": meta["slug"], "scan": meta["scan"], "prompt": meta["prompt"],
                        "prompt_tokens": meta["prompt_tokens"],
                        "node_threshold": meta["node_threshold"], "info": meta["info"]}]}
