"""Shared machinery: encoded task chunks, ablation targets and the edits used by attribution.

A *state* holds, for one chunk of prompts, the clean SAE values at every spliced hook
(`f [B, T, d_sae]`, `err [B, T, d_in]`), the metric gradients at the clean point (true model
gradients: every hook passes gradients straight through, `d out / d x = I`), and the
deltas `target − clean` for the chosen ablation (zero at padding positions):

    patch     target = the patch prompt's values
    zero      target = 0
    mean      target = per-position mean over the clean prompts of the same token length
              (`dataset_means`: prompts of one length share one template, so each position is
              one token role; positions are counted from the prompt's own first token)
    resample  target = the clean values of another prompt of the chunk (seeded permutation)

Each prompt's first token (the attention sink, never seen by the SAEs in training) keeps its
clean values under every ablation (`Chunk.ablatable`).
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..errors import ConfigError, TaskError
from ..progress import track
from ..replacement import ReplacementModel, bind
from ..dictionaries import Dictionary as SAE
from ..splice import encode_inputs
from ..tasks.base import Task

ABLATIONS = ("patch", "zero", "mean", "resample")


def bound(fn):
    """Let `fn(rm, *args)` also be called the old way, `fn(model, saes, *args)`."""

    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        if isinstance(model, ReplacementModel):
            return fn(model, *args, **kwargs)
        if not args:
            raise ConfigError(f"{fn.__name__} needs a ReplacementModel or (model, saes)")
        return fn(bind(model, args[0]), *args[1:], **kwargs)

    return wrapper


@dataclass
class Chunk:
    """Rows `rows` of a task, tokenized to the whole task's padded length T."""

    task: Task
    clean: dict[str, torch.Tensor]
    patch: dict[str, torch.Tensor] | None

    @property
    def valid(self) -> torch.Tensor:
        """`[B, T]` bool: real (non-padding) positions."""
        return self.clean["attention_mask"].bool()

    @property
    def ablatable(self) -> torch.Tensor:
        """`[B, T]` bool: real positions except each prompt's first token.

        The first token is the attention sink (huge residual norm) and lies outside the SAEs'
        training distribution (harvesting skips it), so it is never a node: it keeps its
        clean values under every ablation and gets no attribution.
        """
        valid = self.valid
        first = valid.long().argmax(dim=1)
        out = valid.clone()
        out[torch.arange(valid.shape[0]), first] = False
        return out

    def repeat(self, times: int) -> "Chunk":
        rep = lambda d: None if d is None else {k: v.repeat(times, 1) for k, v in d.items()}
        return Chunk(self.task.take(torch.arange(len(self.task)).repeat(times)), rep(self.clean),
                     rep(self.patch))


@dataclass
class State:
    """Clean values, clean-point gradients and ablation deltas of one chunk (all detached)."""

    chunk: Chunk
    metric: torch.Tensor                      # [B]
    f: dict[str, torch.Tensor]                # [B, T, d_sae]
    err: dict[str, torch.Tensor]              # [B, T, d_in]
    grad_f: dict[str, torch.Tensor]
    grad_err: dict[str, torch.Tensor]
    delta_f: dict[str, torch.Tensor]
    delta_err: dict[str, torch.Tensor]


def check_ablation(ablation: str, task: Task) -> None:
    if ablation not in ABLATIONS:
        raise ConfigError(f"unknown ablation {ablation!r}; expected one of {ABLATIONS}")
    if ablation == "patch" and task.patch is None:
        raise TaskError(f"task {task.name!r} has no patch prompts; use --ablation zero, mean or "
                        "resample")


def chunks(tok, task: Task, batch_size: int) -> list[Chunk]:
    """Tokenize all prompts to one padded length (left padding) and split into chunks."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    clean = encode_inputs(tok, task.clean)
    patch = encode_inputs(tok, task.patch) if task.patch is not None else None
    if patch is not None:
        if patch["input_ids"].shape != clean["input_ids"].shape or not torch.equal(
                patch["attention_mask"], clean["attention_mask"]):
            raise TaskError(f"task {task.name!r}: clean and patch prompts tokenize to different "
                            "lengths")
    out = []
    for s in range(0, len(task), batch_size):
        sl = slice(s, s + batch_size)
        out.append(Chunk(task.take(sl), {k: v[sl] for k, v in clean.items()},
                         None if patch is None else {k: v[sl] for k, v in patch.items()}))
    return out


def token_lengths(tok, prompts) -> list[int]:
    """Token length of each prompt, tokenized as `encode_inputs` does (no model pass)."""
    return [len(ids) for ids in tok(list(prompts))["input_ids"]]


def check_positional(tok, task: Task) -> list[int]:
    """Positional nodes need one token role per position: all prompts of one token length.

    Prompts of one length are left-padded to nothing, so position p is the p-th token of every
    prompt (one template slot). Mixed lengths are refused here, before any model pass, naming
    the lengths and how to keep one (`length=` / `--length`). Returns the lengths."""
    lengths = token_lengths(tok, task.clean)
    counts: dict[int, int] = {}
    for L in lengths:
        counts[L] = counts.get(L, 0) + 1
    if len(counts) > 1:
        listing = ", ".join(f"{L} tokens: {c}" for L, c in sorted(counts.items()))
        raise TaskError(f"task {task.name!r}: positional nodes need prompts of one token length "
                        f"(one position = one token role), but the prompts have {listing}; keep "
                        f"one length (--length {max(counts, key=counts.get)} or --length common) or "
                        "trace without --positional")
    return lengths


def position_tokens(tok, task: Task) -> list[str]:
    """For a one-length task, the token string at each position: the common token, or
    `"most common|…(k)"` where the prompts differ (a slot such as a name)."""
    ids = tok(list(task.clean))["input_ids"]
    out = []
    for p in range(len(ids[0])):
        counts: dict[str, int] = {}
        for row in ids:
            t = tok.decode([row[p]])
            counts[t] = counts.get(t, 0) + 1
        top = max(counts, key=counts.get)
        out.append(top if len(counts) == 1 else f"{top}|…({len(counts)})")
    return out


# -- edits -------------------------------------------------------------------------------
def grad_edit(rm: ReplacementModel, store: dict, fixed: Mapping[str, tuple] | None = None):
    """Edit making true model gradients reach every hook's feature and error leaves.

    Each hook writes `decode(f_leaf) + err_leaf + (x − x.detach())`: numerically unchanged,
    gradient identity to upstream. Hooks in `fixed` get the given `(f, err)` values as leaves
    (and cut the path from upstream). `store[hook] = (f_leaf, err_leaf)`.
    """
    fixed = fixed or {}

    def edit(site, f, err):
        hook = site.name
        if hook in fixed:
            fl = fixed[hook][0].detach().clone().requires_grad_(True)
            el = fixed[hook][1].detach().clone().requires_grad_(True)
            store[hook] = (fl, el)
            return fl, el
        x = rm.read(site)
        fl = f.detach().requires_grad_(True)
        store[hook] = (fl, err)
        return fl, (err + (x - x.detach()) if x.requires_grad else err)

    return edit


def set_edit(values: Mapping[str, tuple]):
    """Edit replacing `f`, `err` by `where(mask, target, current)`; `values[hook] =
    (mask_f [B,T,d_sae] | None, target_f, mask_err [B,T,1] | None, target_err)`."""

    def edit(site, f, err):
        if site.name not in values:
            return None
        mf, tf, me, te = values[site.name]
        if mf is not None:
            f = torch.where(mf, tf.to(f.dtype), f)
        if me is not None:
            err = torch.where(me, te.to(err.dtype), err)
        return f, err

    return edit


def capture_edit(store: dict):
    def edit(site, f, err):
        store[site.name] = (f.detach(), err.detach())
        return None

    return edit


@bound
def run_metric(rm: ReplacementModel, chunk: Chunk, edit=None, inputs=None) -> torch.Tensor:
    """`[B]` metric of one no-grad forward with the dictionaries spliced and `edit` applied."""
    logits, _ = rm.run(inputs if inputs is not None else chunk.clean, edit=edit, last=True)
    return chunk.task.metric(logits)


def values(rm: ReplacementModel, inputs) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """hook -> (f, err) of a no-grad spliced forward."""
    store: dict = {}
    with torch.no_grad(), rm.model.trace(rm.inputs(inputs)):
        rm.splice(capture_edit(store))
    return dict(store)


def lengths_of(chunk: Chunk) -> list[int]:
    """Token length of each prompt of a chunk (left padding: prompt b fills the last L columns)."""
    return chunk.valid.sum(1).tolist()


@dataclass
class Means:
    """Mean-ablation targets per prompt length: `by_length[L][hook] = (f [L, d_sae], err [L, d_in])`,
    position p of a length-L prompt is the mean of position p over the reference prompts of
    length L (first tokens excluded). `counts[L]`: how many reference prompts had length L."""

    by_length: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]]
    counts: dict[int, int]

    def check_lengths(self, lengths, what: str = "the task") -> None:
        """TaskError naming the lengths of `lengths` that have no mean (before any model pass)."""
        missing = sorted(set(lengths) - set(self.by_length))
        if missing:
            raise TaskError(f"mean ablation: {what} has prompts of {missing} token(s) but the mean "
                            f"reference set only has lengths {sorted(self.by_length)}; means are "
                            "taken per token position, so the reference needs prompts of every "
                            "length traced")


def check_mean_reference(counts: Mapping[int, int], lengths, what: str) -> None:
    """ConfigError when every prompt's mean comes from that prompt alone (F(M) = F(∅))."""
    used = {L: counts.get(L, 0) for L in set(lengths)}
    if used and all(c <= 1 for c in used.values()):
        raise ConfigError(f"mean ablation of {what}: each prompt length {sorted(used)} has a single "
                          "reference prompt, so the mean is the prompt itself and F(M) = F(∅); "
                          "use patch ablation or take means from a reference set (--mean-from "
                          "FILE|task)")


@bound
def dataset_means(rm: ReplacementModel, all_chunks: list[Chunk], progress: bool = True) -> Means:
    """Per-length, per-position means of the clean values of `all_chunks` (see `Means`)."""
    sums: dict[int, dict] = {}
    counts: dict[int, int] = {}
    for ch in track(all_chunks, "mean values", unit="chunk", enabled=progress):
        vals = values(rm, ch.clean)
        T = ch.valid.shape[1]
        for b, L in enumerate(lengths_of(ch)):
            counts[L] = counts.get(L, 0) + 1
            acc = sums.setdefault(L, {})
            for h, (f, e) in vals.items():
                if h in acc:
                    acc[h][0].add_(f[b, T - L:])
                    acc[h][1].add_(e[b, T - L:])
                else:
                    acc[h] = (f[b, T - L:].clone(), e[b, T - L:].clone())
    for L, acc in sums.items():          # in place: no second copy of every length's sums
        for sf, se in acc.values():
            sf.div_(counts[L])
            se.div_(counts[L])
    return Means(sums, counts)


@bound
def targets(rm: ReplacementModel, chunk: Chunk, clean_vals, ablation: str, means=None,
            seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """hook -> (target f, target err) `[B, T, *]` for the ablation (padding and each prompt's
    first token keep clean values)."""
    if ablation == "patch":
        if chunk.patch is None:
            raise TaskError(f"task {chunk.task.name!r} has no patch prompts for patch ablation")
        raw = values(rm, chunk.patch)
    elif ablation == "zero":
        raw = {h: (torch.zeros_like(f), torch.zeros_like(e)) for h, (f, e) in clean_vals.items()}
    elif ablation == "mean":
        if means is None:
            raise ConfigError("mean ablation needs dataset means")
        lengths = lengths_of(chunk)
        means.check_lengths(lengths, f"task {chunk.task.name!r}")
        raw = {}
        for h, (f, e) in clean_vals.items():
            tf, te = f.clone(), e.clone()
            T = f.shape[1]
            for b, L in enumerate(lengths):
                mf, me = means.by_length[L][h]
                tf[b, T - L:] = mf.to(f.device, f.dtype)
                te[b, T - L:] = me.to(e.device, e.dtype)
            raw[h] = (tf, te)
    elif ablation == "resample":
        n = len(chunk.task)
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=gen)
        perm = torch.empty(n, dtype=torch.long)
        perm[order] = order.roll(-1)      # a random cycle: every prompt takes another's values
        raw = {h: (f[perm], e[perm]) for h, (f, e) in clean_vals.items()}
    else:
        raise ConfigError(f"unknown ablation {ablation!r}; expected one of {ABLATIONS}")
    valid = None
    out = {}
    for h, (tf, te) in raw.items():
        f, e = clean_vals[h]
        if valid is None:
            valid = chunk.ablatable.to(f.device).unsqueeze(-1)
        out[h] = (torch.where(valid, tf, f), torch.where(valid, te, e))
    return out


@bound
def prepare(rm: ReplacementModel, all_chunks: list[Chunk], ablation: str, means=None,
            seed: int = 0, progress=None) -> list[State]:
    """Clean forward + backward (true gradients) and ablation deltas for every chunk."""
    states = []
    for i, ch in enumerate(all_chunks):
        store: dict = {}
        logits, _ = rm.run(ch.clean, edit=grad_edit(rm, store), grad=True, last=True)
        metric = ch.task.metric(logits)
        metric.sum().backward()
        clean_vals = {h: (fl.detach(), el.detach()) for h, (fl, el) in store.items()}
        tg = targets(rm, ch, clean_vals, ablation, means, seed + i)
        states.append(State(
            chunk=ch, metric=metric.detach(),
            f={h: v[0] for h, v in clean_vals.items()}, err={h: v[1] for h, v in clean_vals.items()},
            grad_f={h: fl.grad.detach() for h, (fl, _) in store.items()},
            grad_err={h: el.grad.detach() for h, (_, el) in store.items()},
            delta_f={h: tg[h][0] - clean_vals[h][0] for h in store},
            delta_err={h: tg[h][1] - clean_vals[h][1] for h in store}))
        if progress is not None:
            progress.update(1)
    return states


@bound
def ordered_hooks(rm: ReplacementModel) -> list[str]:
    return rm.hooks
