"""Splice SAEs into an nnsight trace: x  ->  decode(encode(x)) + error, error detached.

With the exact error term the forward pass is unchanged (design invariant 1), while the
features become live tensors that can be read, edited and differentiated:

    rm = ReplacementModel(model, saes)
    logits, acts = rm.run(inputs, grad=True)
    metric(logits).backward()        # acts["resid.10"].features.grad: [batch, pos, d_sae]

Nothing is attached to the model: the SAEs run inside the trace's own intervention code,
so an exception anywhere leaves the model as it was (invariant 5).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from .errors import ConfigError
from .hooks import HookPoint
from .replacement import ReplacementModel, Spliced, plan  # noqa: F401 (plan: re-exported)
from .dictionaries import Dictionary as SAE

__all__ = ["Spliced", "plan", "splice", "encode_inputs", "spliced_logits"]

EditFn = Callable[[str, torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor] | None"]


def splice(model, saes: Mapping[str, SAE], *, edit: EditFn | None = None,
           track_grad: bool = False, rm: ReplacementModel | None = None) -> dict[str, Spliced]:
    """Inside `model.trace(...)`: splice every SAE at its hook point, in forward order.

    A thin wrapper kept for scripts; bound code uses `ReplacementModel.splice`, whose edits
    receive the resolved `HookPoint` instead of its name.

    Args:
        saes: hook name -> SAE.
        edit: optional `edit(hook_name, features, error) -> (features, error) | None`, called
            at each hook point before decoding; return new tensors to intervene.
        track_grad: make the features differentiable (they keep their graph to upstream
            hook points and `retain_grad()`; the error terms become leaves that require grad).
        rm: a `ReplacementModel(model, saes)` made once (saves re-resolving in loops).
    Returns:
        hook name -> Spliced, already `nnsight.save`d so it survives the trace block.
        Access modules downstream of the last hook point only after this call.
    """
    if rm is None:
        plan(model, saes)           # the checks, with their errors, before anything is attached
        rm = ReplacementModel(model, saes, place=False)
    by_site = None if edit is None else (lambda hp, f, e: edit(hp.name, f, e))
    return rm.splice(by_site, track_grad)


def encode_inputs(tokenizer, prompts: Sequence[str] | str) -> dict[str, torch.Tensor]:
    """Tokenize a non-empty list of prompts (left padding) to `input_ids`/`attention_mask`."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ConfigError("prompts must be a non-empty list of non-empty strings")
    return dict(tokenizer(list(prompts), return_tensors="pt", padding=True))


def spliced_logits(model, saes: Mapping[str, SAE] | None, inputs) -> torch.Tensor:
    """Logits `[batch, pos, vocab]` of one forward with `saes` spliced (None: bare model)."""
    rm = model if isinstance(model, ReplacementModel) else ReplacementModel(model, saes)
    return rm.run(inputs, splice=bool(saes))[0]
