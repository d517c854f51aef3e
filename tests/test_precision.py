"""bf16 training path: precision resolution, the low-precision aux-k, and bf16 vs fp32 steps."""
from __future__ import annotations

import pytest
import torch

from saecircuits.errors import ConfigError
from saecircuits.dictionaries import DictionaryConfig
from saecircuits.dictionaries.kernels import aux_k_loss, aux_k_loss_lowp
from trainers import TrainConfig
from trainers.loop import Trainer


def test_train_config_checks_precision():
    with pytest.raises(ConfigError, match="'half'"):
        TrainConfig(precision="half")


def _trainer(arch, dtype, seed=0):
    return Trainer(DictionaryConfig(arch, 32, 256, k=8, hook="resid.0"), total_steps=50, seed=seed,
                   dead_tokens=10**9, compute_dtype=dtype)


def test_lowp_aux_k_matches_the_fp32_loss_and_gradients():
    """Both aux-k paths (dense and embedding_bag) agree with the fp32 reference within bf16 error."""
    tr = _trainer("topk", None)
    dic = tr.dictionary
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 32, generator=gen)
    residual = torch.randn(64, 32, generator=gen)
    for n_dead, k_aux in ((40, 16), (200, 16)):  # 4·k_aux ≥ n_dead → dense; else embedding_bag
        tr.since_fired.zero_()
        tr.since_fired[:n_dead] = 10**10
        want = aux_k_loss(dic.W_enc.T, dic.W_dec, dic.b_enc, tr.dead_mask(), x, residual, k_aux)
        g_want = torch.autograd.grad(want, (dic.W_enc, dic.W_dec))
        got = aux_k_loss_lowp(dic.W_enc.T, dic.W_dec, dic.b_enc, tr.dead_mask(), x, residual, k_aux, torch.bfloat16)
        g_got = torch.autograd.grad(got, (dic.W_enc, dic.W_dec))
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0.03, atol=1e-3)
        for a, b in zip(g_got, g_want):
            assert a.dtype == torch.float32
            cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
            assert cos > 0.99
    tr.since_fired.zero_()
    assert float(aux_k_loss_lowp(dic.W_enc.T, dic.W_dec, dic.b_enc, tr.dead_mask(), x, residual, 8, torch.bfloat16)) == 0.0


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_bf16_steps_track_fp32_steps(arch):
    """Same data, same seed: 30 bf16 steps end at nearly the same loss as 30 fp32 steps, with
    fp32 parameters and optimiser state (bf16 only inside the matmuls)."""
    gen = torch.Generator().manual_seed(2)
    basis = torch.randn(64, 32, generator=gen)
    codes = torch.relu(torch.randn(30, 256, 64, generator=gen) - 1.5)
    data = codes @ basis
    runs = {}
    for dtype in (None, torch.bfloat16):
        tr = _trainer(arch, dtype)
        tr.since_fired[:64] = 10**10  # aux-k does work from the first step
        first = tr.step(data[0], data[0], 0)["fvu"]
        for step in range(1, 30):
            stats = tr.step(data[step], data[step], step)
        assert all(p.dtype == torch.float32 for p in tr.dictionary.parameters())
        assert all(v.dtype == torch.float32 for s in tr.optim.state.values() for v in s.values()
                   if torch.is_tensor(v) and v.dim())
        assert stats["fvu"] < first  # it learned something
        runs[dtype] = stats["fvu"]
    assert abs(runs[torch.bfloat16] - runs[None]) < 0.03 * runs[None]
