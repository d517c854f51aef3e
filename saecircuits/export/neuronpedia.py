"""Neuronpedia / circuit-tracer attribution-graph JSON (`{slug}.json` = `graph.json`, `graph-metadata.json`).

Validated in the tests against circuit-tracer's own pydantic model (`circuit_tracer.frontend.graph_models.Model`,
schema committed in tests/fixtures/peers/circuit_tracer_graph_schema.json), and served by
`circuit-tracer start-server --graph_file_dir DIR` (it lists `graph-metadata.json` and fetches `{slug}.json`).

metadata: slug, scan (model id), transcoder_list (our SAE hook points, the "sites", in layer order),
    prompt_tokens (always filled: from the graph, a tokenizer, or a regex split of the prompt),
    prompt, node_threshold, schema_version, info{generator, feature_id_scheme, ...},
    feature_details{url_template, ...}: where each feature's circuit-tracer feature JSON lives
    (`saecircuits dashboards` writes `features/{hook}_{index}.json`).
Nodes (`feature_type`):
    feature  "cross layer transcoder"   node_id `{layer}_{index}_{ctx}`, jsNodeId `{layer}_{index}-0`
    error    "mlp reconstruction error" node_id `{layer}_-1_{ctx}`, feature -1, jsNodeId `{layer}_-1-{ctx}`
    token    "embedding"                node_id `E_{token id or ctx}_{ctx}`, feature = ctx, layer "E"
    output   "logit"                    node_id `{n_layers + 1}_{token id}_{ctx}`, clerp `Output " X" (p=0.123)`
    Where two hook points share a layer (resid.5 and mlp.5) the node_id / jsNodeId get `_{hook}` appended.
Feature id scheme: `feature = cantor(site, index) = (site + index)(site + index + 1)/2 + index`, with site
    the hook point's position in `transcoder_list` (circuit-tracer uses its layer as the site), so every
    (hook point, latent) pair has one integer; `saecircuits_id` keeps our own node id
    (`{hook}/{pos}/{feature}`).
clerp: a feature's auto-interp explanation when it has one (`explanation`, with `explanation_score` and
    the logit-lens `label` kept beside it), else its label.
ctx_idx: the token position; nodes summed over positions (pos `*`) and the metric sit at the last token.
`influence` is the cumulative share of |effect| over nodes sorted by |effect| (the quantity
circuit-tracer's node threshold cuts), so `node_threshold` keeps its meaning.
"""
from __future__ import annotations

import re
from typing import Any

from .. import __version__ as _version
from ..graph import FeatureGraph

SCHEMA_VERSION = 1
FEATURE_TYPES = {"feature": "cross layer transcoder", "error": "mlp reconstruction error",
                 "embed": "embedding", "metric": "logit", "logit": "logit"}
FEATURE_ID_SCHEME = ("feature = cantor(site, index) = (site+index)*(site+index+1)//2 + index; "
                     "site = position of the hook point in metadata.transcoder_list")
FEATURE_URL = "features/{hook}_{index}.json"
_KIND_ORDER = {"embed": 0, "attn": 1, "mlp": 2, "resid": 3}
_TOKEN_SPLIT = re.compile(r"\s*[A-Za-z0-9]+|\s*[^A-Za-z0-9\s]|\s+$")


def cantor(site: int, index: int) -> int:
    return (site + index) * (site + index + 1) // 2 + index


def slug_of(graph: FeatureGraph) -> str:
    base = str(graph.meta.get("slug") or graph.meta.get("task") or "saecircuits-graph")
    return re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")[:80] or "saecircuits-graph"


def prompt_tokens(graph: FeatureGraph) -> list[str]:
    """The graph's prompt tokens; a regex split of its prompt when no tokenizer ran (never empty
    when there is a prompt)."""
    tokens = graph.meta.get("prompt_tokens") or graph.meta.get("tokens") or []
    if not tokens and graph.meta.get("prompt"):
        tokens = _TOKEN_SPLIT.findall(str(graph.meta["prompt"]))
    return [str(t) for t in tokens]


def _site_order(hook: str) -> tuple:
    kind, _, layer = hook.partition(".")
    return (int(layer) if layer.isdigit() else -1, _KIND_ORDER.get(kind, 9), hook)


def _influence(graph: FeatureGraph) -> dict[str, float]:
    mags = sorted(((abs(d.get("effect", 0.0)), n) for n, d in graph.graph.nodes(data=True)
                   if d["kind"] in ("feature", "error", "embed")), reverse=True)
    total = sum(m for m, _ in mags)
    out, running = {}, 0.0
    for m, n in mags:
        running += m
        out[n] = running / total if total > 0 else 1.0
    return out


def _ctx(pos: Any, n_tokens: int) -> int:
    """Token position of a node: ints (negative = from the end) clamped to the prompt; `*`/None -> last."""
    last = max(n_tokens - 1, 0)
    if isinstance(pos, int) or (isinstance(pos, str) and pos.lstrip("-").isdigit()):
        p = int(pos)
        p = p + n_tokens if p < 0 else p
        return min(max(p, 0), last) if n_tokens else max(p, 0)
    return last


def _logit(d: dict[str, Any], meta: dict[str, Any]) -> tuple[str, float, int]:
    """(token text, probability, token id) of an output node; a metric node that is not one token's
    logit shows its metric name with p = the recorded target probability, else 1.0."""
    if d["kind"] == "logit":
        token, token_id = d.get("token") or d.get("label") or "?", d.get("token_id", d.get("feature"))
    else:
        token = meta.get("target_token") or meta.get("clean_answer") or d.get("label") or meta.get("metric") \
            or "metric"
        token_id = meta.get("target_token_id")
    prob = d.get("prob", d.get("probability", meta.get("target_prob")))
    return str(token), float(prob) if prob is not None else 1.0, int(token_id) if token_id is not None else -1


def clerp(d: dict[str, Any]) -> str:
    """A feature / error node's `clerp`: its auto-interp explanation when it has one (what
    Neuronpedia shows as a feature's label), else its own label (e.g. logit-lens tokens)."""
    return str(d.get("explanation") or d.get("label") or "")


def graph_json(graph: FeatureGraph, node_threshold: float = 0.8,
               feature_url: str = FEATURE_URL) -> dict[str, Any]:
    """The attribution-graph JSON object for `graph` (see the module docstring)."""
    data = dict(graph.graph.nodes(data=True))
    meta = graph.meta
    tokens = prompt_tokens(graph)
    positions = [d["pos"] for d in data.values() if isinstance(d.get("pos"), int) and d["pos"] >= 0]
    if positions and max(positions) >= len(tokens):  # keep every ctx_idx inside prompt_tokens
        tokens += [f"<pos {i}>" for i in range(len(tokens), max(positions) + 1)]
    n_tok = len(tokens)
    hooks = sorted({d["hook"] for d in data.values() if d["kind"] in ("feature", "error") and d.get("hook")},
                   key=_site_order)
    site = {h: i for i, h in enumerate(hooks)}
    layers = [d["layer"] for d in data.values() if d["kind"] in ("feature", "error") and d.get("layer") is not None]
    outputs = [d["layer"] for d in data.values() if d["kind"] in ("metric", "logit") and d.get("layer") is not None]
    n_layers = int(meta.get("n_layers") or (max(outputs) if outputs else max(layers) + 1 if layers else 0))
    per_layer: dict[int, set] = {}
    for d in data.values():
        if d["kind"] in ("feature", "error") and d.get("layer") is not None:
            per_layer.setdefault(int(d["layer"]), set()).add(d.get("hook"))
    influence = _influence(graph)
    token_ids = meta.get("prompt_token_ids") or []
    ids: dict[str, str] = {}
    nodes: list[dict[str, Any]] = []
    embed_ids: dict[int, str] = {}

    def embed_node(ctx: int, influence_: float | None = None) -> str:
        if ctx not in embed_ids:
            tid = int(token_ids[ctx]) if ctx < len(token_ids) else ctx
            nid = f"E_{tid}_{ctx}"
            embed_ids[ctx] = nid
            nodes.append({"node_id": nid, "feature": ctx, "layer": "E", "ctx_idx": ctx,
                          "feature_type": "embedding", "jsNodeId": f"E_{tid}-{ctx}", "clerp": tokens[ctx],
                          "influence": influence_, "activation": None, "is_target_logit": False,
                          "token_prob": 0.0, "run_idx": 0, "reverse_ctx_idx": 0,
                          "saecircuits_id": f"embed/{ctx}"})
        return embed_ids[ctx]

    for nid, d in data.items():
        kind = d["kind"]
        ctx = _ctx(d.get("pos"), n_tok)
        if kind == "embed":
            ids[nid] = embed_node(ctx, influence.get(nid))
            continue
        extra = {"saecircuits_id": nid, "hook": d.get("hook"), "effect": float(d.get("effect", 0.0)),
                 "pos": d.get("pos") if d.get("pos") is None or isinstance(d.get("pos"), int) else str(d["pos"])}
        if kind in ("metric", "logit"):
            token, prob, token_id = _logit(d, meta)
            layer = str(n_layers + 1)
            node = {"node_id": f"{layer}_{token_id}_{ctx}", "feature": token_id, "layer": layer, "ctx_idx": ctx,
                    "feature_type": "logit", "jsNodeId": f"L_{token_id}-{ctx}",
                    "clerp": f'Output "{token}" (p={prob:.3f})', "token_prob": prob, "is_target_logit": True,
                    "influence": None, "activation": None}
        else:
            layer_i = int(d["layer"]) if d.get("layer") is not None else 0
            layer = str(layer_i)
            shared = len(per_layer.get(layer_i, ())) > 1
            tag = f"_{d.get('hook')}" if shared else ""
            if kind == "feature":
                index = int(d["feature"])
                node = {"node_id": f"{layer}_{index}_{ctx}{tag}", "feature": cantor(site[d["hook"]], index),
                        "jsNodeId": f"{layer}_{index}-0{tag}", "feature_type": "cross layer transcoder",
                        "feature_index": index, "feature_json": feature_url.format(hook=d["hook"], index=index)}
            else:
                node = {"node_id": f"{layer}_-1_{ctx}{tag}", "feature": -1, "jsNodeId": f"{layer}_-1-{ctx}{tag}",
                        "feature_type": "mlp reconstruction error"}
            node.update(layer=layer, ctx_idx=ctx, clerp=clerp(d), influence=influence.get(nid),
                        activation=float(d.get("activation", 0.0)), is_target_logit=False, token_prob=0.0)
            if d.get("explanation") is not None:  # the logit-lens label stays next to it
                node.update(explanation=str(d["explanation"]), label=str(d.get("label") or ""))
                if d.get("explanation_score") is not None:
                    node["explanation_score"] = float(d["explanation_score"])
        node.update(run_idx=0, reverse_ctx_idx=0, **extra)
        if any(n["node_id"] == node["node_id"] for n in nodes):  # e.g. two metric nodes at one position
            node["node_id"] += f"_{len(nodes)}"
            node["jsNodeId"] += f"_{len(nodes)}"
        ids[nid] = node["node_id"]
        nodes.append(node)
    for ctx in range(n_tok):  # the prompt's token embeddings, as circuit-tracer shows them
        embed_node(ctx)
    links = [{"source": ids[u], "target": ids[v], "weight": float(d["weight"])}
             for u, v, d in graph.graph.edges(data=True)]
    metadata = {
        "slug": slug_of(graph), "scan": str(meta.get("model") or "unknown"), "transcoder_list": hooks,
        "prompt_tokens": tokens, "prompt": str(meta.get("prompt") or "".join(tokens)),
        "node_threshold": node_threshold, "schema_version": SCHEMA_VERSION,
        "info": {"generator": {"name": "saecircuits", "version": _version},
                 "method": meta.get("method"), "task": meta.get("task"),
                 "feature_id_scheme": FEATURE_ID_SCHEME,
                 "prompt_tokens_source": "graph" if (meta.get("prompt_tokens") or meta.get("tokens"))
                 else "regex split of the prompt (no tokenizer)"},
        "feature_details": {"url_template": feature_url, "format": "circuit-tracer feature JSON "
                            "(saecircuits dashboards --out DIR writes DIR/features/{hook}_{index}.json)",
                            "sites": hooks},
    }
    pinned = [n["node_id"] for n in nodes if n["feature_type"] in ("cross layer transcoder", "logit")]
    return {"metadata": metadata,
            "qParams": {"pinnedIds": pinned[:64], "supernodes": [], "linkType": "both",
                        "clickedId": "", "sg_pos": ""},
            "nodes": nodes, "links": links}


def graph_metadata(graph: FeatureGraph) -> dict[str, Any]:
    """`graph-metadata.json`: the list circuit-tracer's local server reads to find graphs."""
    meta = graph_json(graph)["metadata"]
    return {"graphs": [{"slug": meta["slug"], "scan": meta["scan"], "prompt": meta["prompt"],
                        "prompt_tokens": meta["prompt_tokens"], "title_prefix": "",
                        "node_threshold": meta["node_threshold"], "info": meta["info"]}]}


def local_tokenizer(model_name: str | None):
    """The tokenizer of `model_name` if it is on this machine (the embedded default model's cache or a
    local / cached HF model), else None; used to fill `prompt_tokens` when exporting a saved graph."""
    if not model_name:
        return None
    try:
        from transformers import AutoTokenizer

        from ..models import DEFAULT_MODEL, _cache_is_complete, cache_dir

        if model_name == DEFAULT_MODEL:
            folder = cache_dir() / "models" / DEFAULT_MODEL
            return AutoTokenizer.from_pretrained(folder) if _cache_is_complete(folder) else None
        return AutoTokenizer.from_pretrained(model_name, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure means "no tokenizer here": fall back to a regex split
        return None
