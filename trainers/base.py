"""Shared trainer machinery: parameters, Adam, LR schedule, decoder constraint, dead counters.

A trainer owns one SAE's parameters in training layout (`enc` and `dec` both `[d_sae, d_in]`,
rows contiguous so TopK can gather the k selected rows) and trains on activations already
multiplied by the hook point's normalisation scale. `to_sae(scale)` returns a native `SAE`
with that scale folded into the weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from saecircuits.dictionaries import kernels
from saecircuits.sae import SAE, SAEConfig

from . import distributed


@dataclass
class SAESpec:
    """One SAE to train: where, which architecture and how big.

    hook: hook point; d_in: its width; d_sae: latents; k: active latents (topk/batchtopk).
    lr: Adam learning rate (None: the architecture's default scaled by size).
    l1: sparsity coefficient (relu L1, jumprelu L0; None: the architecture's default).
    name: subdirectory name in the output set (default: the hook point).
    """

    hook: str
    architecture: str
    d_in: int
    d_sae: int
    k: int | None = None
    lr: float | None = None
    l1: float | None = None
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name = self.name or self.hook


def _fused_adam_ok(param: torch.Tensor) -> bool:
    """torch's fused Adam runs on CPU (torch ≥ 2.4) and CUDA for floating-point parameters."""
    return param.device.type in ("cpu", "cuda") and param.dtype in (torch.float32, torch.float64,
                                                                     torch.float16, torch.bfloat16)


def lr_factor(step: int, total: int, warmup: float = 0.01, decay: float = 0.2) -> float:
    """Linear warm-up over the first `warmup` of steps, linear decay to 0 over the last `decay`."""
    warm = max(1, int(warmup * total))
    tail = max(1, int(decay * total))
    return min(1.0, (step + 1) / warm, max(0.0, (total - step) / tail))


class Trainer(nn.Module):
    """Base class: subclasses implement `loss(x, step) -> (loss, stats)`."""

    architecture = ""
    default_lr = 2e-3
    unit_decoder = True
    data_dependent_updates = False  # after_step changes weights from the local batch (DDP syncs them)

    def __init__(self, spec: SAESpec, total_steps: int, seed: int = 0,
                 dead_tokens: int = 1_000_000, device: torch.device | str = "cpu"):
        super().__init__()
        self.spec, self.total_steps, self.dead_tokens = spec, total_steps, dead_tokens
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(spec.d_sae, spec.d_in, generator=gen)
        w = w / w.norm(dim=1, keepdim=True)
        self.enc = nn.Parameter(w.clone().to(device))
        self.dec = nn.Parameter(w.clone().to(device))
        self.b_enc = nn.Parameter(torch.zeros(spec.d_sae, device=device))
        self.b_dec = nn.Parameter(torch.zeros(spec.d_in, device=device))
        self.register_buffer("since_fired", torch.zeros(spec.d_sae, dtype=torch.int64, device=device))
        self.register_buffer("fire_count", torch.zeros(spec.d_sae, dtype=torch.int64, device=device))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool, device=device))
        self.lr = spec.lr if spec.lr is not None else self.default_lr / math.sqrt(max(1.0, spec.d_sae / 16384))
        self.optim: torch.optim.Optimizer | None = None
        self.rng: torch.Generator | None = None  # set by trainers that sample (saved in checkpoints)

    # -- optimisation -------------------------------------------------------------------
    def optimizer(self) -> torch.optim.Optimizer:
        if self.optim is None:
            # fused: one pass per parameter, no [d_sae, d_in] temporaries (same update rule)
            self.optim = torch.optim.Adam(self.parameters(), lr=self.lr, betas=(0.9, 0.999),
                                          fused=_fused_adam_ok(self.enc))
        return self.optim

    def init_from_data(self, x: torch.Tensor) -> None:
        """b_dec = data mean (first batch, over all ranks); subclasses may add more."""
        with torch.no_grad():
            mean = x.mean(0)
            distributed.mean_([mean])
            self.b_dec.copy_(mean)
        self.initialised.fill_(True)

    def step(self, x: torch.Tensor, step: int) -> dict[str, float]:
        """One optimisation step on normalised activations `x [batch, d_in]`."""
        if not bool(self.initialised):
            self.init_from_data(x)
        opt = self.optimizer()
        for group in opt.param_groups:
            group["lr"] = self.lr * lr_factor(step, self.total_steps)
        opt.zero_grad(set_to_none=True)
        loss, stats, fired = self.loss(x, step)
        loss.backward()
        if distributed.active():  # DDP: every rank applies the rank-averaged gradient
            distributed.mean_([p.grad for p in self.parameters() if p.grad is not None])
            mask = torch.zeros(self.spec.d_sae, dtype=torch.bool, device=self.enc.device)
            mask[fired] = True
            fired = distributed.any_(mask).nonzero().squeeze(-1)
        if self.unit_decoder:
            self._project_decoder_grad()
        opt.step()
        if self.unit_decoder:
            with torch.no_grad():
                self.dec.div_(self.dec.norm(dim=1, keepdim=True).clamp_min(1e-8))
        self.since_fired += x.shape[0] * distributed.world()[1]
        self.since_fired[fired] = 0
        self.fire_count[fired] += 1
        stats["dead"] = float((self.since_fired >= self.dead_tokens).float().mean())
        self.after_step(x, step)
        if distributed.active() and self.data_dependent_updates:
            distributed.sync_from_main(self, self.optim)
        return stats

    def after_step(self, x: torch.Tensor, step: int) -> None:
        """Hook for resampling and running thresholds."""

    def _project_decoder_grad(self) -> None:
        """Remove each decoder row's gradient component along the row (`g −= (g·w) w`, w = the
        unit row), in place without [d_sae, d_in] temporaries."""
        if self.dec.grad is None:
            return
        with torch.no_grad():
            dec, grad = self.dec, self.dec.grad
            norm = dec.norm(dim=1, keepdim=True).clamp_min(1e-8)                 # [d_sae, 1]
            along = torch.einsum("ij,ij->i", grad, dec).unsqueeze(1) / norm      # g·w
            grad.addcmul_(dec, along / norm, value=-1.0)

    def dead_mask(self) -> torch.Tensor:
        return self.since_fired >= self.dead_tokens

    # -- helpers --------------------------------------------------------------------------
    @staticmethod
    def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """Fraction of variance unexplained of a batch (1 − explained variance)."""
        total = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
        return (x - x_hat).pow(2).sum() / total

    def aux_k_loss(self, x_c: torch.Tensor, residual: torch.Tensor, k_aux: int) -> torch.Tensor:
        """OpenAI aux-k: reconstruct the residual with the top `k_aux` dead latents
        (`saecircuits.dictionaries.kernels.aux_k_loss`, dense autograd)."""
        return kernels.aux_k_loss(self.enc, self.dec, self.b_enc, self.dead_mask(), x_c, residual, k_aux)

    # -- export -----------------------------------------------------------------------------
    def threshold_value(self) -> torch.Tensor | None:
        return None

    def to_sae(self, scale: float, model_name: str = "", metadata: dict | None = None) -> SAE:
        """Native SAE acting on raw activations (normalisation scale folded in), on the
        trainer's device (where the model's activations are: evaluation runs there too)."""
        spec = self.spec
        cfg = SAEConfig(architecture=spec.architecture, d_in=spec.d_in, d_sae=spec.d_sae,
                        k=spec.k if spec.architecture in ("topk", "batchtopk") else None,
                        hook=spec.hook, model_name=model_name, metadata=dict(metadata or {}))
        sae = SAE(cfg, device=self.enc.device)
        with torch.no_grad():
            sae.W_enc.copy_(self.enc.detach().T)
            sae.b_enc.copy_(self.b_enc.detach())
            sae.W_dec.copy_(self.dec.detach())
            sae.b_dec.copy_(self.b_dec.detach())
            threshold = self.threshold_value()
            if threshold is not None:
                sae.threshold.copy_(threshold.detach())
        sae.fold_input_scale(float(scale))
        return sae
