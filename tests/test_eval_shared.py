"""Evaluation with the clean forward shared: same metrics as separate spliced/zeroed traces."""
from __future__ import annotations

import math

import pytest
import torch

from saecircuits.sae import SAE, SAEConfig
from tests.helpers import assert_model_clean
from trainers import evaluate_saes
from trainers.suffix import block_output_is_tuple, logits_from_block

TEXTS = [f"Mary and John went to store number {i}. John gave a drink to Mary. " * 3 for i in range(8)]


def _random_sae(hook: str, width: int, seed: int) -> SAE:
    sae = SAE(SAEConfig(architecture="topk", d_in=width, d_sae=4 * width, k=4, hook=hook))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = torch.randn(4 * width, width, generator=gen)
        sae.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
    return sae


def test_logits_from_block_equal_the_full_forward(tiny):
    """Starting at block L+1 from block L's clean output reproduces the model's logits."""
    from saecircuits import hooks

    model, tok = tiny
    ids = torch.tensor(tok(TEXTS[:2])["input_ids"])[:, :20]
    hp = hooks.resolve(model, "resid.1")
    with model.trace({"input_ids": ids, "attention_mask": torch.ones_like(ids)}):
        resid = hooks.read(model, hp).save()
        logits = model.lm_head.output.save()
    got = logits_from_block(model, ids, 1, resid, as_tuple=block_output_is_tuple(model))
    torch.testing.assert_close(got, logits, rtol=1e-4, atol=1e-4)
    assert_model_clean(model)  # the blocks' forwards are restored


@pytest.mark.parametrize("hook_names", [["resid.0", "resid.2"], ["resid.1", "mlp.1"]])
def test_shared_clean_forward_gives_the_same_metrics(tiny, hook_names):
    model, tok = tiny
    from saecircuits import hooks

    saes = {h: _random_sae(h, hooks.resolve(model, h).width, i) for i, h in enumerate(hook_names)}
    fast = evaluate_saes(model, tok, saes, TEXTS, n_tokens=120, context=32, progress=False)
    slow = evaluate_saes(model, tok, saes, TEXTS, n_tokens=120, context=32, progress=False,
                         share_clean=False)
    for hook in hook_names:
        for key in ("explained_variance", "ce_clean", "ce_sae", "ce_zero", "kl_sae", "kl_zero",
                    "ce_loss_score", "l0"):
            assert math.isclose(fast[hook][key], slow[hook][key], rel_tol=1e-4, abs_tol=1e-5), key


def test_autocast_forwards_track_fp32(tiny):
    """bf16-autocast forwards (what `train` uses to score its SAEs when it harvests in bf16)
    move the metrics little and leave no autocast state or edit behind."""
    from saecircuits import hooks

    model, tok = tiny
    hook_names = ["resid.0", "resid.2"]
    saes = {h: _random_sae(h, hooks.resolve(model, h).width, i) for i, h in enumerate(hook_names)}
    fp32 = evaluate_saes(model, tok, saes, TEXTS, n_tokens=120, context=32, progress=False,
                         precision="fp32")
    bf16 = evaluate_saes(model, tok, saes, TEXTS, n_tokens=120, context=32, progress=False,
                         precision="bf16")
    assert (fp32["resid.0"]["precision"]["precision"], bf16["resid.0"]["precision"]["precision"]) \
        == ("fp32", "bf16")
    assert not torch.is_autocast_enabled("cpu")
    for hook in hook_names:
        assert abs(bf16[hook]["l0"] - fp32[hook]["l0"]) <= 0.1
        assert abs(bf16[hook]["explained_variance"] - fp32[hook]["explained_variance"]) < 0.02
        assert abs(bf16[hook]["ce_clean"] - fp32[hook]["ce_clean"]) < 0.02 * fp32[hook]["ce_clean"]
        assert bf16[hook]["ce_clean"] != fp32[hook]["ce_clean"]  # the forwards did run in bf16
    assert_model_clean(model)
