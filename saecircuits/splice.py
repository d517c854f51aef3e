"""Splice SAEs into an nnsight trace: x  ->  decode(encode(x)) + error, error detached.

With the exact error term the forward pass is unchanged (design invariant 1), while the
features become live tensors that can be read, edited and differentiated:

    with model.trace(prompts):
        acts = splice(model, saes, track_grad=True)
        logits = model.lm_head.output.save()
    metric(logits).backward()        # acts["resid.10"].features.grad: [batch, pos, d_sae]

Nothing is attached to the model: the SAEs run inside the trace's own intervention code,
so an exception anywhere leaves the model as it was (invariant 5).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import nnsight
import torch

from . import hooks
from .errors import ConfigError, ShapeError
from .hooks import HookPoint
from .sae import SAE

EditFn = Callable[[str, torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor] | None"]


@dataclass
class Spliced:
    """What one spliced hook point exposes.

    features: `[batch, pos, d_sae]` SAE activations as used downstream (after any edit).
    error: `[batch, pos, d_in]` x − x̂ of the *unedited* run, detached (a leaf).
    hook: the resolved hook point.
    """

    hook: HookPoint
    features: torch.Tensor
    error: torch.Tensor


def plan(model, saes: Mapping[str, SAE]) -> list[HookPoint]:
    """Resolve the SAEs' hook points in forward order and check widths and devices."""
    if not isinstance(saes, Mapping) or not saes:
        raise ConfigError("splice needs at least one SAE (a non-empty SAESet or dict)")
    points = hooks.sort_by_forward_order(model, list(saes))
    for hp in points:
        sae = saes[hp.name]
        if not isinstance(sae, SAE):
            raise ConfigError(f"value for hook {hp.name!r} is {type(sae).__name__}, not an SAE")
        if sae.cfg.d_in != hp.width:
            raise ShapeError(f"SAE at {hp.name!r} has d_in={sae.cfg.d_in} but the hook point "
                             f"has width {hp.width}")
    return points


def splice(model, saes: Mapping[str, SAE], *, edit: EditFn | None = None,
           track_grad: bool = False, points: Sequence[HookPoint] | None = None) -> dict[str, Spliced]:
    """Inside `model.trace(...)`: splice every SAE at its hook point, in forward order.

    Args:
        saes: hook name -> SAE.
        edit: optional `edit(hook, features, error) -> (features, error) | None`, called at
            each hook point before decoding; return new tensors to intervene.
        track_grad: make the features differentiable (they keep their graph to upstream
            hook points and `retain_grad()`; the error terms become leaves that require grad).
        points: precomputed `plan(model, saes)` (saves re-resolving in loops).
    Returns:
        hook name -> Spliced, already `nnsight.save`d so it survives the trace block.
        Access modules downstream of the last hook point only after this call.
    """
    points = plan(model, saes) if points is None else points
    out: dict[str, Spliced] = {}
    for hp in points:
        sae = saes[hp.name]
        x = hooks.read(model, hp)
        if track_grad and not x.requires_grad:
            x = x.detach().requires_grad_(True)
        features = sae.encode(x)
        x_hat = sae.decode(features, dtype=x.dtype)
        error = (x - x_hat).detach()
        # x̂ + error can differ from x in the last bit; the (exact, Sterbenz) residual of
        # that sum makes an unedited splice return x bit for bit.
        rounding = (x.detach() - (x_hat.detach() + error)).detach()
        if track_grad:
            error.requires_grad_(True)
        if edit is not None:
            edited = edit(hp.name, features, error)
            if edited is not None:
                features, error = edited
                x_hat = sae.decode(features, dtype=x.dtype)
        if track_grad and features.requires_grad:
            features.retain_grad()
        hooks.write(model, hp, x_hat + error + rounding)
        out[hp.name] = Spliced(hook=hp, features=features, error=error)
    return nnsight.save(out)


def encode_inputs(tokenizer, prompts: Sequence[str] | str) -> dict[str, torch.Tensor]:
    """Tokenize a non-empty list of prompts (left padding) to `input_ids`/`attention_mask`."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ConfigError("prompts must be a non-empty list of non-empty strings")
    return dict(tokenizer(list(prompts), return_tensors="pt", padding=True))


def spliced_logits(model, saes: Mapping[str, SAE] | None, inputs) -> torch.Tensor:
    """Logits `[batch, pos, vocab]` of one forward with `saes` spliced (None: bare model)."""
    with torch.no_grad(), model.trace(inputs):
        if saes:
            splice(model, saes)
        logits = model.lm_head.output.save()
    return logits
