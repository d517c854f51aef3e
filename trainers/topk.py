"""TopK SAE (Gao et al. 2024): k largest ReLU'd pre-activations, FVU loss + aux-k (α = 1/32).

The step computes all pre-activations once without a graph, picks the top k, then recomputes
only the k selected pre-activations with a graph (gathering k encoder rows per token) and
decodes with `embedding_bag` over the k selected decoder rows: the backward touches
O(batch·k·d_in) weights instead of O(batch·d_sae·d_in) (sparsify's trick).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Trainer

AUX_ALPHA = 1 / 32


def sparse_topk(enc: torch.Tensor, b_enc: torch.Tensor, x_c: torch.Tensor, k: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [B, k] with grad, indices [B, k]) of the k largest pre-activations, ReLU'd."""
    with torch.no_grad():
        idx = (x_c @ enc.T + b_enc).topk(k, dim=-1).indices
    rows = nn.functional.embedding(idx, enc)                       # [B, k, d_in]
    pre = torch.bmm(rows, x_c.unsqueeze(-1)).squeeze(-1) + b_enc[idx]
    return torch.relu(pre), idx


class TopKTrainer(Trainer):
    architecture = "topk"
    default_lr = 2e-3

    def loss(self, x: torch.Tensor, step: int):
        k = self.spec.k
        x_c = x - self.b_dec
        vals, idx = sparse_topk(self.enc, self.b_enc, x_c, k)
        x_hat = nn.functional.embedding_bag(idx, self.dec, per_sample_weights=vals, mode="sum") + self.b_dec
        fvu = self.fvu(x, x_hat)
        k_aux = self.spec.extra.get("k_aux", max(1, self.spec.d_in // 2))
        aux = self.aux_k_loss(x_c, x - x_hat, k_aux)
        fired = torch.unique(idx[vals > 0])
        l0 = float((vals > 0).sum()) / x.shape[0]
        return fvu + AUX_ALPHA * aux, {"fvu": fvu.item(), "aux": aux.item(), "l0": l0}, fired
