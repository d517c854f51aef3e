"""Kernels of the training steps: TopK selection with a sparse backward, and aux-k losses.

    sparse_topk        the k largest pre-activations (ReLU'd); the gradient flows only through
                       the B·k selected entries (sparse×dense products in backward), so the
                       backward touches O(batch·k·d_in) weights, not O(batch·d_sae·d_in)
                       (sparsify's trick, without a custom kernel)
    aux_k_loss         OpenAI aux-k (reconstruct the detached residual from the top k_aux dead
                       latents), fp32
    aux_k_loss_lowp    the same with its matmuls in a low precision (bf16 training path)

Encoder weights are given as `enc [d_sae, d_in]` (rows of latents, i.e. `W_enc.T`).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn


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




def aux_k_loss(enc: torch.Tensor, dec: torch.Tensor, b_enc: torch.Tensor, dead: torch.Tensor,
               x_c: torch.Tensor, residual: torch.Tensor, k_aux: int) -> torch.Tensor:
    """Scalar aux-k loss in fp32 (OpenAI): reconstruct the detached residual `[B, d_out]` with
    the top `k_aux` dead latents, normalised by the residual's variance. enc `[d_sae, d_in]`,
    dec `[d_sae, d_out]`, dead bool `[d_sae]`, x_c `[B, d_in]` (the encoder's input)."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return x_c.new_zeros(())
    k_aux = min(k_aux, n_dead)
    pre = x_c @ enc[dead].T + b_enc[dead]                                   # [B, n_dead]
    vals, idx = pre.topk(k_aux, dim=-1)
    if 4 * k_aux >= n_dead:  # most dead latents are used: a dense matmul is fastest
        acts = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
        e_hat = acts @ dec[dead]
    else:
        e_hat = nn.functional.embedding_bag(idx, dec[dead], per_sample_weights=torch.relu(vals),
                                            mode="sum")
    target = residual.detach()
    total = (target - target.mean(0)).pow(2).sum().clamp_min(1e-12)
    return (target - e_hat).pow(2).sum() / total


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
