"""BatchTopK SAE (Bussmann et al. 2024): keep the k·batch largest activations over the batch.

Training loss = FVU + aux-k (as TopK). A global threshold is tracked as a running average of
the smallest kept activation per batch; inference uses `f = pre · (pre > threshold)`, which
the native SAE module does for `batchtopk` (the threshold is saved per latent).
"""
from __future__ import annotations

import torch

from .base import Trainer
from .auxk import aux_k_loss_lowp
from saecircuits.precision import matmuls_in
from .topk import AUX_ALPHA

THRESHOLD_MOMENTUM = 0.99


class BatchTopKTrainer(Trainer):
    data_dependent_updates = True
    architecture = "batchtopk"
    default_lr = 2e-3
    compute_dtype: torch.dtype | None = None  # bf16: encoder/decoder/aux-k matmuls under autocast

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("running_threshold", torch.full((), -1.0, device=self.enc.device))

    def loss(self, x: torch.Tensor, step: int):
        with matmuls_in(self.compute_dtype, x.device):
            return self._loss(x, step)

    def _loss(self, x: torch.Tensor, step: int):
        x_c = x - self.b_dec
        pre = torch.relu(x_c @ self.enc.T + self.b_enc)                 # [B, d_sae]
        flat = pre.flatten()
        n_keep = min(self.spec.k * x.shape[0], flat.numel())
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
        x_hat = f @ self.dec + self.b_dec
        fvu = self.fvu(x, x_hat)
        k_aux = self.spec.extra.get("k_aux", max(1, self.spec.d_in // 2))
        if self.compute_dtype is None:
            aux = self.aux_k_loss(x_c, x - x_hat, k_aux)
        else:
            aux = aux_k_loss_lowp(self.enc, self.dec, self.b_enc, self.dead_mask(), x_c, x - x_hat,
                                  k_aux, self.compute_dtype)
        fired = mask.any(0).nonzero().squeeze(-1)
        return fvu + AUX_ALPHA * aux, {"fvu": float(fvu), "aux": float(aux),
                                       "l0": float(mask.sum()) / x.shape[0]}, fired

    def threshold_value(self) -> torch.Tensor:
        return torch.full((self.spec.d_sae,), max(float(self.running_threshold), 0.0))
