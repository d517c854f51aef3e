"""Basis comparison (Cunningham et al. Fig. 3): SAE vs raw vs PCA vs ICA at one hook."""
from __future__ import annotations

import json

import nnsight
import pytest
import torch

import saecircuits as sc
from saecircuits import hooks
from saecircuits.bases import (BasisComparison, build_bases, compare_bases, corpus_activations,
                               fastica_unmixing, ica_basis, pca_basis, plot_svg, write_outputs)
from saecircuits.cli import main
from saecircuits.errors import SaecircuitsError, TaskError
from saecircuits.splice import encode_inputs
from saecircuits.tasks import from_records, make_task
from helpers import assert_model_clean, bare_logits

_BASE = ["The quick brown fox jumps over the lazy dog while Mary reads a letter from John. " * 3,
         "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n" * 3,
         "When the train arrived, the passengers walked to the station exit and waited. " * 3]
TEXTS = [f"Part {i}. {t}" for i in range(4) for t in _BASE]


@pytest.fixture(scope="module")
def tiny_fit(tiny):
    model, tok = tiny
    return corpus_activations(model, tok, "resid.1", n_tokens=200, corpus=TEXTS, context=32)


def test_fastica_recovers_independent_sources():
    g = torch.Generator().manual_seed(0)
    sources = torch.distributions.Laplace(0.0, 1.0).sample((3, 4000))
    mix = torch.randn(3, 3, generator=g)
    x = (mix @ sources).T                                   # [n, 3] observed
    basis = ica_basis(torch.cat([x, x]), max_iter=300)      # n >= 2·d
    c = basis.encode(x)                                     # [n, 3]
    corr = torch.corrcoef(torch.cat([c.T, sources]))[:3, 3:].abs()
    assert (corr.max(dim=1).values > 0.98).all(), corr      # each component matches a source
    assert torch.allclose(c @ basis.dec + x.mean(0), x, atol=1e-3)  # complete: decodes exactly


def test_pca_is_orthonormal_and_sorted(tiny_fit):
    basis = pca_basis(tiny_fit)
    eye = basis.dec @ basis.dec.T
    assert torch.allclose(eye, torch.eye(64), atol=1e-4)
    var = basis.encode(tiny_fit).var(0)
    assert (var[:-1] + 1e-5 >= var[1:]).all()


def test_compare_bases_tiny(tiny, tiny_fit):
    model, tok = tiny
    before = bare_logits(model, tok, ["The cat sat on the"])
    task = make_task(tok, "ioi", n=6, seed=1)
    sae = sc.SAE.random(sc.SAEConfig("topk", 64, 256, k=16, hook="resid.1"), seed=0)
    bases = build_bases(model, tok, "resid.1", ["sae", "raw", "pca", "ica"], sae=sae,
                        fit_acts=tiny_fit, ica_iter=50)
    res = compare_bases(model, tok, task, "resid.1", bases, ns=[1, 8, 32])
    assert set(res.curves) == {"sae", "raw", "pca", "ica"}
    assert res.sizes == {"sae": 256, "raw": 64, "pca": 64, "ica": 64}
    for b in ("raw", "pca", "ica"):   # complete bases: patching every unit is the patch run
        assert res.fraction(b, "all") == pytest.approx(1.0, abs=2e-3)
    # SAE 'all' = every feature from the patch run, error term from clean: check by hand
    clean, patch = encode_inputs(tok, task.clean), encode_inputs(tok, task.patch)
    hp = hooks.resolve(model, "resid.1")
    with torch.no_grad(), model.trace(clean) as t:
        xc = nnsight.save(hooks.read(model, hp)); t.stop()
    with torch.no_grad(), model.trace(patch) as t:
        xp = nnsight.save(hooks.read(model, hp)); t.stop()
    first = clean["attention_mask"].long().argmax(1)
    keep = clean["attention_mask"].bool().clone()
    keep[torch.arange(len(task)), first] = False
    x_new = torch.where(keep[..., None], xc + sae(xp) - sae(xc), xc).detach()
    with torch.no_grad(), model.trace(clean):
        hooks.read(model, hp)
        hooks.write(model, hp, x_new)
        logits = model.lm_head.output.save()
    want = (task.metric(logits).mean() - res.metric_clean) / (res.metric_patch - res.metric_clean)
    assert res.all_features_recovery == pytest.approx(float(want), abs=1e-4)
    # KL(edited ‖ patch) at the last position and the edit magnitude, by hand
    with torch.no_grad(), model.trace(patch):
        logits_p = model.lm_head.output.save()
    logp, logq = (torch.log_softmax(v[:, -1].double(), -1) for v in (logits, logits_p))
    kl = (logp.exp() * (logp - logq)).sum(-1).mean()
    edit = (x_new - xc).norm(dim=-1)[clean["attention_mask"].bool()].mean()
    assert res.point("sae", "all").kl == pytest.approx(float(kl), rel=1e-3, abs=1e-6)
    assert res.point("sae", "all").edit == pytest.approx(float(edit), rel=1e-4)
    # top-n ranking: n=1 of raw picks the dimension with the largest attribution toward the change
    table = res.table()
    assert table.count("\n") == 5 and "| raw (64) |" in table
    svg = plot_svg(res)
    assert svg.startswith("<svg") and svg.count("<polyline") == 4
    assert_model_clean(model)
    assert torch.equal(before, bare_logits(model, tok, ["The cat sat on the"]))


def test_compare_bases_per_prompt_ranking(tiny, tiny_fit):
    """rank='prompt': each prompt patches its own top-n units; with one prompt it is the
    dataset ranking; n=1 per prompt is checked by hand against single-prompt runs."""
    model, tok = tiny
    task = make_task(tok, "ioi", n=4, seed=3)
    raw = build_bases(model, tok, "resid.1", ["raw"])
    per = compare_bases(model, tok, task, "resid.1", raw, ns=[1, 4], rank="prompt")
    assert per.rank == "prompt" and per.to_dict()["rank"] == "prompt"
    assert per.fraction("raw", "all") == pytest.approx(1.0, abs=2e-3)
    # by hand: each prompt's top-1 raw dimension, patched in its own prompt
    clean, patch = encode_inputs(tok, task.clean), encode_inputs(tok, task.patch)
    hp = hooks.resolve(model, "resid.1")
    with torch.enable_grad():
        with model.trace(clean):
            x = hooks.read(model, hp)
            leaf = nnsight.save(x.detach().clone().requires_grad_(True))
            hooks.write(model, hp, leaf)
            logits = model.lm_head.output.save()
        task.metric(logits).sum().backward()
    with torch.no_grad(), model.trace(patch) as t:
        xp = nnsight.save(hooks.read(model, hp)); t.stop()
    xc, grad = leaf.detach(), leaf.grad
    keep = clean["attention_mask"].bool().clone()
    keep[torch.arange(len(task)), clean["attention_mask"].long().argmax(1)] = False
    delta = (xp - xc) * keep[..., None]
    sign = 1.0 if per.metric_patch > per.metric_clean else -1.0
    top1 = ((grad * delta).sum(1) * sign).argmax(1)                     # [B]
    mask = torch.zeros_like(xc[:, 0]).scatter_(1, top1[:, None], 1.0)   # [B, d]
    x_new = xc + delta * mask[:, None, :]
    with torch.no_grad(), model.trace(clean):
        hooks.read(model, hp)
        hooks.write(model, hp, x_new)
        logits = model.lm_head.output.save()
    want = (task.metric(logits).mean() - per.metric_clean) / (per.metric_patch - per.metric_clean)
    assert per.fraction("raw", 1) == pytest.approx(float(want), abs=1e-4)
    single = from_records(tok, task.to_records()[:1])
    a = compare_bases(model, tok, single, "resid.1", raw, ns=[1, 4], rank="prompt")
    b = compare_bases(model, tok, single, "resid.1", raw, ns=[1, 4], rank="dataset")
    assert a.curves == b.curves
    with pytest.raises(SaecircuitsError, match="'nope'"):
        compare_bases(model, tok, task, "resid.1", raw, rank="nope")
    assert_model_clean(model)


def test_compare_bases_needs_patch_prompts(tiny, tiny_fit):
    model, tok = tiny
    task = from_records(tok, [{"clean_prefix": "When Mary and John went", "patch_prefix": None,
                               "clean_answer": " Mary", "patch_answer": " John"}])
    bases = build_bases(model, tok, "resid.1", ["raw"])
    with pytest.raises(TaskError, match="patch_prefix"):
        compare_bases(model, tok, task, "resid.1", bases)
    with pytest.raises(SaecircuitsError, match="nope"):
        build_bases(model, tok, "resid.1", ["nope"])
    with pytest.raises(SaecircuitsError, match="more activations than components"):
        pca_basis(tiny_fit[:10])
    assert_model_clean(model)


def test_cli_compare_bases(tiny_dir, tmp_path, capsys):
    model = str(tiny_dir("llama"))
    saes = tmp_path / "saes"
    sc.SAESet({"resid.1": sc.SAE.random(sc.SAEConfig("topk", 64, 128, k=8, hook="resid.1"))}).save(saes)
    corpus = tmp_path / "fit.txt"
    corpus.write_text("\n\n".join(TEXTS))
    task = tmp_path / "nopatch.jsonl"
    task.write_text(json.dumps({"clean_prefix": "When Mary and John went", "patch_prefix": None,
                                "clean_answer": " Mary", "patch_answer": " John"}) + "\n")
    out = tmp_path / "out"
    assert main(["compare-bases", "--model", model, "--saes", str(saes), "--hook", "resid.1",
                 "--task", str(task), "--bases", "raw", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "patch_prefix" in err and not out.exists()
    code = main(["compare-bases", "--json", "--model", model, "--saes", str(saes), "--hook", "resid.1",
                 "--task", "ioi", "--n", "4", "--bases", "sae,raw,pca", "--ns", "2,16",
                 "--corpus", str(corpus), "--fit-tokens", "256", "--out", str(out)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["hook"] == "resid.1" and summary["all_features_recovery"] is not None
    assert sorted(p.name for p in out.iterdir()) == ["bases.json", "bases.md", "bases.svg"]
    saved = json.loads((out / "bases.json").read_text())
    assert [c["n"] for c in saved["curves"]["raw"]] == [2, 16, 64]


@pytest.mark.slow
def test_compare_bases_smollm2_real_text(smol, smol_saes):
    """SmolLM2 on IOI with an SAE trained on real text; PCA/ICA fit on the embedded corpus."""
    model, tok = smol
    task = make_task(tok, "ioi", n=8, seed=3)
    bases = build_bases(model, tok, "resid.6", ["sae", "raw", "pca", "ica"], sae=smol_saes["resid.6"],
                        fit_tokens=2048, ica_iter=40)
    res = compare_bases(model, tok, task, "resid.6", bases, ns=[4, 64])
    assert res.metric_clean > 0 > res.metric_patch      # SmolLM2 solves IOI; the patch flips it
    for b in ("raw", "pca", "ica"):
        assert res.fraction(b, "all") == pytest.approx(1.0, abs=5e-3)
        # ranking by attribution finds units that carry the change: 64 units beat 4
        assert res.fraction(b, 64) > res.fraction(b, 4)
    assert 0.0 < res.all_features_recovery < 1.5
    assert_model_clean(model)
