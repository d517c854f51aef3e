"""JumpReLU SAE (Gemma Scope): f = pre · H(pre − θ) with per-latent θ = exp(log θ).

θ learns through straight-through estimators with a rectangle kernel of width ε:
  ∂f/∂θ = −(θ/ε)·K((pre − θ)/ε)·... (Rajamanoharan et al. 2024), L0 penalty λ·Σ H(pre − θ)
with ∂/∂θ = −(1/ε)·K((pre − θ)/ε). loss = Σ_d (x − x̂)² (mean over tokens) + λ·L0.
The decoder rows are kept at unit norm (gradient projected).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Trainer

BANDWIDTH = 0.05
DEFAULT_L0 = 0.5
INIT_THRESHOLD = 0.05


def _rect(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, theta):
        ctx.save_for_backward(pre, theta)
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        d_pre = grad * (pre > theta).to(pre.dtype)
        d_theta = (grad * -(theta / BANDWIDTH) * _rect((pre - theta) / BANDWIDTH)).sum(0)
        return d_pre, d_theta


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, theta):
        ctx.save_for_backward(pre, theta)
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        d_theta = (grad * -(1.0 / BANDWIDTH) * _rect((pre - theta) / BANDWIDTH)).sum(0)
        return torch.zeros_like(pre), d_theta


class JumpReLUTrainer(Trainer):
    architecture = "jumprelu"
    default_lr = 1e-3

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.log_threshold = nn.Parameter(torch.full((self.spec.d_sae,), float(torch.tensor(INIT_THRESHOLD).log()),
                                                     device=self.enc.device))
        self.l0_coef = self.spec.l1 if self.spec.l1 is not None else DEFAULT_L0

    def loss(self, x: torch.Tensor, step: int):
        pre = (x - self.b_dec) @ self.enc.T + self.b_enc
        theta = self.log_threshold.exp()
        f = _JumpReLU.apply(pre, theta)
        x_hat = f @ self.dec + self.b_dec
        mse = (x - x_hat).pow(2).sum(-1).mean()
        l0 = _Step.apply(pre, theta).sum(-1).mean()
        warm = min(1.0, (step + 1) / max(1, 0.05 * self.total_steps))
        with torch.no_grad():
            active = f > 0
            fvu = self.fvu(x, x_hat)
        fired = active.any(0).nonzero().squeeze(-1)
        return mse + warm * self.l0_coef * l0, {"fvu": float(fvu), "l0": float(l0)}, fired

    def threshold_value(self) -> torch.Tensor:
        return self.log_threshold.detach().exp()
