"""Facts about a (possibly nnsight-wrapped) HF model that every layer needs: the bottom floor.

Nothing in saecircuits is imported here, so `hooks`, `models` and the rest can all use it
without import cycles.
"""
from __future__ import annotations

import torch


def unwrap(model) -> torch.nn.Module:
    """The underlying HF module of an nnsight-wrapped model (or the module itself)."""
    return getattr(model, "_module", model)


def model_name_of(model) -> str:
    """Name the model was loaded under (hub id, path, or the default's name)."""
    hf = unwrap(model)
    return getattr(hf, "saecircuits_name", None) or getattr(hf.config, "name_or_path", "") or "model"


def module_device(model, path: str = "") -> torch.device:
    """Device of the module at `path` (its own parameters, else its nearest parent's, else the
    input embedding's): where a value produced there lives under `device_map="auto"`."""
    hf = unwrap(model)
    parts = path.split(".") if path else []
    while True:
        module = hf.get_submodule(".".join(parts)) if parts else hf
        param = next(module.parameters(), None)
        if param is not None and (parts or module is not hf):
            return param.device
        if not parts:
            break
        parts.pop()
    return hf.get_input_embeddings().weight.device


def model_device(model) -> torch.device:
    """Device the model's inputs go to: that of the input embeddings (right under
    `device_map="auto"`, where the first parameter may live elsewhere)."""
    emb = unwrap(model).get_input_embeddings()
    if emb is not None and getattr(emb, "weight", None) is not None:
        return emb.weight.device
    return next(unwrap(model).parameters()).device


def model_dtype(model) -> torch.dtype:
    return next(unwrap(model).parameters()).dtype
