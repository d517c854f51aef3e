"""KL fine-tuning of SAE sets (end-to-end loss: KL to the model + reconstruction)."""
from __future__ import annotations

import pytest
import torch

import saecircuits as sc
from saecircuits.errors import HookPointError, ConfigError
from saecircuits.models import unwrap
from trainers.corpus import load_corpus
from trainers.kl_finetune import KLFinetuneConfig, kl_finetune, spliced_kl
from helpers import assert_model_clean, bare_logits

TEXTS = [f"Story {i}: Mary and John went to the market, and John gave a red apple to Mary. "
         f"def f{i}(x):\n    return x * {i}\n" for i in range(40)]


def test_kl_finetune_lowers_kl_and_leaves_model_alone(tiny):
    model, tok = tiny
    before = bare_logits(model, tok, ["The cat sat on the"])
    flags = [p.requires_grad for p in unwrap(model).parameters()]
    saes = sc.SAESet({h: sc.SAE.random(sc.SAEConfig("topk", 64, 256, k=16, hook=h), seed=i)
                      for i, h in enumerate(["resid.0", "mlp.1", "attn.2"])})
    w0 = saes["mlp.1"].W_dec.detach().clone()
    # KL on windows of the fine-tuning texts (a random tiny model's outputs are nearly uniform:
    # on other text 24 small steps move the KL too little to measure reliably)
    windows = load_corpus(tok, TEXTS, cache=False).windows(32, seed=None)[:8]
    held = {"input_ids": windows, "attention_mask": torch.ones_like(windows)}
    kl0 = spliced_kl(model, saes, held)
    log = kl_finetune(model, tok, saes, KLFinetuneConfig(tokens=24 * 2 * 32, context=32, batch=2,
                                                          lr=1e-3, recon_coef=0.0, progress=False),
                      corpus=TEXTS)
    assert log["steps"] == 24 and len(log["kl"]) == 24
    kl1 = spliced_kl(model, saes, held)
    assert kl1 < 0.95 * kl0, (kl0, kl1)
    assert not torch.equal(saes["mlp.1"].W_dec, w0)
    assert all(not p.requires_grad and p.grad is None for s in saes.values() for p in s.parameters()) \
        or all(p.grad is None for s in saes.values() for p in s.parameters())
    assert [p.requires_grad for p in unwrap(model).parameters()] == flags
    assert all(p.grad is None for p in unwrap(model).parameters())
    assert_model_clean(model)
    assert torch.equal(before, bare_logits(model, tok, ["The cat sat on the"]))


def test_kl_finetune_bad_hooks_fail_before_compute(tiny, monkeypatch):
    model, tok = tiny
    import trainers.kl_finetune as kf

    monkeypatch.setattr(kf, "default_corpus", lambda tok: pytest.fail("loaded a corpus"))
    saes = {"resid.7": sc.SAE.random(sc.SAEConfig("topk", 64, 128, k=8, hook="resid.7"))}
    with pytest.raises(HookPointError, match="resid.7"):
        kl_finetune(model, tok, saes, KLFinetuneConfig(progress=False))
    wide = {"resid.1": sc.SAE.random(sc.SAEConfig("topk", 32, 128, k=8, hook="resid.1"))}
    with pytest.raises(ConfigError, match="d_in=32"):
        kl_finetune(model, tok, wide, KLFinetuneConfig(progress=False))
    with pytest.raises(ConfigError, match="tokens"):
        KLFinetuneConfig(tokens=0)
    assert_model_clean(model)
