"""`trace_circuit`: task -> node attribution -> pruning -> edges -> `FeatureGraph` + summary."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, GraphError, TaskError
from ..hooks import resolve
from ..models import model_name_of, unwrap
from ..sae import SAE
from ..tasks import Task, make_task
from . import ablation as ab
from .edges import compute_edges
from .evaluate import Evaluator
from .graph import FeatureGraph, node_id
from .nodes import Node, NodeScores, node_scores
from .prune import prune_edges, prune_nodes, remove_dangling


@dataclass
class TraceConfig:
    """Options of `trace_circuit` (see its docstring)."""

    method: str = "attrib"
    ablation: str = "patch"
    n: int = 64
    top_k: int | None = None
    node_threshold: float | None = None
    influence: float | None = None
    edge_influence: float = 0.98
    positional: bool = False
    steps: int = 10
    batch_size: int = 32
    eval_ablation: str = "mean"
    seed: int = 0
    edges: bool = True
    progress: bool = True


def nid(node: Node) -> str:
    hook, pos, feat = node
    return node_id(hook, pos, feat)


def feature_labels(model, tok, saes: Mapping[str, SAE], nodes, top: int = 3) -> dict[Node, str]:
    """Short labels: the tokens each feature's decoder row promotes most (logit lens)."""
    unembed = unwrap(model).get_output_embeddings().weight.detach()
    out = {node: f"{node[0]} SAE error" for node in nodes if node[2] == "err"}
    feats = [node for node in nodes if node[2] != "err"]
    for start in range(0, len(feats), 256):
        group = feats[start:start + 256]
        rows = torch.stack([saes[h].W_dec[f].detach() for h, _, f in group])
        top_ids = (rows.to(unembed.device, unembed.dtype) @ unembed.T).topk(top, dim=-1).indices
        for node, ids in zip(group, top_ids.tolist()):
            out[node] = "↑ " + " ".join(repr(tok.decode([i])) for i in ids)
    return out


def build_graph(model, tok, saes, scores: NodeScores, nodes, edges: dict, meta: dict,
                labels: bool = True) -> FeatureGraph:
    """A FeatureGraph with `nodes`, the metric node and `edges` (labels: logit-lens tokens)."""
    graph = FeatureGraph(meta=meta)
    labels = feature_labels(model, tok, saes, nodes) if labels else {}
    n_layers = unwrap(model).config.num_hidden_layers
    for node in nodes:
        hook, pos, feat = node
        graph.add_node(nid(node), kind="error" if feat == "err" else "feature", hook=hook,
                       layer=resolve(model, hook).layer, pos=pos,
                       feature=None if feat == "err" else int(feat),
                       activation=scores.activation(node), effect=scores.effect(node),
                       label=labels.get(node, ""))
    graph.add_node("metric", kind="metric", layer=n_layers, effect=meta.get("metric_clean", 0.0),
                   label=meta.get("metric", "metric"))
    for (u, v), w in edges.items():
        target = "metric" if v == "metric" else nid(v)
        if target in graph and nid(u) in graph:
            graph.add_edge(nid(u), target, w)
    return graph


def graph_nodes(graph: FeatureGraph) -> list[Node]:
    """Node tuples `(hook, pos, feature | "err")` of a graph's feature and error nodes."""
    out = []
    for _, d in graph.graph.nodes(data=True):
        if d["kind"] == "feature":
            out.append((d["hook"], d["pos"], d["feature"]))
        elif d["kind"] == "error":
            out.append((d["hook"], d["pos"], "err"))
    return out


def check_saes(model, saes: Mapping[str, SAE]) -> None:
    """Raise ConfigError when an SAE was trained on another model (name or width mismatch)."""
    if not isinstance(saes, Mapping) or not saes:
        raise ConfigError("tracing needs a non-empty SAE set")
    name = model_name_of(model)
    for hook, sae in saes.items():
        trained = sae.cfg.model_name
        if trained and name and trained.rstrip("/").split("/")[-1] != name.rstrip("/").split("/")[-1]:
            raise ConfigError(f"the SAE at {hook!r} was trained on {trained!r}, not on {name!r}")
        width = resolve(model, hook).width
        if sae.cfg.d_in != width:
            raise ConfigError(f"the SAE at {hook!r} has d_in={sae.cfg.d_in} but {name!r} has "
                              f"width {width} there")


def trace_circuit(model, tok, saes: Mapping[str, SAE], task: Task | str, method: str = "attrib",
                  ablation: str = "patch", n: int = 64, top_k: int | None = None,
                  node_threshold: float | None = None, influence: float | None = None,
                  **options) -> tuple[FeatureGraph, dict]:
    """Trace a feature circuit for a contrastive task.

    Args:
        task: a Task, a built-in name (`ioi`, `parens`, `sva`) or a JSONL path (first `n` rows).
        method: attrib | ig | exact (node effects); ablation: patch | zero | mean | resample.
        top_k / node_threshold / influence: node pruning rule (default: top_k=100).
        options: other `TraceConfig` fields (edge_influence, positional, steps, batch_size,
            eval_ablation, seed, edges, progress).
    Returns:
        (graph, summary): the pruned FeatureGraph (feature/error nodes, `metric`, edges) and a
        dict with metric values, accuracy, faithfulness/completeness, node and edge counts.
    """
    unknown = set(options) - set(TraceConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown trace option(s) {sorted(unknown)}")
    if top_k is None and node_threshold is None and influence is None:
        top_k = 100
    cfg = TraceConfig(method=method, ablation=ablation, n=n, top_k=top_k,
                      node_threshold=node_threshold, influence=influence, **options)
    check_saes(model, saes)
    if isinstance(task, str):
        task = make_task(tok, task, n=cfg.n, seed=cfg.seed)
    elif isinstance(task, Task):
        task = task.take(slice(0, cfg.n))
    else:
        raise TaskError(f"task must be a Task, a built-in name or a .jsonl path, got {task!r}")
    ab.check_ablation(cfg.ablation, task)
    from ..limits import check_tokens  # before any allocation sized by the prompts

    lengths = [len(ids) for ids in tok(list(task.clean))["input_ids"]]  # as encode_inputs does
    check_tokens(model, max(lengths), f"task {task.name!r}'s longest prompt")
    if min(lengths) < 2:  # its one position is the attention sink, which is never attributed
        short = task.clean[lengths.index(min(lengths))]
        raise TaskError(f"task {task.name!r}: prompt {short!r} is {min(lengths)} token(s); a circuit "
                        "needs at least 2 (the first token is the attention sink, never attributed)")
    hooks = ab.ordered_hooks(model, saes)
    chunks = ab.chunks(tok, task, cfg.batch_size)
    bar = tqdm(total=len(chunks), desc="clean/target runs", disable=not cfg.progress, leave=False)
    try:
        means = ab.dataset_means(model, saes, chunks) if "mean" in (cfg.ablation, cfg.eval_ablation) else None
        states = ab.prepare(model, saes, chunks, cfg.ablation, means, cfg.seed, progress=bar)
    finally:
        bar.close()
    scores = node_scores(model, saes, states, hooks, cfg.method, cfg.positional, cfg.steps,
                         progress=cfg.progress)
    candidates = [nd for nd in scores.nodes() if scores.effect(nd) != 0.0 or nd[2] == "err"]
    meta = {"model": model_name_of(model), "task": task.name, "method": cfg.method,
            "ablation": cfg.ablation, "n": len(task), "hooks": hooks, "positional": cfg.positional,
            "metric": f"{task.name} {task.metric_kind}",
            "metric_clean": scores.metric_clean, "prompt": task.clean[0]}
    full = build_graph(model, tok, saes, scores, candidates, {}, meta, labels=False)
    pruned = prune_nodes(full, cfg.node_threshold, cfg.top_k, cfg.influence)
    kept = graph_nodes(pruned)
    edges = (compute_edges(model, saes, states, hooks, kept, cfg.positional, progress=cfg.progress)
             if cfg.edges else {})
    graph = build_graph(model, tok, saes, scores, kept, edges, meta)
    if cfg.edges:
        graph = remove_dangling(prune_edges(graph, cfg.edge_influence))
    final = graph_nodes(graph)
    if not final:
        raise GraphError(f"pruning left an empty circuit: none of the {len(kept)} kept nodes has a "
                         f"path to the metric through edges reaching {cfg.edge_influence} of the "
                         "total |weight|; keep more nodes or raise the edge influence")
    ev = Evaluator(model, saes, states, cfg.eval_ablation, means, cfg.seed)
    summary = {
        **{k: meta[k] for k in ("model", "task", "method", "ablation", "n", "hooks", "positional")},
        "metric_clean": scores.metric_clean,
        "accuracy_clean": float(torch.cat([(s.metric > 0).float() for s in states]).mean()),
        "metric_all_ablated": ev.f_empty, "eval_ablation": cfg.eval_ablation,
        "faithfulness": ev.faithfulness(final), "completeness": ev.completeness(final),
        "feature_nodes": sum(1 for nd in final if nd[2] != "err"),
        "error_nodes": sum(1 for nd in final if nd[2] == "err"),
        "edges": graph.graph.number_of_edges(), "candidate_nodes": len(candidates),
        "pruning": {"top_k": cfg.top_k, "node_threshold": cfg.node_threshold,
                    "influence": cfg.influence, "edge_influence": cfg.edge_influence},
    }
    graph.meta.update(faithfulness=summary["faithfulness"], completeness=summary["completeness"])
    return graph, summary
