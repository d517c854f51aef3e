"""Training-step kernels of the TopK-family dictionaries: plain functions on tensors.

Layout: encoder and decoder both `[d_sae, d_in]` (one row per latent, contiguous, so the k
selected rows can be gathered), `b_enc [d_sae]`, `b_dec [d_in]`, activations `[B, d_in]`.

In a TopK step the gradient of the pre-activations has at most k + k_aux non-zeros per row,
so only the encoder's forward needs a dense GEMM: `topk_aux_loss` computes the pre-activations
once (on CPU in row blocks that stay in cache), takes both the top k (all latents) and aux-k's top
k_aux (dead latents) from them, and writes the gradients of the top k with sparse products
(`embedding_bag` gathers and scatters, sampled dot products) and aux-k's as GEMMs over the dead
latents only (sparse products where its selection is sparse). `sparse_topk`, `aux_k_loss` and
`aux_k_loss_lowp` are the building blocks used elsewhere (BatchTopK, tests).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

# aux-k's products run dense (GEMMs over the dead latents) when k_aux / n_dead reaches this
AUX_DENSE_FROM = 0.25
# entries per row block of the dense pre-activations (8 MiB of fp32: stays in cache; smaller
# blocks make the GEMM itself slower)
CHUNK_ELEMENTS = 1 << 21
MIN_BLOCK_ROWS = 256


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():  # torch's "sparse CSR is in beta" note is not the user's concern
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def row_dots(a: torch.Tensor, w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """`out[b, j] = a[b] · w[idx[b, j]]` for a `[B, d]`, w `[n, d]`, idx `[B, m]` (a sampled
    dense×dense product: B·m·d multiply-adds, no `[B, m, d]` gather)."""
    B, m = idx.shape
    pattern = _csr(torch.arange(0, B * m + 1, m, device=idx.device), idx.reshape(-1),
                   a.new_zeros(B * m), (B, w.shape[0]))
    return torch.sparse.sampled_addmm(pattern, a, w.T).values().view(B, m)


class ScatterPlan:
    """Entries `(b, idx[b, j])` grouped by latent, to scatter weighted rows into `[n, d]`.

    `scatter(src, w)[l] = Σ_{b, j: idx[b, j] = l} w[b, j] · src[b]` is one `embedding_bag`
    over the entries sorted by latent (bags = latents); one sort serves every product with the
    same pattern (decoder and encoder gradients).
    """

    def __init__(self, idx: torch.Tensor, n: int):
        m = idx.shape[1]
        flat = idx.reshape(-1)
        self.order = torch.sort(flat, stable=True).indices
        self.offsets = torch.zeros(n, dtype=torch.int64, device=idx.device)
        torch.cumsum(torch.bincount(flat, minlength=n)[:-1], 0, out=self.offsets[1:])
        self.rows = self.order // m

    def scatter(self, src: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """`[n, d]` sums of weighted source rows per latent."""
        return nn.functional.embedding_bag(self.rows, src, self.offsets, mode="sum",
                                           per_sample_weights=weights.reshape(-1)[self.order])


def scatter_rows(idx: torch.Tensor, n: int, pairs: list[tuple[torch.Tensor, torch.Tensor]],
                 chunk_entries: int = 1 << 17) -> list[torch.Tensor]:
    """For each `(src [B, d], w [B, m])`: `out[l] = Σ_{b, j: idx[b, j] = l} w[b, j] · src[b]`
    (`[n, d]`, a sparse `Sᵀ @ src`). Runs over row blocks of about `chunk_entries` entries so
    that each block's sort and source rows stay in cache; the pattern is shared by the pairs."""
    B, m = idx.shape
    rows = max(1, chunk_entries // max(1, m))
    outs: list[torch.Tensor] | None = None
    for s in range(0, B, rows):
        plan = ScatterPlan(idx[s:s + rows], n)
        parts = [plan.scatter(src[s:s + rows], w[s:s + rows]) for src, w in pairs]
        outs = parts if outs is None else [o.add_(p) for o, p in zip(outs, parts)]
    return outs or [pairs[0][0].new_zeros(n, pairs[0][0].shape[1]) for _ in pairs]


def _group_size(n: int, k: int) -> int | None:
    """Columns per group for `topk_rows`' bound: the widest of 32/16/8 dividing n with at least
    4k groups; None where the plain top-k is used."""
    for g in (32, 16, 8):
        if n % g == 0 and n // g >= 4 * k:
            return g
    return None


def topk_rows(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the k largest entries of each row of `pre [B, n]`, unsorted.

    The same entries as `pre.topk(k, dim=-1)`, found through a bound: split each row into groups
    of G columns; the k groups with the largest maxima hold the top k (an entry outside them is
    below k group maxima), and the smallest of those k maxima is ≤ the k-th largest entry, so
    only the few entries of those groups that reach it are ranked.
    """
    B, n = pre.shape
    G = _group_size(n, k)
    if G is None or B == 0 or pre.device.type != "cpu":  # GPUs: torch's radix select is fast
        return pre.topk(k, dim=-1, sorted=False)
    ng = n // G
    gmax, gi = pre.view(B, ng, G).amax(-1).topk(k, dim=-1, sorted=False)      # [B, k]
    bound = gmax.amin(-1, keepdim=True)
    rows = torch.arange(B, device=pre.device)
    cand = pre.view(B * ng, G).index_select(0, (gi + (rows * ng)[:, None]).reshape(-1)).view(B, k * G)
    row, j = (cand >= bound).nonzero(as_tuple=True)
    counts = torch.bincount(row, minlength=B)
    pos = torch.arange(row.numel(), device=pre.device) - (counts.cumsum(0) - counts)[row]
    width = int(counts.max())
    if width < k:  # NaN rows (nothing reaches a NaN bound): leave them to the plain top-k
        return pre.topk(k, dim=-1, sorted=False)
    vals = torch.full((B, width), float("-inf"), dtype=pre.dtype, device=pre.device)
    cols = torch.zeros((B, width), dtype=torch.int64, device=pre.device)
    vals[row, pos] = cand[row, j]
    cols[row, pos] = gi[row, j // G] * G + j % G
    v, jj = vals.topk(k, dim=-1, sorted=False)
    return v, cols.gather(1, jj)


def _sq_sum(t: torch.Tensor, scratch: torch.Tensor, centre: bool = False) -> torch.Tensor:
    """Σ t² (Σ (t − row mean)² with `centre`) with torch's cascade sum, as accurate as the
    reference losses; `scratch` (t's shape) takes the squares, so no buffer is allocated."""
    if centre:
        torch.sub(t, t.mean(0), out=scratch)
        scratch.square_()
    else:
        torch.square(t, out=scratch)
    return scratch.sum()


def _row_blocks(total: int, width: int, device: torch.device) -> int:
    """Rows per block: on CPU, blocks of about CHUNK_ELEMENTS entries (at least MIN_BLOCK_ROWS
    rows, for an efficient GEMM), all but the last of equal size; elsewhere one block (GPU
    allocators reuse memory, and one large GEMM is fastest)."""
    if device.type != "cpu":
        return max(1, total)
    blocks = max(1, min(round(total * width / CHUNK_ELEMENTS), total // MIN_BLOCK_ROWS))
    return -(-total // blocks)


class _AuxSelection:
    """aux-k's choice among the dead latents, per token: all of them (`acts [B, n_dead]`,
    ReLU'd) or the top k_aux (`idx`, `acts [B, k_aux]`, local to the dead list)."""

    def __init__(self, B: int, n_dead: int, k_aux: int, dtype: torch.dtype, device: torch.device):
        self.n_dead, self.all = n_dead, k_aux == n_dead
        self.acts = torch.empty(B, k_aux, dtype=dtype, device=device)   # ReLU'd pre-activations
        self.idx = None if self.all else torch.empty(B, k_aux, dtype=torch.int64, device=device)

    def take(self, s: int, pre_d: torch.Tensor) -> None:
        """Select from the dead latents' pre-activations of rows s… (`[rows, n_dead]`)."""
        rows = slice(s, s + pre_d.shape[0])
        if self.all:
            torch.clamp_min(pre_d, 0, out=self.acts[rows])
        else:
            v, i = topk_rows(pre_d, self.acts.shape[1])
            torch.clamp_min(v, 0, out=self.acts[rows])
            self.idx[rows] = i

    def dense(self) -> bool:
        """Whether the backward's products over the dead latents run as GEMMs."""
        return self.all or self.acts.shape[1] >= AUX_DENSE_FROM * self.n_dead

    def dense_blocks(self):
        """(rows slice, dense ReLU'd activations `[rows, n_dead]`) over row blocks; the block
        buffer is reused, so each block is valid until the next one."""
        B = self.acts.shape[0]
        if self.all:
            yield slice(0, B), self.acts
            return
        step = _row_blocks(B, self.n_dead, self.acts.device)
        buf = self.acts.new_empty(step, self.n_dead)
        for s in range(0, B, step):
            rows = slice(s, min(B, s + step))
            block = buf[: rows.stop - s].zero_()
            yield rows, block.scatter_(1, self.idx[rows], self.acts[rows])


class _TopKAuxLoss(torch.autograd.Function):
    """(fvu, aux, values [B, k], indices [B, k]) of a TopK step; see `topk_aux_loss`."""

    @staticmethod
    def forward(ctx, x, enc, dec, b_enc, b_dec, k, k_aux, dead_idx, select_dtype):
        mm = x.dtype if select_dtype is None else select_dtype        # dtype of the dense products
        B, n, n_dead = x.shape[0], enc.shape[0], dead_idx.numel()
        x_c = x - b_dec
        vals = torch.empty(B, k, dtype=mm, device=x.device)
        idx = torch.empty(B, k, dtype=torch.int64, device=x.device)
        aux_sel = _AuxSelection(B, n_dead, min(k_aux, n_dead), mm, x.device) if n_dead else None
        # the one dense GEMM, in row blocks: each block of pre-activations is selected from
        # while in cache, and no [B, d_sae] buffer is allocated (fresh pages are costly)
        x_mm, enc_mm, b_mm = x_c.to(mm), enc.to(mm), b_enc.to(mm)
        step = _row_blocks(B, n, x.device)
        pre = torch.empty(step, n, dtype=mm, device=x.device)
        for s in range(0, B, step):
            block = torch.addmm(b_mm, x_mm[s:s + step], enc_mm.T, out=pre[: min(step, B - s)])
            v, i = topk_rows(block, k)
            vals[s:s + step], idx[s:s + step] = v, i
            if aux_sel is not None:
                aux_sel.take(s, block.index_select(1, dead_idx))
        del pre, x_mm
        if mm != x.dtype:  # selected in low precision: recompute the selected values exactly
            vals = row_dots(x_c, enc, idx) + b_enc[idx]
        acts = torch.relu(vals)
        r = nn.functional.embedding_bag(idx, dec, per_sample_weights=acts, mode="sum")
        torch.sub(x_c, r, out=r)                                       # r = x − x̂ = x_c − Σ acts·dec
        scratch = torch.empty_like(r)
        total = _sq_sum(x, scratch, centre=True).clamp_min(1e-12)
        fvu = _sq_sum(r, scratch) / total
        ctx.g1_scale, ctx.aux_sel, ctx.done = -2 / total, aux_sel, False
        aux = x.new_zeros(())
        if aux_sel is not None:
            dec_d = dec.index_select(0, dead_idx).to(mm)               # [n_dead, d]
            if aux_sel.all:
                e = (aux_sel.acts @ dec_d).to(x.dtype)
            else:  # a gather-sum is faster than a GEMM over the dead latents even at 25 % density
                e = nn.functional.embedding_bag(aux_sel.idx, dec_d.to(x.dtype), mode="sum",
                                                per_sample_weights=aux_sel.acts.to(x.dtype))
            torch.sub(r, e, out=e)                                      # e = r − ê
            target_var = _sq_sum(r, scratch, centre=True).clamp_min(1e-12)
            aux = _sq_sum(e, scratch) / target_var
            ctx.e, ctx.g2_scale, ctx.dec_d = e, -2 / target_var, dec_d
        ctx.save_for_backward(x_c, enc, dec, idx, acts, r, dead_idx)
        ctx.mark_non_differentiable(vals, idx)
        return fvu, aux, vals, idx

    @staticmethod
    def backward(ctx, g_fvu, g_aux, _g_vals, _g_idx):
        if ctx.done:
            raise RuntimeError("topk_aux_loss: backward may run only once (it reuses its buffers)")
        ctx.done = True
        x_c, enc, dec, idx, acts, r, dead_idx = ctx.saved_tensors
        n = enc.shape[0]
        g1 = r.mul_(ctx.g1_scale * g_fvu)                              # dL/dx̂ [B, d] (in r's buffer)
        gp = row_dots(g1, dec, idx).masked_fill_(acts <= 0, 0)        # dL/dpre at the top k [B, k]
        grad_dec, grad_enc = scatter_rows(idx, n, [(g1, acts), (x_c, gp)])
        grad_b_enc = torch.zeros(n, dtype=x_c.dtype, device=x_c.device).index_add_(
            0, idx.reshape(-1), gp.reshape(-1))
        sel = ctx.aux_sel
        if sel is not None:
            g2 = ctx.e.mul_(ctx.g2_scale * g_aux)                      # dL/dê [B, d] (in e's buffer)
            dec_d = ctx.dec_d
            if sel.dense():
                gd_dec = torch.zeros_like(dec_d, dtype=x_c.dtype)
                gd_enc = torch.zeros_like(gd_dec)
                gd_b = x_c.new_zeros(sel.n_dead)
                for rows, a in sel.dense_blocks():
                    g2m, xm = g2[rows].to(a.dtype), x_c[rows].to(a.dtype)
                    ga = (g2m @ dec_d.T).masked_fill_(a <= 0, 0)       # dL/dpre, dead latents
                    if a.dtype == x_c.dtype:
                        gd_dec.addmm_(a.T, g2m)
                        gd_enc.addmm_(ga.T, xm)
                    else:
                        gd_dec += (a.T @ g2m).to(x_c.dtype)
                        gd_enc += (ga.T @ xm).to(x_c.dtype)
                    gd_b += ga.sum(0, dtype=x_c.dtype)
            else:
                av = sel.acts.to(x_c.dtype)
                ga = row_dots(g2, dec_d.to(x_c.dtype), sel.idx).masked_fill_(av <= 0, 0)   # [B, k_aux]
                gd_dec, gd_enc = scatter_rows(sel.idx, sel.n_dead, [(g2, av), (x_c, ga)])
                gd_b = x_c.new_zeros(sel.n_dead).index_add_(0, sel.idx.reshape(-1), ga.reshape(-1))
            grad_dec.index_add_(0, dead_idx, gd_dec)
            grad_enc.index_add_(0, dead_idx, gd_enc)
            grad_b_enc.index_add_(0, dead_idx, gd_b)
        grad_b_dec = g1.sum(0) - grad_b_enc @ enc                      # x_c = x − b_dec
        return None, grad_enc, grad_dec, grad_b_enc, grad_b_dec, None, None, None, None


def topk_aux_loss(x: torch.Tensor, enc: torch.Tensor, dec: torch.Tensor, b_enc: torch.Tensor,
                  b_dec: torch.Tensor, k: int, k_aux: int, dead: torch.Tensor,
                  select_dtype: torch.dtype | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """TopK SAE training losses with a sparse backward: (fvu, aux, values [B, k], indices [B, k]).

    fvu = ‖x − x̂‖² / ‖x − mean(x)‖², x̂ = Σ_j relu(pre[idx_j]) dec[idx_j] + b_dec over the
    top k of `pre = (x − b_dec) encᵀ + b_enc`. aux = OpenAI's aux-k: the detached residual
    r = x − x̂ reconstructed by the top `k_aux` dead latents (`dead` bool `[d_sae]`), divided by
    r's variance (0 without dead latents). Gradients reach enc, dec, b_enc and b_dec exactly as
    autograd through the dense computation would (`Trainer.aux_k_loss` + embedding_bag decode).
    `select_dtype` (e.g. bfloat16): the dense pre-activation GEMM runs in that dtype; the
    selected values are recomputed exactly, aux-k uses the low-precision pre-activations.
    values are the pre-activations before the ReLU (idx/values need not be sorted).
    """
    dead_idx = dead.nonzero().squeeze(-1)
    return _TopKAuxLoss.apply(x, enc, dec, b_enc, b_dec, k, k_aux, dead_idx, select_dtype)


# --------------------------------------------------------------------------------------------
# Building blocks used by the other architectures and by tests
# --------------------------------------------------------------------------------------------

class SelectedPreActivations(torch.autograd.Function):
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
    gradient flows only through the B·k selected entries (`SelectedPreActivations`).
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
            values = row_dots(x_c, enc, idx) + b_enc[idx]
    pre = SelectedPreActivations.apply(x_c, enc, b_enc, idx, values)
    return torch.relu(pre), idx


def aux_k_loss(enc: torch.Tensor, dec: torch.Tensor, b_enc: torch.Tensor, dead: torch.Tensor,
               x_c: torch.Tensor, residual: torch.Tensor, k_aux: int) -> torch.Tensor:
    """OpenAI aux-k (dense, autograd): reconstruct the detached residual with the top `k_aux`
    dead latents, divided by the residual's variance. enc/dec `[d_sae, d_in]`, dead bool
    `[d_sae]`, x_c / residual `[B, d_in]` (x − b_dec and x − x̂); 0 without dead latents."""
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
        e_hat = nn.functional.embedding_bag(idx, dec[dead], per_sample_weights=torch.relu(vals), mode="sum")
    target = residual.detach()
    total = (target - target.mean(0)).pow(2).sum().clamp_min(1e-12)
    return (target - e_hat).pow(2).sum() / total


def aux_k_loss_lowp(enc: torch.Tensor, dec: torch.Tensor, b_enc: torch.Tensor, dead: torch.Tensor,
                    x_c: torch.Tensor, residual: torch.Tensor, k_aux: int,
                    dtype: torch.dtype) -> torch.Tensor:
    """`aux_k_loss` with its matmuls in `dtype` (the precision policy's low-precision dtype): fp32 parameters cast per step
    (gradients land in fp32), unsorted top k_aux, the loss summed in fp32."""
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
