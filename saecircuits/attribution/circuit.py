"""`trace_circuit`: task -> node attribution -> pruning -> edges -> `FeatureGraph` + summary."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..errors import ConfigError, GraphError, ShapeError, TaskError
from ..precision import resolve as resolve_precision
from ..progress import track
from ..replacement import logit_lens
from ..wrapping import model_name_of
from ..replacement import ReplacementModel, bind
from ..dictionaries import Dictionary as SAE
from ..tasks import Task, make_task
from . import ablation as ab
from .edges import PRECISIONS as EDGE_PRECISIONS, compute_edges
from .evaluate import Evaluator, error_share, trace_warnings
from ..graph import FeatureGraph, Node
from .nodes import NodeScores, node_scores
from ..configs import TraceConfig  # noqa: F401 (re-exported: attribution.TraceConfig)
from .prune import prune_edges, remove_dangling, select_nonempty
from .stream import LazyStates


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
    """A FeatureGraph with `nodes`, the metric node and `edges` (labels: logit-lens tokens;
    positional nodes get a `token` attribute from `meta["position_tokens"]` when present)."""
    graph = FeatureGraph(meta=meta)
    labels = feature_labels(rm, tok, nodes) if labels else {}
    n_layers = rm.hf.config.num_hidden_layers
    tokens = meta.get("position_tokens") or []
    for node in nodes:
        extra = ({"token": tokens[node.pos]} if node.pos is not None and node.pos < len(tokens)
                 else {})
        graph.add_node(node.id, kind=node.kind, hook=node.hook,
                       layer=rm.sites[node.hook].layer, pos=node.pos, feature=node.feature,
                       activation=scores.activation(node), effect=scores.effect(node),
                       label=labels.get(node, ""), **extra)
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
    if cfg.edge_precision not in EDGE_PRECISIONS:
        raise ConfigError(f"unknown edge_precision {cfg.edge_precision!r}; expected one of "
                          f"{', '.join(EDGE_PRECISIONS)}")
    return cfg


def load_task(tok, task: Task | str, n: int, seed: int, length: int | None = None) -> Task:
    """The task's first `n` prompts (a built-in name or .jsonl path is loaded), optionally only
    those of `length` tokens (`"common"`: the most frequent length; TaskError when none has it)."""
    if isinstance(task, str):
        task = make_task(tok, task, n=n, seed=seed)
    elif isinstance(task, Task):
        task = task.take(slice(0, n))
    else:
        raise TaskError(f"task must be a Task, a built-in name or a .jsonl path, got {task!r}")
    if length is not None:
        lengths = ab.token_lengths(tok, task.clean)
        if length == "common":
            length = max(sorted(set(lengths)), key=lengths.count)
        if isinstance(length, bool) or not isinstance(length, int) or length < 2:
            raise ConfigError(f"length must be an integer >= 2 or 'common', got {length!r}")
        keep = [i for i, L in enumerate(lengths) if L == length]
        if not keep:
            raise TaskError(f"task {task.name!r} has no prompt of {length} tokens (lengths: "
                            f"{sorted(set(lengths))})")
        task = task.take(keep)
    return task


@dataclass
class Plan:
    """Everything `trace_circuit` checks before its first model pass."""

    task: Task
    lengths: list[int]
    eval_ablation: str
    evaluations: list[str]        # ablations the summary evaluates under (patch, mean)
    mean_ref: Task | None         # reference prompts of the mean ablation (None: no mean)
    mean_note: str | None         # why mean evaluation is left out, if it is
    prompt_tokens: list[str]


def plan_trace(rm: ReplacementModel, tok, task: Task | str, cfg: TraceConfig) -> Plan:
    """Load the task and run every check that can fail before any model pass: option values,
    prompt lengths, positional alignment, mean reference set and degenerate mean baselines."""
    from ..limits import check_tokens

    task = load_task(tok, task, cfg.n, cfg.seed, cfg.length)
    ab.check_ablation(cfg.ablation, task)
    eval_ablation = cfg.eval_ablation or ("patch" if task.patch is not None else "mean")
    ab.check_ablation(eval_ablation, task)
    if not isinstance(cfg.mean_n, int) or cfg.mean_n < 1:
        raise ConfigError(f"mean_n must be a positive integer, got {cfg.mean_n!r}")
    lengths = ab.token_lengths(tok, task.clean)  # as encode_inputs does
    check_tokens(rm.model, max(lengths), f"task {task.name!r}'s longest prompt")
    if min(lengths) < 2:  # its one position is the attention sink, which is never attributed
        short = task.clean[lengths.index(min(lengths))]
        raise TaskError(f"task {task.name!r}: prompt {short!r} is {min(lengths)} token(s); a circuit "
                        "needs at least 2 (the first token is the attention sink, never attributed)")
    tokens: list[str] = []
    if cfg.positional:
        ab.check_positional(tok, task)
        tokens = ab.position_tokens(tok, task)
    # the mean reference: the task itself, or `mean_from` (checked for lengths here)
    if cfg.mean_from is not None:
        ref = load_task(tok, cfg.mean_from, cfg.mean_n, cfg.seed + 1)
        what = f"mean reference {ref.name!r}"
    else:
        ref, what = task, f"task {task.name!r}"
    ref_lengths = ab.token_lengths(tok, ref.clean)
    counts: dict[int, int] = {}
    for L in ref_lengths:
        counts[L] = counts.get(L, 0) + 1
    mean_note = None
    try:
        missing = sorted(set(lengths) - set(counts))
        if missing:
            raise TaskError(f"mean ablation: task {task.name!r} has prompts of {missing} token(s) "
                            f"but {what} only has lengths {sorted(counts)}; means are taken per "
                            "token position, so the reference needs prompts of every length traced")
        ab.check_mean_reference(counts, lengths, what)
    except (TaskError, ConfigError) as err:
        if "mean" in (cfg.ablation, eval_ablation):
            raise
        mean_note = str(err)
    evaluations = [a for a in ("patch", "mean")
                   if (a != "patch" or task.patch is not None) and (a != "mean" or mean_note is None)]
    if eval_ablation not in evaluations:
        evaluations.insert(0, eval_ablation)
    need_mean = "mean" in (cfg.ablation, *evaluations)
    return Plan(task, lengths, eval_ablation, evaluations, ref if need_mean else None, mean_note,
                tokens)


def chunk_rows(cfg: TraceConfig, length: int) -> int:
    """Prompts per chunk: `batch_size`, lowered so a chunk holds at most `chunk_tokens` padded
    tokens (never below one prompt). Every prompt is padded to the task's longest, `length`."""
    for name in ("batch_size", "chunk_tokens"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return max(1, min(cfg.batch_size, cfg.chunk_tokens // max(1, length)))


def trace_circuit(model, tok, saes: Mapping[str, SAE] | None, task: Task | str,
                  cfg: TraceConfig | None = None, plan: Plan | None = None,
                  **overrides) -> tuple[FeatureGraph, dict]:
    """Trace a feature circuit for a contrastive task.

    Args:
        model: a `ReplacementModel` (then `saes` may be None) or an nnsight model.
        task: a Task, a built-in name (`ioi`, `parens`, `sva`) or a JSONL path (first `n` rows).
        cfg: a `TraceConfig` (default: its defaults; pruning default top_k=100).
        plan: the `plan_trace(rm, tok, task, cfg)` already made (then `model` must be that
            `ReplacementModel`, `cfg` complete and `task`/`overrides` are not read again).
        overrides: `TraceConfig` fields overriding `cfg` (method, ablation, n, top_k,
            node_threshold, influence, edge_influence, positional, steps, batch_size,
            eval_ablation, mean_from, mean_n, length, chunk_tokens, seed, edges, edge_eval,
            edge_precision, progress); an
            unknown name is a ConfigError.
    Every check that can fail (options, prompt lengths, positional alignment, the mean reference,
    F(M) = F(∅)) runs before node attribution and edges.
    A chunk holds at most `batch_size` prompts and `chunk_tokens` padded tokens (at least one
    prompt); memory is bounded by one chunk, not by `n` (states are streamed, attribution/stream.py).
    Returns:
        (graph, summary): the pruned FeatureGraph (feature/error nodes, `metric`, edges) and a
        dict with metric values, accuracy, faithfulness/completeness under patch and mean
        evaluation, the baseline span, edge faithfulness, node and edge counts and `warnings`.
    """
    if plan is None:
        cfg = trace_config(cfg, **overrides)
        rm = check_saes(model, saes)
        plan = plan_trace(rm, tok, task, cfg)
    elif not isinstance(model, ReplacementModel) or cfg is None or overrides:
        raise ConfigError("trace_circuit(plan=...) needs the ReplacementModel and the complete "
                          "TraceConfig the plan was made with, and no overrides")
    else:
        rm = model
    task = plan.task
    hooks = rm.hooks
    chunks = ab.chunks(tok, task, chunk_rows(cfg, max(plan.lengths)))
    means = None
    if plan.mean_ref is not None:
        ref_chunks = (chunks if plan.mean_ref is task
                      else ab.chunks(tok, plan.mean_ref, chunk_rows(cfg, max(plan.lengths))))
        means = ab.dataset_means(rm, ref_chunks, progress=cfg.progress)
    # streamed: each pass recomputes one chunk's state at a time and reduces it to running
    # sums (memory: one chunk, not the task; see attribution/stream.py)
    states = LazyStates(rm, chunks, cfg.ablation, means, cfg.seed)
    evaluators = {a: Evaluator(rm, None, states, a, means, cfg.seed, progress=cfg.progress)
                  for a in plan.evaluations}
    ev = evaluators[plan.eval_ablation]
    ev.check_span()          # F(M) = F(∅): refuse before the expensive passes
    scores = node_scores(rm, states, hooks, cfg.method, cfg.positional, cfg.steps,
                         progress=cfg.progress)
    candidates = [nd for nd in scores.nodes() if scores.effect(nd) != 0.0 or nd.is_error]
    meta = {"model": rm.name, "task": task.name, "method": cfg.method,
            "ablation": cfg.ablation, "n": len(task), "hooks": hooks, "positional": cfg.positional,
            "metric": f"{task.name} {task.metric_kind}",
            "metric_clean": scores.metric_clean, "prompt": task.clean[0]}
    if plan.prompt_tokens:   # each position's token role (export fills prompt_tokens itself)
        meta["position_tokens"] = plan.prompt_tokens
    keep = select_nonempty({nd.id: scores.effect(nd) for nd in candidates},
                           {nd.id: nd.kind for nd in candidates},
                           cfg.node_threshold, cfg.top_k, cfg.influence)
    kept = [nd for nd in candidates if nd.id in keep]
    edges = (compute_edges(rm, states, hooks, kept, cfg.positional, progress=cfg.progress,
                           precision=cfg.edge_precision)
             if cfg.edges else {})
    graph = build_graph(rm, tok, scores, kept, edges, meta)
    if cfg.edges:
        graph = remove_dangling(prune_edges(graph, cfg.edge_influence))
    final = graph_nodes(graph)
    if not final:
        raise GraphError(f"pruning left an empty circuit: none of the {len(kept)} kept nodes has a "
                         f"path to the metric through edges reaching {cfg.edge_influence} of the "
                         "total |weight|; keep more nodes or raise the edge influence")
    evaluation = {}
    features_only = [nd for nd in final if not nd.is_error]
    for a, e in evaluators.items():
        row = {"metric_all_ablated": e.f_empty, "baseline_span": e.span_ratio()}
        try:
            row.update(faithfulness=e.faithfulness(final), completeness=e.completeness(final),
                       features_alone=e.faithfulness(features_only, desc=f"features alone ({a})")
                       if features_only else None)
        except GraphError as err:
            row.update(faithfulness=None, completeness=None, features_alone=None, error=str(err))
        evaluation[a] = row
    metric_patch = through_sites = None
    if task.patch is not None:   # how much of the clean->patch change runs through the hooked sites
        metric_patch = float(torch.cat([ab.run_metric(rm, st.chunk, inputs=st.chunk.patch)
                                        for st in track(states, "patch-run metric", unit="chunk",
                                                        enabled=cfg.progress)]).mean())
        gap = scores.metric_clean - metric_patch
        ev_patch = evaluators.get("patch")
        if ev_patch is not None and gap:
            through_sites = (scores.metric_clean - ev_patch.f_empty) / gap
    if plan.mean_note is not None:
        evaluation["mean"] = {"faithfulness": None, "completeness": None, "error": plan.mean_note}
    edge_faith = None
    if cfg.edges and cfg.edge_eval:
        kept_edges = {(Node.parse(u), Node.parse(v)) for u, v in graph.edges}
        edge_faith = ev.edge_faithfulness(final, kept_edges)
    accuracy = float(torch.cat([(s.metric > 0).float() for s in states]).mean())
    summary = {
        **{k: meta[k] for k in ("model", "task", "method", "ablation", "n", "hooks", "positional")},
        "metric_clean": scores.metric_clean, "accuracy_clean": accuracy,
        "metric_all_ablated": ev.f_empty, "eval_ablation": plan.eval_ablation,
        "mean_from": (None if cfg.mean_from is None else
                      cfg.mean_from if isinstance(cfg.mean_from, str) else cfg.mean_from.name),
        "faithfulness": evaluation[plan.eval_ablation]["faithfulness"],
        "completeness": evaluation[plan.eval_ablation]["completeness"],
        "features_alone": evaluation[plan.eval_ablation].get("features_alone"),
        "metric_patch": metric_patch, "share_through_sites": through_sites,
        "edge_faithfulness": edge_faith,
        "baseline_span": ev.span_ratio(), "evaluation": evaluation,
        "feature_nodes": sum(1 for nd in final if not nd.is_error),
        "error_nodes": sum(1 for nd in final if nd.is_error),
        "error_share": error_share(scores, final),
        "edges": graph.graph.number_of_edges(), "candidate_nodes": len(candidates),
        "precision": {"nodes": "fp32", "faithfulness": "fp32",
                      "edges": resolve_precision(cfg.edge_precision, rm.device).record()
                      if cfg.edges else None},
        "pruning": {"top_k": cfg.top_k, "node_threshold": cfg.node_threshold,
                    "influence": cfg.influence, "edge_influence": cfg.edge_influence},
    }
    summary["warnings"] = trace_warnings(summary)
    graph.meta.update(faithfulness=summary["faithfulness"], completeness=summary["completeness"],
                      edge_faithfulness=edge_faith, warnings=summary["warnings"])
    return graph, summary
