"""TopK SAE (Gao et al. 2024): k largest ReLU'd pre-activations, FVU loss + aux-k (α = 1/32).

The step (`saecircuits.dictionaries.kernels.topk_aux_loss`) computes all pre-activations once
with one dense GEMM and takes both the top k and aux-k's top k_aux (dead latents) from them;
the pre-activation gradient has at most k + k_aux non-zeros per row, so the decoder's forward
and backward and the encoder's backward are sparse products over the selected rows.
"""
from __future__ import annotations

import torch

from saecircuits.dictionaries.kernels import SelectedPreActivations as _SelectedPreActivations
from saecircuits.dictionaries.kernels import sparse_topk, topk_aux_loss

from .base import Trainer

AUX_ALPHA = 1 / 32
__all__ = ["AUX_ALPHA", "TopKTrainer", "sparse_topk", "topk_aux_loss", "_SelectedPreActivations"]


class TopKTrainer(Trainer):
    architecture = "topk"
    default_lr = 2e-3
    # Matmul dtype of the step (`trainers.precision`; train_saes sets it from TrainConfig.precision):
    # bf16 runs the selecting GEMM and aux-k's dense products in bf16 (`kernels.topk_aux_loss`).
    compute_dtype: torch.dtype | None = torch.bfloat16

    def loss(self, x: torch.Tensor, step: int):
        k_aux = self.spec.extra.get("k_aux", max(1, self.spec.d_in // 2))
        fvu, aux, vals, idx = topk_aux_loss(x, self.enc, self.dec, self.b_enc, self.b_dec, self.spec.k,
                                            k_aux, self.dead_mask(), self.compute_dtype)
        fired = torch.unique(idx[vals > 0])
        l0 = float((vals > 0).sum()) / x.shape[0]
        return fvu + AUX_ALPHA * aux, {"fvu": fvu.item(), "aux": aux.item(), "l0": l0}, fired
