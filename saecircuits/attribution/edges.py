"""Edges: direct effects between kept nodes of successive spliced hooks, and into the metric.

One forward per chunk where every hook writes `decode(f) + err_leaf` (a stop-gradient at each
hook, so only direct paths count). The weight of an edge u -> d is the effect on the metric
carried by that direct path, to first order:

    w(u -> d) = mean over prompts of  Σ  (∂m/∂a_d) · (∂a_d/∂a_u) · Δa_u

with ∂m/∂a_d the clean-point (total) gradient of the downstream node. The gradient seeds of
many downstream nodes go through one backward (`is_grads_batched`), `seed_batch` at a time
(default 8: on CPU 16 and 32 were slower, their `[S, B, T, d_mlp]` intermediates leave the cache).
Edges into the metric use the direct gradient of the metric at each hook.

Both SAE ends of a backward are done in closed form, so the batched backward runs through the
model's layers between two hooks only (the default, `closed_form=True`):

    downstream   the seed starts at the hook's input x `[S, B, T, d]`. With `mask = ∂f/∂pre`
                 (0/1: f > 0 for relu/topk, pre > θ for jumprelu/batchtopk) and
                 `f = act((x − b_dec) W_enc + b_enc)`, `err = x − f W_dec − b_dec`:
                   feature j:  seed_x = g_j · mask_j · W_enc[:, j]
                   error:      seed_x = g_e − ((g_e W_decᵀ) ⊙ mask) W_encᵀ
    upstream     the stream written at a hook is `f W_dec + b_dec + err`, so its gradient is the
                 gradient at the error leaf g_s; a kept feature j gets `g_s · W_dec[j]`,
                 computed for the kept features only (not all d_sae).

Only upstream hooks whose leaves the backward reaches are asked for after the first batch
(a hook that replaces the whole stream, `resid.L`, cuts every earlier path).
`closed_form=False` (and any SAE whose activation is not one of the four above) runs the
reference path: seeds at the SAE's f / err outputs and gradients at the f / err leaves.

`precision="bf16"` (or "auto" where bf16 is measured faster, `saecircuits.precision`) runs the
edge pass's forward and batched backward under bf16 autocast; seeds, masks and the products
with the fp32 deltas stay fp32; on CPU attention then uses the math kernel (`_attention`).
Not exact: check against fp32 (see benchmarks/RESULTS.md).
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from ..progress import bar as progress_bar

from ..errors import ConfigError
from ..precision import PRECISIONS, resolve as resolve_precision
from ..replacement import ReplacementModel
from ..sae import SAE
from .ablation import State, bound
from ..graph import Node



def _matmul_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    return resolve_precision(precision, device).dtype


def _autocast(dtype: torch.dtype | None, device: torch.device):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _attention(math: bool | None, dtype: torch.dtype | None, device: torch.device):
    """Attention kernel of the edge pass. `math=None` (auto): the decomposed math kernel under
    bf16 on CPU, whose backward is ~2.5x faster there than the fused CPU flash kernel's at
    short prompts (benchmarks/RESULTS.md, issue 17); otherwise the model's default kernel."""
    if math is None:
        math = dtype is not None and device.type == "cpu"
    if not math:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


# -- reference path: seeds at f / err, gradients at the f / err leaves ----------------------
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


# -- closed-form path ----------------------------------------------------------------------
def has_closed_form(sae: SAE) -> bool:
    """Whether the closed form applies: an SAE (read = write site, so the stream is
    `f W_dec + b_dec + err` at the hook) whose class defines its Jacobian mask (`active_mask`)."""
    return not sae.is_transcoder


@torch.no_grad()
def _active(sae: SAE, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """`[B, T, d_sae]` bool ∂f/∂pre of the clean point (fp32 even under autocast): the
    architecture's own `active_mask`."""
    autocast_on = torch.is_autocast_enabled(x.device.type)
    if sae.mask_from_output and not autocast_on:
        return sae.active_mask(None, f)       # e.g. relu / topk: 1 exactly where f > 0
    with torch.autocast(x.device.type, enabled=False):
        pre = sae.encode_pre(x.detach())
        return sae.active_mask(pre, sae.activate(pre) if autocast_on else f.detach())


def _leaf_edit(rm: ReplacementModel, store: dict):
    """Features written as constants (so no backward through decode); keep x, the mask, err."""
    def edit(site, f, err):
        x = rm.read(site)
        store[site.name] = (x if x.requires_grad else None, _active(rm.saes[site.name], x, f), err)
        return f.detach(), err

    return edit


def _seeds_at_x(sae: SAE, st: State, hook: str, mask: torch.Tensor, targets: Sequence[Node],
                dtype: torch.dtype) -> torch.Tensor:
    """`[S, B, T, d]` seeds at the hook's input x equal to seeding f / err (module doc)."""
    g_f, g_e = st.grad_f[hook], st.grad_err[hook]
    w_enc, w_dec = sae.W_enc.detach(), sae.W_dec.detach()
    seeds = torch.zeros((len(targets),) + tuple(g_e.shape), dtype=dtype, device=g_e.device)
    for i, t in enumerate(targets):
        where = slice(None) if t.pos is None else slice(t.pos, t.pos + 1)
        if t.is_error:
            g = g_e[:, where]
            back = ((g.to(sae.dtype) @ w_dec.T) * mask[:, where]) @ w_enc.T
            seeds[i, :, where] = g - back.to(dtype)
        else:
            g = (g_f[:, where, t.feature] * mask[:, where, t.feature]).to(sae.dtype)
            seeds[i, :, where] = (g[..., None] * w_enc[:, t.feature]).to(dtype)
    return seeds


def _leaf_products(g_s: torch.Tensor, st: State, hook: str, sae: SAE, feats: list[int],
                   errs: bool, positional: bool, n: int):
    """From the gradient at a hook's written stream `[S, B, T, d]`: contributions of the kept
    features `[S, P, len(feats)]` (None if none) and of its error `[S, P]` (None if not kept)."""
    ce = _contrib((g_s * st.delta_err[hook]).sum(-1), positional, n) if errs else None
    if not feats:
        return None, ce
    idx = torch.tensor(feats, device=g_s.device)
    gf = (g_s.to(sae.dtype) @ sae.W_dec.detach()[idx].T).to(st.delta_f[hook].dtype)
    return _contrib(gf * st.delta_f[hook][..., idx], positional, n), ce


@bound
def compute_edges(rm: ReplacementModel, states: Sequence[State], hooks: Sequence[str], kept: Sequence[Node],
                  positional: bool = False, seed_batch: int = 8, progress: bool = True,
                  closed_form: bool = True, precision: str = "fp32",
                  math_attention: bool | None = None) -> dict[tuple[Node, Node], float]:
    """Edge weights `{(upstream node, downstream node or Node.metric()): weight}` among `kept`.

    closed_form: seed and read the gradients in closed form at the stream (module doc); False,
        or an SAE without a known encoder Jacobian, takes the reference path.
    precision: "fp32" (default), "bf16" or "auto" (bf16 where the device has fast bf16).
    math_attention: run attention with the decomposed math kernel (None: auto, on under bf16 on
        CPU; see `_attention`).
    """
    if not isinstance(seed_batch, int) or isinstance(seed_batch, bool) or seed_batch < 1:
        raise ConfigError(f"seed_batch must be a positive integer, got {seed_batch!r}")
    dtype = _matmul_dtype(precision, rm.device)
    kept = [Node.coerce(nd) for nd in kept]
    fast = closed_form and all(has_closed_form(rm.saes[h]) for h in hooks)
    run = _edges_closed if fast else _edges_reference
    with _attention(math_attention, dtype, rm.device):
        edges = run(rm, states, list(hooks), kept, positional, seed_batch, progress, dtype)
    kept_set = set(kept)
    return {k: v for k, v in edges.items() if k[0] in kept_set}


class _Adder:
    """Accumulates `[S, P(, K)]` contributions into `edges` for the kept upstream nodes."""

    def __init__(self, by_hook: dict[str, list[Node]], feats: dict[str, list[int]] | None):
        self.by_hook, self.edges = by_hook, {}
        self.col = None if feats is None else {h: {f: i for i, f in enumerate(fs)} for h, fs in feats.items()}

    def add(self, up_hook: str, contrib_f, contrib_e, targets: list):
        for u in self.by_hook[up_hook]:
            p = 0 if u.pos is None else u.pos
            src = contrib_e if u.is_error else contrib_f
            if src is None:
                continue
            if u.is_error:
                vals = src[:, p]
            else:
                vals = src[:, p, u.feature if self.col is None else self.col[up_hook][u.feature]]
            for tgt, v in zip(targets, vals.tolist()):
                if v != 0.0:
                    self.edges[(u, tgt)] = self.edges.get((u, tgt), 0.0) + v


def _setup(states, hooks, kept, seed_batch, progress):
    by_hook = {h: [nd for nd in kept if nd.hook == h] for h in hooks}
    n = sum(len(s.chunk.task) for s in states)
    # per chunk: the metric's backward, then one batched backward per seed batch of each hook
    steps = len(states) * (1 + sum(_batches(by_hook[h], seed_batch) for h in hooks[1:]))
    bar = progress_bar(steps, "edges", unit="backward", enabled=progress)
    return by_hook, n, bar


def _batches(targets: list, seed_batch: int) -> int:
    return -(-len(targets) // seed_batch)


def _edges_closed(rm, states, hooks, kept, positional, seed_batch, progress, dtype) -> dict:
    order = {h: i for i, h in enumerate(hooks)}
    by_hook, n, bar = _setup(states, hooks, kept, seed_batch, progress)
    feats = {h: sorted({nd.feature for nd in by_hook[h] if not nd.is_error}) for h in hooks}
    errs = {h: any(nd.is_error for nd in by_hook[h]) for h in hooks}
    acc = _Adder(by_hook, feats)
    sae = rm.saes
    try:
        for st in states:
            store: dict = {}
            with _autocast(dtype, rm.device):
                logits, _ = rm.run(st.chunk.clean, edit=_leaf_edit(rm, store), grad=True, last=True)
                metric = st.chunk.task.metric(logits).float()
            grads = torch.autograd.grad(metric.sum(), [store[h][2] for h in hooks], retain_graph=True,
                                        allow_unused=True)
            for h, g in zip(hooks, grads):
                if g is not None:
                    acc.add(h, *_leaf_products(g.unsqueeze(0), st, h, sae[h], feats[h], errs[h],
                                               positional, n), [Node.metric()])
            bar.update(1)
            for d_hook in hooks[1:]:
                targets_all = by_hook[d_hook]
                ups = [h for h in hooks if order[h] < order[d_hook] and by_hook[h]]
                x, mask = store[d_hook][0], store[d_hook][1]
                if not targets_all or not ups or x is None:
                    bar.update(_batches(targets_all, seed_batch))  # skipped: nothing reaches it
                    continue
                for s in range(0, len(targets_all), seed_batch):
                    tg = targets_all[s:s + seed_batch]
                    seeds = _seeds_at_x(sae[d_hook], st, d_hook, mask, tg, x.dtype)
                    g = torch.autograd.grad([x], [store[h][2] for h in ups], grad_outputs=[seeds],
                                            retain_graph=True, allow_unused=True, is_grads_batched=True)
                    for h, gh in zip(ups, g):
                        if gh is not None:
                            acc.add(h, *_leaf_products(gh.float(), st, h, sae[h], feats[h], errs[h],
                                                       positional, n), tg)
                    ups = [h for h, gh in zip(ups, g) if gh is not None]  # a hook with no gradient stays unreached
                    bar.update(1)
                    if not ups:
                        bar.update(-(-(len(targets_all) - s - len(tg)) // seed_batch))
                        break
            del store
    finally:
        bar.close()
    return acc.edges


def _edges_reference(rm, states, hooks, kept, positional, seed_batch, progress, dtype) -> dict:
    order = {h: i for i, h in enumerate(hooks)}
    by_hook, n, bar = _setup(states, hooks, kept, seed_batch, progress)
    acc = _Adder(by_hook, None)
    try:
        for st in states:
            store: dict = {}
            with _autocast(dtype, rm.device):
                logits, _ = rm.run(st.chunk.clean, edit=_direct_edit(rm, store), grad=True, last=True)
                metric = st.chunk.task.metric(logits).float()
            leaves = [t for h in hooks for t in (store[h][2], store[h][3])]
            grads = torch.autograd.grad(metric.sum(), leaves, retain_graph=True, allow_unused=True)
            for i, h in enumerate(hooks):
                gf, ge = grads[2 * i], grads[2 * i + 1]
                acc.add(h, *_products(None if gf is None else gf.unsqueeze(0),
                                      None if ge is None else ge.unsqueeze(0), st, h, positional, n),
                        [Node.metric()])
            bar.update(1)
            for d_hook in hooks[1:]:
                targets_all = by_hook[d_hook]
                ups = [h for h in hooks if order[h] < order[d_hook] and by_hook[h]]
                if not targets_all or not ups:
                    bar.update(_batches(targets_all, seed_batch))  # skipped: nothing reaches it
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
                        acc.add(h, *_products(g[2 * i], g[2 * i + 1], st, h, positional, n), tg)
                    bar.update(1)
    finally:
        bar.close()
    return acc.edges
