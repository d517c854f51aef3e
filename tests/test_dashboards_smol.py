"""Feature dashboards on the real SmolLM2 with real text (the embedded stdlib/pydoc corpus)."""
from __future__ import annotations

import pytest
import torch

from saecircuits import hooks
from saecircuits.export.dashboards import (build_dashboards, collect_activations,
                                           neuronpedia_feature, output_effects)
from saecircuits.sae import SAE, SAEConfig, SAESet

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def saes(request, smol):
    """Trained SmolLM2 SAEs when the session provides them (`smol_saes`), else random ones."""
    try:
        return request.getfixturevalue("smol_saes")
    except pytest.FixtureLookupError:
        return SAESet({"resid.6": SAE.random(SAEConfig("topk", 576, 1024, k=16, hook="resid.6"),
                                             seed=0)})


@pytest.fixture(scope="module")
def texts():
    from trainers.corpus import load_documents

    return [d.text for d in load_documents(None, max_documents=24)]


def test_dashboards_on_smollm2_real_text(smol, saes, texts):
    model, tok = smol
    hook = sorted(saes, key=lambda h: hooks.resolve(model, h).order)[0]
    d_sae = saes[hook].cfg.d_sae
    fa0 = collect_activations(model, tok, saes, [(hook, i) for i in range(0, d_sae, d_sae // 16)],
                              texts, context=64, max_windows=24, batch_size=8, progress=False)
    # pick the 3 most frequently active of the probed features: real, living features
    freq = (fa0.acts > 0).float().sum(dim=(0, 1))
    chosen = [fa0.features[j] for j in freq.argsort(descending=True)[:3].tolist()]
    assert all(freq[fa0.features.index(f)] > 0 for f in chosen)
    fa = collect_activations(model, tok, saes, chosen, texts, context=64, max_windows=24,
                             batch_size=8, progress=False)
    dashboards = build_dashboards(model, tok, saes, fa, n_contexts=5)
    corpus = "".join(texts)
    for key, data in dashboards.items():
        assert 0 < data["activation_frequency"] < 1 and data["act_max"] > 0
        assert data["contexts"], key
        for ctx in data["contexts"]:
            assert "".join(ctx["tokens"]) in corpus  # contexts are real corpus text
            assert max(ctx["acts"]) == ctx["acts"][ctx["argmax"]] == pytest.approx(ctx["max"],
                                                                                   rel=1e-5)
        assert len(data["top_logits_values"]) == 10 and data["label"]
        feature = neuronpedia_feature(data)
        assert feature["act_max"] == data["act_max"] and feature["examples_quantiles"]


def test_output_effects_predict_the_logit_change_on_smollm2(smol, saes):
    """decoder row · (final-norm weight ⊙ W_U) matches the real logit change of adding the
    row to the last residual stream (tied embeddings, RMSNorm with a learned weight)."""
    model, tok = smol
    hook = sorted(saes)[0]
    sae = saes[hook]
    hp = hooks.resolve(model, "resid.29")
    ids = tok("The capital of France is", return_tensors="pt")
    predicted = output_effects(model, sae, [0, 1])
    rows = sae.W_dec[:2].detach()
    rows = rows / rows.norm(dim=-1, keepdim=True)
    batch = {k: v.repeat(3, 1) for k, v in ids.items()}  # row 0 plain, rows 1-2 bumped
    with torch.no_grad(), model.trace(batch):
        x = hooks.read(model, hp)
        bumped = x.clone()
        bumped[1:, -1] += 2.0 * rows
        hooks.write(model, hp, bumped)
        out = model.lm_head.output.save()
    for j in range(2):
        delta = out[j + 1, -1] - out[0, -1]
        corr = torch.corrcoef(torch.stack([delta, predicted[j]]))[0, 1]
        assert corr > 0.99, float(corr)
        top = set(predicted[j].topk(20).indices.tolist())
        assert len(top & set(delta.topk(20).indices.tolist())) >= 15
