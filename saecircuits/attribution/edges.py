"""Edges: direct effects between kept nodes of successive spliced hooks, and into the metric.

One forward per chunk where every hook writes `decode(f_leaf) + err_leaf` (a stop-gradient at
each hook, so only direct paths count) while keeping the *connected* values
`f = encode(x)`, `err = x − decode(f)` for the backward seeds. The weight of an edge
u -> d is the effect on the metric carried by that direct path, to first order:

    w(u -> d) = mean over prompts of  Σ  (∂m/∂a_d) · (∂a_d/∂a_u) · Δa_u

with ∂m/∂a_d the clean-point (total) gradient of the downstream node. The gradient seeds of
many downstream nodes go through one backward (`is_grads_batched`), `seed_batch` at a time.
Edges into the metric use the direct gradient of the metric at each hook.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..replacement import ReplacementModel
from .ablation import State, bound
from ..graph import Node


def _direct_edit(rm: ReplacementModel, store: dict):
    def edit(site, f, err):
        x = rm.read(site)
        fl = f.detach().requires_grad_(True)
        err_conn = x - rm.saes[site.name].decode(f, dtype=x.dtype) if x.requires_grad else None
        store[site.name] = (f, err_conn, fl, err)
        return fl, err

    return edit


def _seed(st: State, node: Node, which: str) -> torch.Tensor:
    """Seed `[B, T, d]` for a downstream node: its clean-point gradient at its position(s)."""
    g = st.grad_err[node.hook] if which == "err" else st.grad_f[node.hook]
    seed = torch.zeros_like(g)
    where = slice(None) if node.pos is None else node.pos
    if which == "err":
        seed[:, where] = g[:, where]
    else:
        seed[:, where, node.feature] = g[:, where, node.feature]
    return seed


def _contrib(prod: torch.Tensor, positional: bool, n: int) -> torch.Tensor:
    """`[S, B, T, ...]` gradient × delta -> `[S, P, ...]` summed over prompts (and positions)."""
    c = prod.sum(1)
    return (c if positional else c.sum(1, keepdim=True)) / n


def _products(gf, ge, st: State, hook: str, positional: bool, n: int):
    """Feature `[S, P, d_sae]` and error `[S, P]` contributions (None where no gradient)."""
    cf = None if gf is None else _contrib(gf * st.delta_f[hook], positional, n)
    ce = None if ge is None else _contrib((ge * st.delta_err[hook]).sum(-1), positional, n)
    return cf, ce


@bound
def compute_edges(rm: ReplacementModel, states: Sequence[State], hooks: Sequence[str], kept: Sequence[Node],
                  positional: bool = False, seed_batch: int = 16,
                  progress: bool = True) -> dict[tuple[Node, Node], float]:
    """Edge weights `{(upstream node, downstream node or Node.metric()): weight}` among `kept`."""
    order = {h: i for i, h in enumerate(hooks)}
    kept = [Node.coerce(nd) for nd in kept]
    kept_set = set(kept)
    by_hook: dict[str, list[Node]] = {h: [nd for nd in kept if nd.hook == h] for h in hooks}
    n = sum(len(s.chunk.task) for s in states)
    edges: dict[tuple, float] = {}

    def add(up_hook: str, contrib_f, contrib_e, targets: list):
        for u in by_hook[up_hook]:
            p = 0 if u.pos is None else u.pos
            src = contrib_e if u.is_error else contrib_f
            if src is None:
                continue
            vals = src[:, p] if u.is_error else src[:, p, u.feature]
            for tgt, v in zip(targets, vals.tolist()):
                if v != 0.0:
                    edges[(u, tgt)] = edges.get((u, tgt), 0.0) + v

    downstream = [nd for nd in kept if order[nd.hook] > 0]
    steps = len(states) * (1 + -(-len(downstream) // seed_batch))
    bar = tqdm(total=steps, desc="edges", disable=not progress, leave=False)
    try:
        for st in states:
            store: dict = {}
            logits, _ = rm.run(st.chunk.clean, edit=_direct_edit(rm, store), grad=True, last=True)
            metric = st.chunk.task.metric(logits)
            leaves = [t for h in hooks for t in (store[h][2], store[h][3])]
            grads = torch.autograd.grad(metric.sum(), leaves, retain_graph=True, allow_unused=True)
            for i, h in enumerate(hooks):
                gf, ge = grads[2 * i], grads[2 * i + 1]
                add(h, *_products(None if gf is None else gf.unsqueeze(0),
                                  None if ge is None else ge.unsqueeze(0), st, h, positional, n),
                    [Node.metric()])
            bar.update(1)
            for d_hook in hooks[1:]:
                targets_all = by_hook[d_hook]
                ups = [h for h in hooks if order[h] < order[d_hook] and by_hook[h]]
                if not targets_all or not ups:
                    continue
                f_conn, err_conn = store[d_hook][0], store[d_hook][1]
                for s in range(0, len(targets_all), seed_batch):
                    tg = targets_all[s:s + seed_batch]
                    sf = torch.stack([_seed(st, t, "f") if not t.is_error else
                                      torch.zeros_like(st.grad_f[d_hook]) for t in tg])
                    se = torch.stack([_seed(st, t, "err") if t.is_error else
                                      torch.zeros_like(st.grad_err[d_hook]) for t in tg])
                    inputs = [t for h in ups for t in (store[h][2], store[h][3])]
                    outs, seeds = [f_conn], [sf]
                    if err_conn is not None:
                        outs.append(err_conn)
                        seeds.append(se)
                    g = torch.autograd.grad(outs, inputs, grad_outputs=seeds, retain_graph=True,
                                            allow_unused=True, is_grads_batched=True)
                    for i, h in enumerate(ups):
                        add(h, *_products(g[2 * i], g[2 * i + 1], st, h, positional, n), tg)
                    bar.update(1)
    finally:
        bar.close()
    return {k: v for k, v in edges.items() if k[0] in kept_set}
