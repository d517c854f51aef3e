"""Run a model's forward from a residual-stream value at block L onward (evaluation helper).

`logits_from_block(model, ids, layer, resid)` returns the logits the HF model computes when
the output of decoder block `layer` is replaced by `resid` — without recomputing blocks
0..layer: their `forward` is swapped, for this one call, for a pass-through (blocks < layer)
and for "return `resid`" (block `layer`). Everything after (later blocks with the model's own
masks and rotary embeddings, final norm, LM head) is the model's own code, so this works for
any architecture whose blocks run in sequence on the hidden state (all HF decoder-only LMs).
The blocks' own `forward` attributes (nnsight's wrappers included) are restored in a `finally`.
"""
from __future__ import annotations

import contextlib

import torch

from saecircuits.hooks import _layout
from saecircuits.models import unwrap


def block_output_is_tuple(model) -> bool:
    """Whether the model's decoder blocks return a tuple (older HF) rather than a tensor."""
    hf = unwrap(model)
    block = hf.get_submodule(_layout(hf).layers)[0]
    seen = {}

    def hook(module, args, output):
        seen["tuple"] = isinstance(output, tuple)

    handle = block.register_forward_hook(hook)
    try:
        with torch.no_grad():
            hf(input_ids=torch.zeros(1, 2, dtype=torch.long, device=next(hf.parameters()).device))
    finally:
        handle.remove()
    return seen["tuple"]


@contextlib.contextmanager
def block_output_replaced(model, layer: int, resid: torch.Tensor, as_tuple: bool = False):
    """Within the block, decoder blocks 0..layer-1 pass their input through and block `layer`
    returns `resid` (`[B, T, d]`, the query positions of the call), so a call of the HF model
    runs only the blocks after `layer` on `resid`. The blocks' `forward` attributes are restored."""
    hf = unwrap(model)
    blocks = hf.get_submodule(_layout(hf).layers)

    def passthrough(hidden_states, *args, **kwargs):
        return (hidden_states,) if as_tuple else hidden_states

    def inject(hidden_states, *args, **kwargs):
        out = resid.to(hidden_states.dtype)
        return (out,) if as_tuple else out

    patched = list(blocks)[: layer + 1]
    saved = [block.__dict__.get("forward") for block in patched]  # nnsight may wrap `forward` here
    try:
        for i, block in enumerate(patched):
            block.forward = inject if i == layer else passthrough
        yield hf
    finally:
        for block, old in zip(patched, saved):
            if old is None:
                block.__dict__.pop("forward", None)
            else:
                block.forward = old


@torch.no_grad()
def logits_from_block(model, ids: torch.Tensor, layer: int, resid: torch.Tensor,
                      as_tuple: bool = False) -> torch.Tensor:
    """Logits `[B, T, vocab]` with block `layer`'s output set to `resid` `[B, T, d]` (ids `[B, T]`)."""
    with block_output_replaced(model, layer, resid, as_tuple) as hf:
        out = hf(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    return out.logits
