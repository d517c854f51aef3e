"""TopK step kernels (saecircuits.dictionaries.kernels) against dense autograd references."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from saecircuits.dictionaries import kernels as K


def _reference(x, enc, dec, b_enc, b_dec, k, k_aux, dead):
    """The TopK loss as written before the fused kernel: dense pre-activations, embedding_bag
    decode, `aux_k_loss` (autograd through everything)."""
    x_c = x - b_dec
    vals, idx = (x_c @ enc.T + b_enc).topk(k, dim=-1)
    x_hat = nn.functional.embedding_bag(idx, dec, per_sample_weights=torch.relu(vals), mode="sum") + b_dec
    fvu = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    return fvu, K.aux_k_loss(enc, dec, b_enc, dead, x_c, x - x_hat, k_aux)


def _problem(B, d, n, n_dead, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, d, generator=gen, dtype=dtype) + 0.5
    params = [torch.randn(n, d, generator=gen, dtype=dtype), torch.randn(n, d, generator=gen, dtype=dtype),
              0.1 * torch.randn(n, generator=gen, dtype=dtype),
              0.1 * torch.randn(d, generator=gen, dtype=dtype)]
    dead = torch.zeros(n, dtype=torch.bool)
    dead[torch.randperm(n, generator=gen)[:n_dead]] = True
    return x, [p.requires_grad_() for p in params], dead


# (B, d, n, k, n_dead, k_aux): no dead latents; aux-k over all dead latents (k_aux ≥ n_dead);
# dense aux-k products (k_aux ≥ n_dead / 4); sparse aux-k products; a width where top-k uses
# the group bound (n = 1024, k = 4) and one where it does not
CASES = [(37, 12, 300, 4, 0, 6), (37, 12, 300, 4, 5, 6), (37, 12, 300, 4, 20, 6),
         (37, 12, 300, 4, 100, 6), (50, 8, 1024, 4, 600, 10), (64, 16, 64, 3, 40, 40)]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("blocks", [False, True])
def test_topk_aux_loss_matches_dense_autograd(case, blocks, monkeypatch):
    """Same fvu, aux and gradients (enc, dec, b_enc, b_dec) as autograd through the dense
    computation, in float64, with one row block or many."""
    B, d, n, k, n_dead, k_aux = case
    if blocks:  # several GEMM blocks and aux-k blocks of a few rows each
        monkeypatch.setattr(K, "CHUNK_ELEMENTS", 7 * n)
        monkeypatch.setattr(K, "MIN_BLOCK_ROWS", 1)
    x, params, dead = _problem(B, d, n, n_dead, seed=B + n_dead)
    want = _reference(x, *params, k, k_aux, dead)
    g_want = torch.autograd.grad(want[0] + want[1] / 32, params)
    fvu, aux, vals, idx = K.topk_aux_loss(x, *params, k, k_aux, dead)
    g_got = torch.autograd.grad(fvu + aux / 32, params)
    torch.testing.assert_close(fvu, want[0])
    torch.testing.assert_close(aux, want[1])
    if n_dead:
        assert aux > 0
    for got, ref in zip(g_got, g_want):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-11)
    top = ((x - params[3]) @ params[0].T + params[2]).detach().topk(k, dim=-1)
    assert torch.equal(idx.sort(-1).values, top.indices.sort(-1).values)
    torch.testing.assert_close(vals.sort(-1).values, top.values.sort(-1).values)


def test_topk_aux_loss_backward_runs_once():
    x, params, dead = _problem(16, 8, 64, 10, seed=0)
    fvu, aux, _, _ = K.topk_aux_loss(x, *params, 4, 6, dead)
    (fvu + aux).backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        (fvu + aux).backward()


def test_low_precision_selection_recomputes_the_selected_values_exactly():
    """bf16 selecting GEMM: the same latents as fp32 here (seed without near-ties), the values,
    fvu and main gradients exact in fp32; aux-k (bf16 products) within bf16 error."""
    x, params, dead = _problem(16, 16, 64, 20, seed=1, dtype=torch.float32)
    want = K.topk_aux_loss(x, *params, 4, 6, dead)
    g_want = torch.autograd.grad(want[0] + want[1] / 32, params)
    fvu, aux, vals, idx = K.topk_aux_loss(x, *params, 4, 6, dead, select_dtype=torch.bfloat16)
    g_got = torch.autograd.grad(fvu + aux / 32, params)
    assert torch.equal(idx.sort(-1).values, want[3].sort(-1).values)
    assert vals.dtype == torch.float32 and all(g.dtype == torch.float32 for g in g_got)
    torch.testing.assert_close(vals.sort(-1).values, want[2].sort(-1).values)
    torch.testing.assert_close(fvu, want[0])
    torch.testing.assert_close(aux, want[1], rtol=0.03, atol=1e-3)
    for got, ref in zip(g_got, g_want):
        assert nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0) > 0.99


@pytest.mark.parametrize("n,k", [(4608, 32), (4608, 1), (1024, 4), (4600, 32), (640, 40)])
def test_topk_rows_selects_the_same_entries_as_topk(n, k):
    gen = torch.Generator().manual_seed(n + k)
    pre = torch.randn(33, n, generator=gen)
    pre[3] = pre[3].round(decimals=1)      # many ties
    pre[4, : n // 2] = 5.0                 # ties at the top
    vals, idx = K.topk_rows(pre, k)
    want = pre.topk(k, dim=-1)
    torch.testing.assert_close(vals.sort(-1).values, want.values.sort(-1).values)
    assert torch.equal(pre.gather(1, idx), vals)
    assert (idx.sort(-1).values.diff(dim=-1) > 0).all()          # distinct latents
    rows = [r for r in range(33) if r not in (3, 4)]              # no ties: the same latents
    assert torch.equal(idx[rows].sort(-1).values, want.indices[rows].sort(-1).values)


def test_topk_rows_survives_nan_rows():
    pre = torch.randn(4, 1024)
    pre[1] = float("nan")
    assert K.topk_rows(pre, 4)[1].shape == (4, 4)


def test_scatter_rows_and_row_dots_match_dense_products():
    gen = torch.Generator().manual_seed(9)
    B, n, d, m = 41, 30, 7, 5
    idx = torch.stack([torch.randperm(n, generator=gen)[:m] for _ in range(B)])
    w1, w2 = (torch.randn(B, m, generator=gen, dtype=torch.float64) for _ in range(2))
    s1, s2 = (torch.randn(B, d, generator=gen, dtype=torch.float64) for _ in range(2))
    dense1 = torch.zeros(B, n, dtype=torch.float64).scatter_(1, idx, w1)
    dense2 = torch.zeros(B, n, dtype=torch.float64).scatter_(1, idx, w2)
    for chunk in (1 << 17, 3 * m):   # one block, and blocks of three rows
        got1, got2 = K.scatter_rows(idx, n, [(s1, w1), (s2, w2)], chunk_entries=chunk)
        torch.testing.assert_close(got1, dense1.T @ s1)
        torch.testing.assert_close(got2, dense2.T @ s2)
    table = torch.randn(n, d, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(K.row_dots(s1, table, idx), (s1 @ table.T).gather(1, idx))
