"""Shared machinery: encoded task chunks, ablation targets and the edits used by attribution.

A *state* holds, for one chunk of prompts, the clean SAE values at every spliced hook
(`f [B, T, d_sae]`, `err [B, T, d_in]`), the metric gradients at the clean point (true model
gradients: every hook passes gradients straight through, `d out / d x = I`), and the
deltas `target − clean` for the chosen ablation (zero at padding positions):

    patch     target = the patch prompt's values
    zero      target = 0
    mean      target = per-position mean over the clean prompts (`dataset_means`)
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
from ..replacement import ReplacementModel, bind
from ..sae import SAE
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


def to_device(inputs: Mapping[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in inputs.items()}


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


@bound
def dataset_means(rm: ReplacementModel, all_chunks: list[Chunk]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """hook -> (mean f `[T, d_sae]`, mean err `[T, d_in]`): per position (column of the padded
    batch), the mean over the clean prompts that have a real, non-first token there
    (feature-circuits' mean ablation keeps positions); other columns take the overall mean."""
    sums: dict = {}
    count = None
    for ch in all_chunks:
        vals = values(rm, ch.clean)
        m = ch.ablatable.to(next(iter(vals.values()))[0].device).unsqueeze(-1).float()
        count = m.sum(0) if count is None else count + m.sum(0)
        for h, (f, e) in vals.items():
            sf, se = sums.get(h, (0.0, 0.0))
            sums[h] = (sf + (f * m).sum(0), se + (e * m).sum(0))
    out = {}
    for h, (sf, se) in sums.items():
        means = []
        for total in (sf, se):
            overall = total.sum(0) / count.sum()
            means.append(torch.where(count > 0, total / count.clamp(min=1), overall))
        out[h] = (means[0], means[1])
    return out


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
        raw = {h: (means[h][0].expand_as(f), means[h][1].expand_as(e))
               for h, (f, e) in clean_vals.items()}
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
