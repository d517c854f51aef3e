"""Aux-k loss (Gao et al. 2024) with its matmuls in a low precision (bf16 training path).

Same loss as `Trainer.aux_k_loss` — reconstruct the detached residual from the top `k_aux`
dead latents, normalised by the residual's variance — but the dead-latent pre-activations
and the reconstruction are bf16 matmuls with fp32 parameters (autocast-style: the weights are
cast per step, gradients land in fp32), the top k_aux is taken unsorted, and the loss itself
is summed in fp32.
"""
from __future__ import annotations

import torch
from torch import nn


def aux_k_loss_lowp(enc: torch.Tensor, dec: torch.Tensor, b_enc: torch.Tensor, dead: torch.Tensor,
                    x_c: torch.Tensor, residual: torch.Tensor, k_aux: int,
                    dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Scalar aux-k loss. enc/dec `[d_sae, d_in]`, b_enc `[d_sae]`, dead bool `[d_sae]`,
    x_c / residual `[B, d_in]` (x − b_dec and x − x̂)."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return x_c.new_zeros(())
    k_aux = min(k_aux, n_dead)
    rows = dead.nonzero().squeeze(-1)
    pre = torch.addmm(b_enc[rows].to(dtype), x_c.to(dtype), enc[rows].to(dtype).T)   # [B, n_dead]
    vals, idx = pre.topk(k_aux, dim=-1, sorted=False)
    acts = torch.relu(vals)
    if 4 * k_aux >= n_dead:  # most dead latents are used: a dense matmul is fastest
        e_hat = torch.zeros_like(pre).scatter(-1, idx, acts) @ dec[rows].to(dtype)
    else:
        e_hat = nn.functional.embedding_bag(idx, dec[rows], per_sample_weights=acts.to(dec.dtype),
                                            mode="sum")
    target = residual.detach()
    total = (target - target.mean(0)).pow(2).sum().clamp_min(1e-12)
    return (target - e_hat.to(target.dtype)).pow(2).sum() / total
