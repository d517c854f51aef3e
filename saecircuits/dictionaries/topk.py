"""TopK (Gao et al. 2024): f = the k largest pre-activations, ReLU'd (others 0).

Training: FVU + α·aux-k (α = 1/32). For an SAE the loss is one fused kernel
(`kernels.topk_aux_loss`): one dense GEMM whose pre-activations give both the top k and aux-k's
top k_aux of the dead latents; the pre-activation gradient has at most k + k_aux non-zeros per
row, so the decoder's forward and backward and the encoder's weight gradient are sparse products.
A transcoder (other target, skip term) selects with `kernels.sparse_topk` and decodes with an
`embedding_bag` over the selected rows.
"""
from __future__ import annotations

import torch
from torch import nn

from .kernels import aux_k_loss, aux_k_loss_lowp, sparse_topk, topk_aux_loss
from .registry import register
from .training import StepInput, StepOutput, TrainingDictionary, fvu

AUX_ALPHA = 1 / 32


def topk_activation(pre: torch.Tensor, k: int) -> torch.Tensor:
    """`[..., d_sae]`: the k largest entries of `pre`, ReLU'd; zeros elsewhere."""
    values, indices = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))


def aux_k(dic: TrainingDictionary, batch: StepInput, x_c: torch.Tensor, residual: torch.Tensor):
    """The aux-k term of a batch (fp32, or the step's low precision)."""
    enc = dic.W_enc.T
    if batch.compute_dtype is None:
        return aux_k_loss(enc, dic.W_dec, dic.b_enc, batch.dead, x_c, residual, dic.k_aux)
    return aux_k_loss_lowp(enc, dic.W_dec, dic.b_enc, batch.dead, x_c, residual, dic.k_aux,
                           batch.compute_dtype)


@register
class TopK(TrainingDictionary):
    name = "topk"
    uses_k = True
    foreign = ("topk", "TopK", "AutoEncoderTopK")

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return topk_activation(pre, self.cfg.k)

    def loss(self, batch: StepInput) -> StepOutput:
        x, y = batch.x, batch.y
        if not self.is_transcoder and self.W_skip is None:
            err, aux, vals, idx = topk_aux_loss(x, self.W_enc.T, self.W_dec, self.b_enc, self.b_dec,
                                                self.cfg.k, self.k_aux, batch.dead, batch.compute_dtype)
            fired = torch.unique(idx[vals > 0])
            l0 = float((vals > 0).sum()) / x.shape[0]
            return StepOutput(err + AUX_ALPHA * aux, err.item(), l0, fired, {"aux": aux.item()})
        x_c = self.encoder_input(x)
        vals, idx = sparse_topk(self.W_enc.T, self.b_enc, x_c, self.cfg.k, batch.compute_dtype)
        y_hat = nn.functional.embedding_bag(idx, self.W_dec, per_sample_weights=vals, mode="sum") \
            + self.b_dec + self.skip_term(x)
        err = fvu(y, y_hat)
        aux = aux_k(self, batch, x_c, y - y_hat)
        fired = torch.unique(idx[vals > 0])
        l0 = float((vals > 0).sum()) / x.shape[0]
        return StepOutput(err + AUX_ALPHA * aux, err.item(), l0, fired, {"aux": aux.item()})
