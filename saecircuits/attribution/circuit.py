"""`trace_circuit`: task -> node attribution -> pruning -> edges -> `FeatureGraph` + summary."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..errors import ConfigError, GraphError, ShapeError, TaskError
from ..replacement import logit_lens
from ..wrapping import model_name_of
from ..replacement import ReplacementModel, bind
from ..sae import SAE
from ..tasks import Task, make_task
from . import ablation as ab
from .edges import compute_edges
from .evaluate import Evaluator
from ..graph import FeatureGraph, Node
from .nodes import NodeScores, node_scores
from .prune import prune_edges, prune_nodes, remove_dangling
from .stream import LazyStates


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
    chunk_tokens: int = 512
    eval_ablation: str = "mean"
    seed: int = 0
    edges: bool = True
    progress: bool = True


def feature_labels(rm: ReplacementModel, tok, nodes, top: int = 3) -> dict[Node, str]:
    """Short labels: the tokens each feature's decoder row promotes most (the model's one
    logit lens, final norm applied: the same tokens as the feature's dashboard)."""
    out = {node: f"{node.hook} SAE error" for node in nodes if node.is_error}
    feats = [node for node in nodes if not node.is_error]
    for start in range(0, len(feats), 256):
        group = feats[start:start + 256]
        rows = torch.stack([rm.saes[nd.hook].W_dec[nd.feature].detach().cpu() for nd in group])
        top_ids = logit_lens(rm.model, rows).topk(top, dim=-1).indices
        for node, ids in zip(group, top_ids.tolist()):
            out[node] = "↑ " + " ".join(repr(tok.decode([i])) for i in ids)
    return out


def build_graph(rm: ReplacementModel, tok, scores: NodeScores, nodes, edges: dict, meta: dict,
                labels: bool = True) -> FeatureGraph:
    """A FeatureGraph with `nodes`, the metric node and `edges` (labels: logit-lens tokens)."""
    graph = FeatureGraph(meta=meta)
    labels = feature_labels(rm, tok, nodes) if labels else {}
    n_layers = rm.hf.config.num_hidden_layers
    for node in nodes:
        graph.add_node(node.id, kind=node.kind, hook=node.hook,
                       layer=rm.sites[node.hook].layer, pos=node.pos, feature=node.feature,
                       activation=scores.activation(node), effect=scores.effect(node),
                       label=labels.get(node, ""))
    graph.add_node("metric", kind="metric", layer=n_layers, effect=meta.get("metric_clean", 0.0),
                   label=meta.get("metric", "metric"))
    for (u, v), w in edges.items():
        if v.id in graph and u.id in graph:
            graph.add_edge(u.id, v.id, w)
    return graph


def graph_nodes(graph: FeatureGraph) -> list[Node]:
    """The feature and error `Node`s of a graph."""
    out = []
    for _, d in graph.graph.nodes(data=True):
        if d["kind"] == "feature":
            out.append(Node.feat(d["hook"], d["pos"], d["feature"]))
        elif d["kind"] == "error":
            out.append(Node.error(d["hook"], d["pos"]))
    return out


def check_saes(model, saes: Mapping[str, SAE] | None = None) -> ReplacementModel:
    """The bound model, after a ConfigError if an SAE was trained on another model (name or
    width mismatch)."""
    if not isinstance(model, ReplacementModel) and (not isinstance(saes, Mapping) or not saes):
        raise ConfigError("tracing needs a non-empty SAE set")
    name = model.name if isinstance(model, ReplacementModel) else model_name_of(model)
    for hook, sae in (model.saes if isinstance(model, ReplacementModel) else saes).items():
        trained = sae.cfg.model_name
        if trained and name and trained.rstrip("/").split("/")[-1] != name.rstrip("/").split("/")[-1]:
            raise ConfigError(f"the SAE at {hook!r} was trained on {trained!r}, not on {name!r}")
    try:
        rm = bind(model, saes)
    except ShapeError as err:
        raise ConfigError(str(err)) from err
    if not rm.saes:
        raise ConfigError("tracing needs a non-empty SAE set")
    for hook, sae in rm.saes.items():
        width = rm.sites[hook].width
        if sae.cfg.d_in != width:
            raise ConfigError(f"the SAE at {hook!r} has d_in={sae.cfg.d_in} but {name!r} has "
                              f"width {width} there")
    return rm


def trace_config(cfg: TraceConfig | None = None, **overrides) -> TraceConfig:
    """`cfg` (default `TraceConfig()`) with `overrides` applied; an unknown name is a ConfigError."""
    if cfg is not None and not isinstance(cfg, TraceConfig):
        raise ConfigError(f"cfg must be a TraceConfig, got {type(cfg).__name__}")
    fields = {f.name for f in dataclasses.fields(TraceConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"unknown trace option(s) {unknown}; valid: {sorted(fields)}")
    cfg = dataclasses.replace(cfg or TraceConfig(), **overrides)
    if cfg.top_k is None and cfg.node_threshold is None and cfg.influence is None:
        cfg = dataclasses.replace(cfg, top_k=100)
    return cfg


def chunk_rows(cfg: TraceConfig, length: int) -> int:
    """Prompts per chunk: `batch_size`, lowered so a chunk holds at most `chunk_tokens` padded
    tokens (never below one prompt). Every prompt is padded to the task's longest, `length`."""
    for name in ("batch_size", "chunk_tokens"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return max(1, min(cfg.batch_size, cfg.chunk_tokens // max(1, length)))


def trace_circuit(model, tok, saes: Mapping[str, SAE] | None, task: Task | str,
                  cfg: TraceConfig | None = None, **overrides) -> tuple[FeatureGraph, dict]:
    """Trace a feature circuit for a contrastive task.

    Args:
        model: a `ReplacementModel` (then `saes` may be None) or an nnsight model.
        task: a Task, a built-in name (`ioi`, `parens`, `sva`) or a JSONL path (first `n` rows).
        cfg: a `TraceConfig` (default: its defaults; pruning default top_k=100).
        overrides: `TraceConfig` fields overriding `cfg` (method, ablation, n, top_k,
            node_threshold, influence, edge_influence, positional, steps, batch_size,
            chunk_tokens, eval_ablation, seed, edges, progress); an unknown name is a
            ConfigError. A chunk holds at most `batch_size` prompts and `chunk_tokens` padded
            tokens (at least one prompt); memory is bounded by one chunk, not by `n`.
    Returns:
        (graph, summary): the pruned FeatureGraph (feature/error nodes, `metric`, edges) and a
        dict with metric values, accuracy, faithfulness/completeness, node and edge counts.
    """
    cfg = trace_config(cfg, **overrides)
    rm = check_saes(model, saes)
    if isinstance(task, str):
        task = make_task(tok, task, n=cfg.n, seed=cfg.seed)
    elif isinstance(task, Task):
        task = task.take(slice(0, cfg.n))
    else:
        raise TaskError(f"task must be a Task, a built-in name or a .jsonl path, got {task!r}")
    ab.check_ablation(cfg.ablation, task)
    from ..limits import check_tokens  # before any allocation sized by the prompts

    lengths = [len(ids) for ids in tok(list(task.clean))["input_ids"]]  # as encode_inputs does
    check_tokens(rm.model, max(lengths), f"task {task.name!r}'s longest prompt")
    if min(lengths) < 2:  # its one position is the attention sink, which is never attributed
        short = task.clean[lengths.index(min(lengths))]
        raise TaskError(f"task {task.name!r}: prompt {short!r} is {min(lengths)} token(s); a circuit "
                        "needs at least 2 (the first token is the attention sink, never attributed)")
    hooks = rm.hooks
    chunks = ab.chunks(tok, task, chunk_rows(cfg, max(lengths)))
    means = ab.dataset_means(rm, chunks) if "mean" in (cfg.ablation, cfg.eval_ablation) else None
    # streamed: each pass recomputes one chunk's state at a time and reduces it to running
    # sums (memory: one chunk, not the task; see attribution/stream.py)
    states = LazyStates(rm, chunks, cfg.ablation, means, cfg.seed)
    scores = node_scores(rm, states, hooks, cfg.method, cfg.positional, cfg.steps,
                         progress=cfg.progress)
    candidates = [nd for nd in scores.nodes() if scores.effect(nd) != 0.0 or nd.is_error]
    meta = {"model": rm.name, "task": task.name, "method": cfg.method,
            "ablation": cfg.ablation, "n": len(task), "hooks": hooks, "positional": cfg.positional,
            "metric": f"{task.name} {task.metric_kind}",
            "metric_clean": scores.metric_clean, "prompt": task.clean[0]}
    full = build_graph(rm, tok, scores, candidates, {}, meta, labels=False)
    pruned = prune_nodes(full, cfg.node_threshold, cfg.top_k, cfg.influence)
    kept = graph_nodes(pruned)
    edges = (compute_edges(rm, states, hooks, kept, cfg.positional, progress=cfg.progress)
             if cfg.edges else {})
    graph = build_graph(rm, tok, scores, kept, edges, meta)
    if cfg.edges:
        graph = remove_dangling(prune_edges(graph, cfg.edge_influence))
    final = graph_nodes(graph)
    if not final:
        raise GraphError(f"pruning left an empty circuit: none of the {len(kept)} kept nodes has a "
                         f"path to the metric through edges reaching {cfg.edge_influence} of the "
                         "total |weight|; keep more nodes or raise the edge influence")
    ev = Evaluator(rm, None, states, cfg.eval_ablation, means, cfg.seed)
    summary = {
        **{k: meta[k] for k in ("model", "task", "method", "ablation", "n", "hooks", "positional")},
        "metric_clean": scores.metric_clean,
        "accuracy_clean": float(torch.cat([(s.metric > 0).float() for s in states]).mean()),
        "metric_all_ablated": ev.f_empty, "eval_ablation": cfg.eval_ablation,
        "faithfulness": ev.faithfulness(final), "completeness": ev.completeness(final),
        "feature_nodes": sum(1 for nd in final if not nd.is_error),
        "error_nodes": sum(1 for nd in final if nd.is_error),
        "edges": graph.graph.number_of_edges(), "candidate_nodes": len(candidates),
        "pruning": {"top_k": cfg.top_k, "node_threshold": cfg.node_threshold,
                    "influence": cfg.influence, "edge_influence": cfg.edge_influence},
    }
    graph.meta.update(faithfulness=summary["faithfulness"], completeness=summary["completeness"])
    return graph, summary
