"""BatchTopK (Bussmann et al. 2024): keep the k·batch largest activations over the batch.

Inference: f = pre · (pre > θ) with a global threshold θ learnt in training as a running
average of the smallest kept activation per batch (saved per latent; it saves as JumpReLU).
Training loss = FVU + α·aux-k (as TopK).
"""
from __future__ import annotations

import torch

from ..precision import matmuls_in
from .topk import AUX_ALPHA, aux_k
from .base import ThresholdGated
from .registry import register
from .training import StepInput, StepOutput, TrainingDictionary, fvu

THRESHOLD_MOMENTUM = 0.99


@register
class BatchTopK(ThresholdGated, TrainingDictionary):
    name = "batchtopk"
    uses_k = True
    has_threshold = True
    data_dependent_updates = True
    foreign = ("batchtopk", "BatchTopK", "BatchTopKSAE")

    def prepare_training(self, total_steps: int, **kw) -> None:
        super().prepare_training(total_steps, **kw)
        self.register_buffer("running_threshold", torch.full((), -1.0, device=self.device))

    def loss(self, batch: StepInput) -> StepOutput:
        with matmuls_in(batch.compute_dtype, batch.x.device):
            return self._loss(batch)

    def _loss(self, batch: StepInput) -> StepOutput:
        x, y = batch.x, batch.y
        x_c = self.encoder_input(x)
        pre = torch.relu(self.encode_pre(x))                            # [B, d_sae]
        flat = pre.flatten()
        n_keep = min(self.cfg.k * x.shape[0], flat.numel())
        with torch.no_grad():
            kept, kept_idx = flat.topk(n_keep, sorted=False)
            mask = torch.zeros_like(flat, dtype=torch.bool)
            mask[kept_idx] = True
            mask = mask.view_as(pre) & (pre > 0)
            positive = kept[kept > 0]
            if positive.numel():
                low = positive.min()
                if self.running_threshold < 0:
                    self.running_threshold.copy_(low)
                else:
                    self.running_threshold.mul_(THRESHOLD_MOMENTUM).add_((1 - THRESHOLD_MOMENTUM) * low)
        f = pre * mask
        y_hat = f @ self.W_dec + self.b_dec + self.skip_term(x)
        err = fvu(y, y_hat)
        aux = aux_k(self, batch, x_c, y - y_hat)
        fired = mask.any(0).nonzero().squeeze(-1)
        return StepOutput(err + AUX_ALPHA * aux, float(err), float(mask.sum()) / x.shape[0], fired,
                          {"aux": float(aux)})

    @torch.no_grad()
    def finalize(self) -> None:
        self.threshold.fill_(max(float(self.running_threshold), 0.0))
