"""TopK SAE (Gao et al. 2024): k largest ReLU'd pre-activations, FVU loss + aux-k (α = 1/32).

The step computes all pre-activations once without a graph and picks the top k; the gradient
flows only through the k selected entries per token (sparse×dense products in backward) and
the decoder is an `embedding_bag` over the k selected rows: the backward touches
O(batch·k·d_in) weights instead of O(batch·d_sae·d_in) (sparsify's trick, without a kernel).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from .base import Trainer
from .auxk import aux_k_loss_lowp

AUX_ALPHA = 1 / 32


class _SelectedPreActivations(torch.autograd.Function):
    """Pre-activations at selected latents, `pre[b, j] = x_c[b] · enc[idx[b, j]] + b_enc[idx[b, j]]`.

    Forward reads them from the dense no-grad pre-activation matrix; backward builds the
    gradient only for the selected entries with two sparse×dense products (`[d_sae, B]` with
    B·k non-zeros), never materialising the `[B, k, d_in]` gathered encoder rows.
    """

    @staticmethod
    def forward(ctx, x_c, enc, b_enc, idx, values):
        ctx.save_for_backward(x_c, enc, idx)
        return values

    @staticmethod
    def backward(ctx, grad):
        x_c, enc, idx = ctx.saved_tensors
        B, k = idx.shape
        rows = torch.arange(B, device=idx.device).repeat_interleave(k)
        cols = idx.reshape(-1)
        g = grad.reshape(-1).to(x_c.dtype)
        grad_x = grad_enc = grad_b = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            by_latent = torch.sparse_coo_tensor(torch.stack([cols, rows]), g, (enc.shape[0], B),
                                                check_invariants=False)
            if ctx.needs_input_grad[1]:
                grad_enc = torch.sparse.mm(by_latent, x_c)                       # [d_sae, d_in]
            if ctx.needs_input_grad[2]:
                grad_b = torch.zeros(enc.shape[0], dtype=g.dtype, device=g.device).index_add_(0, cols, g)
        if ctx.needs_input_grad[0]:
            by_row = torch.sparse_coo_tensor(torch.stack([rows, cols]), g, (B, enc.shape[0]),
                                             check_invariants=False)
            grad_x = torch.sparse.mm(by_row, enc)                                # [B, d_in]
        return grad_x, grad_enc, grad_b, None, None


def sparse_topk(enc: torch.Tensor, b_enc: torch.Tensor, x_c: torch.Tensor, k: int,
                select_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [B, k] with grad, indices [B, k]) of the k largest pre-activations, ReLU'd.

    enc: `[d_sae, d_in]`; x_c: `[B, d_in]`. One dense no-grad matmul finds the top k; the
    gradient flows only through the B·k selected entries (`_SelectedPreActivations`).
    `select_dtype` (e.g. bfloat16): run the selecting matmul in that dtype (twice as fast on
    CPU); the selected values are then recomputed exactly in x_c's dtype by a sampled sparse
    product, so only near-ties at the k-th place can differ from exact selection.
    """
    with torch.no_grad():
        if select_dtype is None or select_dtype == x_c.dtype:
            values, idx = (x_c @ enc.T + b_enc).topk(k, dim=-1)
        else:
            low = torch.addmm(b_enc.to(select_dtype), x_c.to(select_dtype), enc.to(select_dtype).T)
            idx = low.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values
            B = x_c.shape[0]
            crow = torch.arange(0, B * k + 1, k, device=idx.device)
            with warnings.catch_warnings():  # torch's "sparse CSR is in beta" note is not the user's concern
                warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
                pattern = torch.sparse_csr_tensor(crow, idx.reshape(-1), torch.zeros(
                    B * k, dtype=x_c.dtype, device=x_c.device), (B, enc.shape[0]), check_invariants=False)
            values = torch.sparse.sampled_addmm(pattern, x_c, enc.T).values().view(B, k) + b_enc[idx]
    pre = _SelectedPreActivations.apply(x_c, enc, b_enc, idx, values)
    return torch.relu(pre), idx


class TopKTrainer(Trainer):
    architecture = "topk"
    default_lr = 2e-3
    # Matmul dtype of the step (`saecircuits.precision`; train_saes sets it from TrainConfig.precision):
    # bf16 selects the top k with a bf16 matmul (`sparse_topk`) and runs aux-k in bf16 (`auxk`).
    compute_dtype: torch.dtype | None = None

    def loss(self, x: torch.Tensor, step: int):
        k = self.spec.k
        x_c = x - self.b_dec
        vals, idx = sparse_topk(self.enc, self.b_enc, x_c, k, self.compute_dtype)
        x_hat = nn.functional.embedding_bag(idx, self.dec, per_sample_weights=vals, mode="sum") + self.b_dec
        fvu = self.fvu(x, x_hat)
        k_aux = self.spec.extra.get("k_aux", max(1, self.spec.d_in // 2))
        if self.compute_dtype is None:
            aux = self.aux_k_loss(x_c, x - x_hat, k_aux)
        else:
            aux = aux_k_loss_lowp(self.enc, self.dec, self.b_enc, self.dead_mask(), x_c, x - x_hat,
                                  k_aux, self.compute_dtype)
        fired = torch.unique(idx[vals > 0])
        l0 = float((vals > 0).sum()) / x.shape[0]
        return fvu + AUX_ALPHA * aux, {"fvu": fvu.item(), "aux": aux.item(), "l0": l0}, fired
