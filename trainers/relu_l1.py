"""Standard ReLU SAE with an L1 penalty (Towards Monosemanticity / Anthropic April 2024 update).

loss = Σ_d (x − x̂)² (mean over tokens) + λ(t) Σ_i f_i ‖W_dec,i‖, λ warmed up linearly over
the first 5% of steps; the decoder is not constrained (the penalty is weighted by its norms).
Dead latents (no firing since the last check) are resampled every `resample_every` steps in
the first half of training: encoder row = 0.2 · mean alive encoder norm · x/‖x‖ for an input x
drawn with probability ∝ its squared reconstruction loss, decoder row = x/‖x‖, bias 0, and
the Adam moments of those rows reset.
"""
from __future__ import annotations

import torch

from .base import Trainer

DEFAULT_L1 = 5.0
WARMUP = 0.05


class ReluL1Trainer(Trainer):
    data_dependent_updates = True
    architecture = "relu"
    default_lr = 2e-3
    unit_decoder = False

    def __init__(self, spec, total_steps, seed=0, dead_tokens=1_000_000, device="cpu"):
        super().__init__(spec, total_steps, seed=seed, dead_tokens=dead_tokens, device=device)
        with torch.no_grad():
            self.dec.mul_(0.1)
            self.enc.copy_(self.dec)
        self.l1 = spec.l1 if spec.l1 is not None else DEFAULT_L1
        self.resample_every = spec.extra.get("resample_every", max(1, total_steps // 8))
        self.register_buffer("fired_window", torch.zeros(spec.d_sae, dtype=torch.bool, device=device))
        self.rng = torch.Generator().manual_seed(seed + 7919)

    def loss(self, x: torch.Tensor, step: int):
        pre = (x - self.b_dec) @ self.enc.T + self.b_enc
        f = torch.relu(pre)
        x_hat = f @ self.dec + self.b_dec
        mse = (x - x_hat).pow(2).sum(-1).mean()
        lam = self.l1 * min(1.0, (step + 1) / max(1, WARMUP * self.total_steps))
        sparsity = (f * self.dec.norm(dim=1)).sum(-1).mean()
        with torch.no_grad():
            active = f > 0
            fvu = self.fvu(x, x_hat)
            self._last = (x.detach(), (x - x_hat).pow(2).sum(-1).detach())
        fired = active.any(0).nonzero().squeeze(-1)
        return mse + lam * sparsity, {"fvu": float(fvu), "l1": float(sparsity),
                                      "l0": float(active.sum()) / x.shape[0]}, fired

    def after_step(self, x: torch.Tensor, step: int) -> None:
        self.fired_window[self.since_fired == 0] = True
        if (step + 1) % self.resample_every or step + 1 > self.total_steps // 2:
            return
        dead = (~self.fired_window).nonzero().squeeze(-1)
        self.fired_window.zero_()
        if dead.numel() == 0:
            return
        inputs, losses = self._last
        weights = losses.pow(2).cpu().double()
        if weights.sum() <= 0:
            return
        pick = torch.multinomial(weights, dead.numel(), replacement=True, generator=self.rng)
        chosen = inputs[pick.to(inputs.device)] - self.b_dec.detach()
        unit = chosen / chosen.norm(dim=1, keepdim=True).clamp_min(1e-8)
        alive = torch.ones(self.spec.d_sae, dtype=torch.bool, device=unit.device)
        alive[dead] = False
        enc_norm = self.enc[alive].norm(dim=1).mean() if alive.any() else torch.tensor(1.0)
        with torch.no_grad():
            self.enc[dead] = unit * 0.2 * enc_norm
            self.dec[dead] = unit
            self.b_enc[dead] = 0.0
        for param in (self.enc, self.dec, self.b_enc):
            state = self.optimizer().state.get(param, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][dead] = 0.0
        self.since_fired[dead] = 0
