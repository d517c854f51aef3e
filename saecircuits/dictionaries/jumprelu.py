"""JumpReLU (Gemma Scope): f = pre · H(pre − θ), per-latent θ.

Training learns log θ (a `torch.nn.utils.parametrize` exponential on `threshold`, removed by
`finalize`) through straight-through estimators with a rectangle kernel of width ε
(Rajamanoharan et al. 2024): ∂f/∂θ = −(θ/ε)·K((pre − θ)/ε); the L0 penalty λ·Σ H(pre − θ) has
∂/∂θ = −(1/ε)·K((pre − θ)/ε). loss = Σ_d (y − ŷ)² (mean over tokens) + λ·L0, λ warmed up over
the first 5 % of steps. Decoder rows are kept at unit norm (gradient projected).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from .base import ThresholdGated
from .registry import register
from .training import StepInput, StepOutput, TrainingDictionary, fvu

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


class _Exp(nn.Module):
    """θ = exp(log θ): the trained parameter is log θ."""

    def forward(self, log_theta: torch.Tensor) -> torch.Tensor:
        return log_theta.exp()

    def right_inverse(self, theta: torch.Tensor) -> torch.Tensor:
        return theta.log()


@register
class JumpReLU(ThresholdGated, TrainingDictionary):
    name = "jumprelu"
    has_threshold = True
    default_lr = 1e-3
    foreign = ("jumprelu", "JumpReLU", "JumpReluAutoEncoder")

    def prepare_training(self, total_steps: int, **kw) -> None:
        super().prepare_training(total_steps, **kw)
        with torch.no_grad():
            self.threshold.fill_(INIT_THRESHOLD)
        parametrize.register_parametrization(self, "threshold", _Exp())
        self.l0_coef = self.sparsity if self.sparsity is not None else DEFAULT_L0

    def loss(self, batch: StepInput) -> StepOutput:
        x, y = batch.x, batch.y
        pre = self.encode_pre(x)
        theta = self.threshold
        f = _JumpReLU.apply(pre, theta)
        y_hat = f @ self.W_dec + self.b_dec + self.skip_term(x)
        mse = (y - y_hat).pow(2).sum(-1).mean()
        l0 = _Step.apply(pre, theta).sum(-1).mean()
        warm = min(1.0, (batch.step + 1) / max(1, 0.05 * batch.total_steps))
        with torch.no_grad():
            active = f > 0
            err = fvu(y, y_hat)
        fired = active.any(0).nonzero().squeeze(-1)
        return StepOutput(mse + warm * self.l0_coef * l0, float(err), float(l0), fired)

    def finalize(self) -> None:
        if parametrize.is_parametrized(self, "threshold"):
            parametrize.remove_parametrizations(self, "threshold", leave_parametrized=True)
