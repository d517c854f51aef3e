"""Node attribution: the effect on the task metric of moving each SAE feature (and each SAE
error node) from its clean value to its ablation target, averaged over prompts.

    attrib  gradient × delta at the clean point (1 forward + 1 backward per chunk, plus the
            target run)
    ig      integrated gradients: for each hook, the hook's values are set to
            clean + α·delta (midpoint rule, `steps` values of α; later hooks recompute) and the
            mean gradient times delta is the effect; several α share one batched forward
    exact   activation patching: one patched forward per node, many nodes stacked in a batch

Nodes are `saecircuits.graph.Node`s (feature or error kind) with `pos=None` when summed over
positions (`*`); legacy `(hook, pos, feature | "err")` tuples are accepted as input.
Effects are summed over positions when `positional` is
False and averaged over prompts.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from ..progress import bar as progress_bar, track

from ..errors import ConfigError
from ..graph import Node
from ..replacement import ReplacementModel
from .ablation import State, bound, grad_edit, run_metric, set_edit

METHODS = ("attrib", "ig", "exact")


@dataclass
class NodeScores:
    """Per-hook node effects and mean clean activations.

    feature_effect[hook]: `[P, d_sae]` (P = T positions, or 1 when summed); error_effect[hook]: `[P]`.
    feature_act[hook]: `[P, d_sae]` mean clean activation; error_act[hook]: `[P]` mean error norm.
    """

    hooks: list[str]
    positional: bool
    method: str
    feature_effect: dict[str, torch.Tensor]
    error_effect: dict[str, torch.Tensor]
    feature_act: dict[str, torch.Tensor]
    error_act: dict[str, torch.Tensor]
    metric_clean: float
    info: dict = field(default_factory=dict)

    def effect(self, node: Node) -> float:
        return _lookup(self.feature_effect, self.error_effect, node)

    def activation(self, node: Node) -> float:
        return _lookup(self.feature_act, self.error_act, node)

    def nodes(self, min_abs: float = 0.0) -> list[Node]:
        """All nodes with |effect| > min_abs (error nodes always), largest |effect| first."""
        out: list[tuple[float, Node]] = []
        for h in self.hooks:
            fe, ee = self.feature_effect[h], self.error_effect[h]
            for p, i in (fe.abs() > min_abs).nonzero().tolist():
                out.append((abs(float(fe[p, i])), Node.feat(h, p if self.positional else None, i)))
            for p in range(ee.shape[0]):
                out.append((abs(float(ee[p])), Node.error(h, p if self.positional else None)))
        out.sort(key=lambda t: -t[0])
        return [n for _, n in out]

    def total(self, hook: str) -> float:
        """Sum of all node effects at a hook (IG completeness: ≈ metric change of patching it)."""
        return float(self.feature_effect[hook].sum() + self.error_effect[hook].sum())


def _lookup(features: dict, errors: dict, node: Node) -> float:
    node = Node.coerce(node)
    p = 0 if node.pos is None else node.pos
    if node.is_error:
        return float(errors[node.hook][p])
    return float(features[node.hook][p, node.feature])


def _reduce(x: torch.Tensor, positional: bool) -> torch.Tensor:
    """`[B, T, ...]` -> `[P, ...]` summed over prompts (and positions unless positional)."""
    x = x.sum(0)
    return x if positional else x.sum(0, keepdim=True)


def _empty(states: Sequence[State], positional: bool):
    s0 = states[0]
    T = s0.f[next(iter(s0.f))].shape[1]
    P = T if positional else 1
    fe = {h: torch.zeros(P, f.shape[-1], device=f.device) for h, f in s0.f.items()}
    ee = {h: torch.zeros(P, device=f.device) for h, f in s0.f.items()}
    return fe, ee


def _activations(states: Sequence[State], positional: bool, n: int):
    fa, ea = _empty(states, positional)
    for st in states:
        _add_activations(fa, ea, st, positional, n)
    return fa, ea


def _zeros(fe: dict, ee: dict):
    """Fresh zero accumulators shaped like `_empty`'s (no second look at the states)."""
    return {h: torch.zeros_like(v) for h, v in fe.items()}, {h: torch.zeros_like(v) for h, v in ee.items()}


def _add_activations(fa: dict, ea: dict, st: State, positional: bool, n: int) -> None:
    """Add one chunk's share of the mean clean activations (as `_activations` does)."""
    for h in st.f:
        fa[h] += _reduce(st.f[h], positional) / n
        ea[h] += _reduce(st.err[h].norm(dim=-1), positional) / n


def _scores(hooks, states, positional, method, fe, ee, n, acts=None, **info) -> NodeScores:
    """NodeScores from effect sums; `acts = (fa, ea)` when accumulated in the caller's pass
    (else one more pass over `states`)."""
    fa, ea = acts if acts is not None else _activations(states, positional, n)
    clean = float(torch.cat([s.metric for s in states]).mean())
    return NodeScores(hooks=list(hooks), positional=positional, method=method,
                      feature_effect={h: v.cpu() for h, v in fe.items()},
                      error_effect={h: v.cpu() for h, v in ee.items()},
                      feature_act={h: v.cpu() for h, v in fa.items()},
                      error_act={h: v.cpu() for h, v in ea.items()}, metric_clean=clean, info=info)


def attrib_scores(states: Sequence[State], hooks, positional: bool = False,
                  progress: bool = True) -> NodeScores:
    """Attribution patching: gradient × delta at the clean point."""
    n = sum(len(s.chunk.task) for s in states)
    fe, ee = _empty(states, positional)
    fa, ea = _zeros(fe, ee)
    # one pass: each chunk's state is reduced, then freed (lazy states)
    for st in track(states, "attribution patching", unit="chunk", enabled=progress):
        for h in hooks:
            fe[h] += _reduce(st.grad_f[h] * st.delta_f[h], positional) / n
            ee[h] += _reduce((st.grad_err[h] * st.delta_err[h]).sum(-1), positional) / n
        _add_activations(fa, ea, st, positional, n)
    return _scores(hooks, states, positional, "attrib", fe, ee, n, acts=(fa, ea))


@bound
def ig_scores(rm: ReplacementModel, states: Sequence[State], hooks, positional: bool = False,
              steps: int = 10, max_rows: int = 64, progress: bool = True) -> NodeScores:
    """Integrated gradients per hook (later hooks recompute; gradients pass straight through)."""
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"IG steps must be a positive integer, got {steps!r}")
    n = sum(len(s.chunk.task) for s in states)
    fe, ee = _empty(states, positional)
    fa, ea = _zeros(fe, ee)
    alphas = [(k + 0.5) / steps for k in range(steps)]
    device = rm.device
    total = sum(len(hooks) * -(-steps // max(1, max_rows // len(s.chunk.task))) for s in states)
    bar = progress_bar(total, "integrated gradients", enabled=progress)
    try:
        for st in states:
            B = len(st.chunk.task)
            per = max(1, max_rows // B)
            for h in hooks:
                gf = torch.zeros_like(st.f[h])
                ge = torch.zeros_like(st.err[h])
                for a0 in range(0, steps, per):
                    al = torch.tensor(alphas[a0:a0 + per], device=device)
                    k = len(al)
                    rep = st.chunk.repeat(k)
                    a = al.repeat_interleave(B).view(-1, 1, 1)
                    fixed = {h: (st.f[h].repeat(k, 1, 1) + a * st.delta_f[h].repeat(k, 1, 1),
                                 st.err[h].repeat(k, 1, 1) + a * st.delta_err[h].repeat(k, 1, 1))}
                    store: dict = {}
                    logits, _ = rm.run(rep.clean, edit=grad_edit(rm, store, fixed), grad=True,
                                       last=True)
                    rep.task.metric(logits).sum().backward()
                    fl, el = store[h]
                    gf += fl.grad.view(k, B, *fl.shape[1:]).sum(0) / steps
                    ge += el.grad.view(k, B, *el.shape[1:]).sum(0) / steps
                    bar.update(1)
                fe[h] += _reduce(gf * st.delta_f[h], positional) / n
                ee[h] += _reduce((ge * st.delta_err[h]).sum(-1), positional) / n
                del gf, ge
            _add_activations(fa, ea, st, positional, n)
    finally:
        bar.close()
    return _scores(hooks, states, positional, "ig", fe, ee, n, acts=(fa, ea), steps=steps)


def _mask(st: State, hook: str, rows_nodes: Sequence[Node], B: int):
    """Stacked masks `[len(nodes)*B, T, d]` that patch node j in rows j*B..(j+1)*B."""
    f, e = st.f[hook], st.err[hook]
    R = len(rows_nodes) * B
    mf = torch.zeros(R, f.shape[1], f.shape[2], dtype=torch.bool, device=f.device)
    me = torch.zeros(R, e.shape[1], 1, dtype=torch.bool, device=f.device)
    for j, node in enumerate(rows_nodes):
        if node.hook != hook:
            continue
        rows = slice(j * B, (j + 1) * B)
        where = slice(None) if node.pos is None else node.pos
        if node.is_error:
            me[rows, where] = True
        else:
            mf[rows, where, node.feature] = True
    return mf, me


@bound
def exact_effects(rm: ReplacementModel, states: Sequence[State], nodes: Sequence[Node],
                  alpha: float = 1.0, max_rows: int = 64, progress: bool = True,
                  desc: str = "exact patching") -> dict[Node, float]:
    """Exact activation patching of each node (to clean + alpha·delta), mean metric change."""
    nodes = [Node.coerce(nd) for nd in nodes]
    if not nodes:
        return {}
    n = sum(len(s.chunk.task) for s in states)
    out = {node: 0.0 for node in nodes}
    # per chunk: its state (a lazy chunk's forward, backward and targets), then each node group
    total = sum(1 + -(-len(nodes) // max(1, max_rows // len(s.chunk.task))) for s in states)
    bar = progress_bar(total, desc, unit="pass", enabled=progress)
    try:
        for st in states:
            B = len(st.chunk.task)
            per = max(1, max_rows // B)
            st.delta_f  # noqa: B018 - computes a lazy chunk's full state now, as its own step
            bar.update(1)
            for s in range(0, len(nodes), per):
                group = nodes[s:s + per]
                k = len(group)
                rep = st.chunk.repeat(k)
                vals = {}
                for h in {node.hook for node in group}:
                    mf, me = _mask(st, h, group, B)
                    tf = (st.f[h] + alpha * st.delta_f[h]).repeat(k, 1, 1)
                    te = (st.err[h] + alpha * st.delta_err[h]).repeat(k, 1, 1)
                    vals[h] = (mf, tf, me, te)
                m = run_metric(rm, rep, edit=set_edit(vals))
                diff = (m.view(k, B) - st.metric.to(m.device)).sum(1) / n
                for node, d in zip(group, diff.tolist()):
                    out[node] += d
                bar.update(1)
    finally:
        bar.close()
    return out


def error_nodes(scores: NodeScores) -> list[Node]:
    """Every error node of `scores` (one per hook, or per hook and position)."""
    return [Node.error(h, p if scores.positional else None)
            for h in scores.hooks for p in range(scores.error_effect[h].shape[0])]


def with_exact_errors(rm: ReplacementModel, states: Sequence[State], scores: NodeScores,
                      max_rows: int = 64, progress: bool = True) -> NodeScores:
    """`scores` with every error node's effect replaced by exact activation patching.

    Error nodes are few (one per hook and position) and carry the SAEs' unexplained part;
    attribution patching underestimates them several-fold, so they are always patched."""
    errs = error_nodes(scores)
    exact = exact_effects(rm, states, errs, max_rows=max_rows, progress=progress,
                          desc="error nodes (exact patching)")
    ee = {h: v.clone() for h, v in scores.error_effect.items()}
    for node, v in exact.items():
        ee[node.hook][0 if node.pos is None else node.pos] = v
    info = dict(scores.info, error_method="exact")
    return NodeScores(hooks=scores.hooks, positional=scores.positional, method=scores.method,
                      feature_effect=scores.feature_effect, error_effect=ee,
                      feature_act=scores.feature_act, error_act=scores.error_act,
                      metric_clean=scores.metric_clean, info=info)


@bound
def node_scores(rm: ReplacementModel, states: Sequence[State], hooks, method: str = "attrib",
                positional: bool = False, steps: int = 10, max_rows: int = 64,
                exact_candidates: int = 200, progress: bool = True,
                exact_errors: bool = True) -> NodeScores:
    """Node effects by `method` for feature nodes; error nodes are scored by exact patching
    whatever the method (`exact_errors=False`: by `method` too). `exact` patches the
    `exact_candidates` nodes with the largest attribution estimate (all others keep effect 0:
    exact patching of every node is too slow)."""
    if method not in METHODS:
        raise ConfigError(f"unknown attribution method {method!r}; expected one of {METHODS}")
    if method == "attrib":
        out = attrib_scores(states, hooks, positional, progress)
    elif method == "ig":
        out = ig_scores(rm, states, hooks, positional, steps, max_rows, progress)
    else:
        out = _exact_scores(rm, states, hooks, positional, max_rows, exact_candidates, progress)
    return with_exact_errors(rm, states, out, max_rows, progress) if exact_errors else out


def _exact_scores(rm, states, hooks, positional, max_rows, exact_candidates, progress):
    est = attrib_scores(states, hooks, positional, progress)
    cand = est.nodes()[:exact_candidates]
    exact = exact_effects(rm, states, cand, max_rows=max_rows, progress=progress)
    fe = {h: torch.zeros_like(v) for h, v in est.feature_effect.items()}
    ee = {h: torch.zeros_like(v) for h, v in est.error_effect.items()}
    for node, v in exact.items():
        p = 0 if node.pos is None else node.pos
        if node.is_error:
            ee[node.hook][p] = v
        else:
            fe[node.hook][p, node.feature] = v
    return NodeScores(hooks=est.hooks, positional=positional, method="exact", feature_effect=fe,
                      error_effect=ee, feature_act=est.feature_act, error_act=est.error_act,
                      metric_clean=est.metric_clean, info={"exact_candidates": len(cand)})
