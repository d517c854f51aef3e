"""Small helpers shared by tests."""
from __future__ import annotations

import torch

from saecircuits.models import unwrap

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
               "_forward_hooks_with_kwargs", "_backward_pre_hooks")


def assert_model_clean(model) -> None:
    """No hooks of ours (or anyone's but transformers' own output recorders) on the model."""
    for name, module in unwrap(model).named_modules():
        for attr in _HOOK_DICTS:
            for fn in getattr(module, attr, {}).values():
                if not isinstance(fn, bool):
                    owner = getattr(fn, "__module__", "") or ""
                    assert owner.startswith("transformers"), f"{name or 'model'} has a hook {fn}"


def bare_logits(model, tok, prompts) -> torch.Tensor:
    batch = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return unwrap(model)(**batch).logits
