"""One registry of SAE architectures: encode formula, threshold, trainer, foreign names.

    relu       f = relu(pre)
    topk       f = the k largest of pre, ReLU'd (others 0)
    batchtopk  f = pre · (pre > θ)   (trained with a batch-level top-k; θ learnt for inference)
    jumprelu   f = pre · (pre > θ)

`sae.SAE` encodes with `activation`, `trainers.train.make_trainer` builds `trainer`, and
foreign configs (SAELens, dictionary_learning, sparsify) name architectures by `foreign`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import ConfigError


def _relu(pre: torch.Tensor, k: int | None, threshold: torch.Tensor | None) -> torch.Tensor:
    return torch.relu(pre)


def _topk(pre: torch.Tensor, k: int | None, threshold: torch.Tensor | None) -> torch.Tensor:
    values, indices = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))


def _jump(pre: torch.Tensor, k: int | None, threshold: torch.Tensor | None) -> torch.Tensor:
    return pre * (pre > threshold).to(pre.dtype)


@dataclass(frozen=True)
class Architecture:
    """name; activation(pre `[..., d_sae]`, k, threshold `[d_sae]`) -> f; uses_k: needs k;
    has_threshold: stores θ; trainer: "module:Class" under `trainers`; foreign: other names."""

    name: str
    activation: Callable[[torch.Tensor, int | None, torch.Tensor | None], torch.Tensor]
    uses_k: bool
    has_threshold: bool
    trainer: str
    foreign: tuple[str, ...]


REGISTRY: dict[str, Architecture] = {a.name: a for a in (
    Architecture("relu", _relu, False, False, "relu_l1:ReluL1Trainer",
                 ("standard", "relu", "ReLU", "AutoEncoder")),
    Architecture("topk", _topk, True, False, "topk:TopKTrainer", ("topk", "TopK", "AutoEncoderTopK")),
    Architecture("batchtopk", _jump, True, True, "batchtopk:BatchTopKTrainer",
                 ("batchtopk", "BatchTopK", "BatchTopKSAE")),
    Architecture("jumprelu", _jump, False, True, "jumprelu:JumpReLUTrainer",
                 ("jumprelu", "JumpReLU", "JumpReluAutoEncoder")),
)}
NAMES = tuple(REGISTRY)


def get(name: str) -> Architecture:
    """The architecture called `name` (native name, or a foreign one)."""
    if name in REGISTRY:
        return REGISTRY[name]
    for arch in REGISTRY.values():
        if name in arch.foreign:
            return arch
    raise ConfigError(f"unknown SAE architecture {name!r}; expected one of {', '.join(NAMES)}")
