"""Standard ReLU with an L1 penalty (Towards Monosemanticity / Anthropic April 2024 update).

f = relu(pre). loss = Σ_d (y − ŷ)² (mean over tokens) + λ(t) Σ_i f_i ‖W_dec,i‖, λ warmed up
linearly over the first 5 % of steps; the decoder is not constrained (the penalty is weighted by
its norms), and starts at 0.1 × unit rows with W_enc = W_decᵀ. Dead latents (no firing since the
last check) are resampled every `resample_every` steps in the first half of training: encoder
row = 0.2 · mean alive encoder norm · x/‖x‖ for an input x drawn with probability ∝ its squared
reconstruction loss, decoder row = x/‖x‖, bias 0, and the Adam moments of those rows reset.
"""
from __future__ import annotations

import torch

from .registry import register
from .training import StepInput, StepOutput, TrainingDictionary, fvu

DEFAULT_L1 = 5.0
WARMUP = 0.05


@register
class ReLU(TrainingDictionary):
    name = "relu"
    default_lr = 2e-3
    unit_decoder = False
    data_dependent_updates = True
    foreign = ("standard", "relu", "ReLU", "AutoEncoder")

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def init_parameters(self, seed: int) -> None:
        super().init_parameters(seed)
        with torch.no_grad():
            self.W_dec.mul_(0.1)
            if not self.is_transcoder:
                self.W_enc.copy_(self.W_dec.T)

    def prepare_training(self, total_steps: int, **kw) -> None:
        super().prepare_training(total_steps, **kw)
        self.l1 = self.sparsity if self.sparsity is not None else DEFAULT_L1
        self.resample_every = self.extra.get("resample_every", max(1, total_steps // 8))
        self.register_buffer("fired_window", torch.zeros(self.cfg.d_sae, dtype=torch.bool,
                                                         device=self.device))
        self.rng = torch.Generator().manual_seed(self.seed + 7919)

    def loss(self, batch: StepInput) -> StepOutput:
        x, y = batch.x, batch.y
        f = torch.relu(self.encode_pre(x))
        y_hat = f @ self.W_dec + self.b_dec + self.skip_term(x)
        mse = (y - y_hat).pow(2).sum(-1).mean()
        lam = self.l1 * min(1.0, (batch.step + 1) / max(1, WARMUP * batch.total_steps))
        sparsity = (f * self.W_dec.norm(dim=1)).sum(-1).mean()
        with torch.no_grad():
            active = f > 0
            err = fvu(y, y_hat)
            self._last = (x.detach(), (y - y_hat).pow(2).sum(-1).detach())
        fired = active.any(0).nonzero().squeeze(-1)
        return StepOutput(mse + lam * sparsity, float(err), float(active.sum()) / x.shape[0], fired,
                          {"l1": float(sparsity)})

    def after_step(self, batch: StepInput, out: StepOutput, optimizer: torch.optim.Optimizer) -> None:
        self.fired_window[out.fired] = True
        step = batch.step
        if (step + 1) % self.resample_every or step + 1 > batch.total_steps // 2:
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
        chosen = self.encoder_input(inputs[pick.to(inputs.device)]).detach()
        unit = chosen / chosen.norm(dim=1, keepdim=True).clamp_min(1e-8)
        alive = torch.ones(self.cfg.d_sae, dtype=torch.bool, device=unit.device)
        alive[dead] = False
        enc = self.W_enc.T
        enc_norm = enc[alive].norm(dim=1).mean() if alive.any() else torch.tensor(1.0)
        with torch.no_grad():
            enc[dead] = unit * 0.2 * enc_norm
            if not self.is_transcoder:
                self.W_dec[dead] = unit
            self.b_enc[dead] = 0.0
        for param in (self.W_enc, self.W_dec, self.b_enc):
            state = optimizer.state.get(param, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    (state[key].T if param is self.W_enc else state[key])[dead] = 0.0
