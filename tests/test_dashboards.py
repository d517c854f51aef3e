"""Feature dashboards: activations over a corpus (one pass, stored), contexts, logits, files."""
from __future__ import annotations

import json
import re

import pydoc_data.topics
import pytest
import torch

from saecircuits import hooks
from saecircuits.cli import main
from saecircuits.errors import ConfigError, ExportError
from saecircuits.export.dashboards import (FeatureActivations, build_dashboards,
                                           collect_activations, load_dashboards, output_effects,
                                           parse_features, top_contexts, windows_of,
                                           write_dashboards)
from saecircuits.models import unwrap
from saecircuits.sae import SAE, SAEConfig, SAESet

TEXTS = [pydoc_data.topics.topics[k] for k in ("assert", "if", "while", "for", "try", "with")]


@pytest.fixture(scope="module")
def tiny_saes(tiny):
    model, _ = tiny
    d = unwrap(model).config.hidden_size
    return SAESet({"resid.0": SAE.random(SAEConfig("relu", d, 32, hook="resid.0"), seed=1),
                   "mlp.1": SAE.random(SAEConfig("topk", d, 48, k=6, hook="mlp.1"), seed=2)})


FEATURES = [("mlp.1", 3), ("resid.0", 5), ("resid.0", 7)]


def test_collect_activations_matches_a_plain_encode(tiny, tiny_saes):
    model, tok = tiny
    fa = collect_activations(model, tok, tiny_saes, FEATURES, TEXTS, context=32, max_windows=12,
                             batch_size=5, progress=False)
    assert fa.acts.shape == (12, 32, 3) and fa.features == FEATURES
    assert not fa.mask[:, 0].any() and (fa.acts[~fa.mask] == 0).all()
    ids, mask = windows_of(tok, TEXTS, 32, 12)
    assert torch.equal(ids, fa.tokens)
    points = [hooks.resolve(model, h) for h in ("resid.0", "mlp.1")]
    with torch.no_grad(), model.trace({"input_ids": ids, "attention_mask": mask.long()}):
        x0 = hooks.read(model, points[0]).save()
        x1 = hooks.read(model, points[1]).save()
    xs = [x0, x1]
    ref = {hp.name: tiny_saes[hp.name].encode(x) for hp, x in zip(points, xs)}
    for j, (hook, idx) in enumerate(FEATURES):
        expect = ref[hook][..., idx] * fa.mask
        torch.testing.assert_close(fa.acts[..., j], expect, atol=1e-5, rtol=1e-4)
    assert (fa.acts > 0).any()


def test_top_contexts_are_the_highest_windows(tiny, tiny_saes):
    model, tok = tiny
    ctx = top_contexts(model, tok, tiny_saes, FEATURES[:2], TEXTS, n=4, context=32, max_windows=12)
    fa = collect_activations(model, tok, tiny_saes, FEATURES[:2], TEXTS, context=32,
                             max_windows=12, progress=False)
    for j, f in enumerate(FEATURES[:2]):
        got = ctx[f]
        per_window = fa.acts[..., j].amax(dim=1)
        assert [c.max for c in got] == sorted((c.max for c in got), reverse=True)
        assert got[0].max == pytest.approx(float(per_window.max()))
        assert len(got) == min(4, int((per_window > 0).sum()))
        assert {c.window for c in got} == set(per_window.argsort(descending=True)[:len(got)].tolist())
        for c in got:
            assert c.acts[c.argmax] == pytest.approx(c.max, rel=1e-4)
            assert c.tokens[c.argmax] == tok.decode([int(fa.tokens[c.window, c.pos])])
            assert c.marked() == "".join(c.tokens[:c.argmax]) + f"[[{c.tokens[c.argmax]}]]" \
                + "".join(c.tokens[c.argmax + 1:])
            assert c.marked("<", ">", before=0, after=0) == f"<{c.tokens[c.argmax]}>"


def test_output_effects_use_the_final_norm_weight(tiny, tiny_saes):
    model, _ = tiny
    hf = unwrap(model)
    with torch.no_grad():
        hf.model.norm.weight.copy_(torch.linspace(0.5, 1.5, hf.config.hidden_size))
    sae = tiny_saes["mlp.1"]
    got = output_effects(model, sae, [3, 4])
    expect = (sae.W_dec[[3, 4]] * hf.model.norm.weight) @ hf.lm_head.weight.T
    torch.testing.assert_close(got, expect.detach(), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        hf.model.norm.weight.fill_(1.0)


def test_write_dashboards_directory_and_reuse(tiny, tiny_saes, tmp_path):
    model, tok = tiny
    out = tmp_path / "dash"
    result = write_dashboards(model, tok, tiny_saes, FEATURES, TEXTS, out, context=32,
                              max_windows=10, n_contexts=5, progress=False)
    assert result["features"] == ["mlp.1:3", "resid.0:5", "resid.0:7"]
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == ["activations.safetensors", "dashboards.html", "dashboards.json",
                     "features/mlp.1_3.json", "features/resid.0_5.json", "features/resid.0_7.json"]
    np_feature = json.loads((out / "features" / "mlp.1_3.json").read_text())
    assert {"index", "examples_quantiles", "top_logits", "bottom_logits", "act_min", "act_max",
            "histogram", "activation_frequency", "quantile_values"} <= set(np_feature)
    assert np_feature["index"] == 3 and len(np_feature["top_logits"]) == 10
    top = np_feature["examples_quantiles"][0]
    assert top["quantile_name"] == "Top activations"
    for ex in top["examples"]:
        assert len(ex["tokens"]) == len(ex["tokens_acts_list"])
        assert max(ex["tokens_acts_list"]) == ex["tokens_acts_list"][ex["train_token_ind"]]
    assert 0 < np_feature["activation_frequency"] <= 1
    dashboards = load_dashboards(out)
    assert sum(dashboards["mlp.1:3"]["histogram"]["counts"]) == round(
        dashboards["mlp.1:3"]["activation_frequency"] * dashboards["mlp.1:3"]["n_tokens"])
    html = (out / "dashboards.html").read_text()
    assert " src=" not in html and " href=" not in html
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) <= {"http://www.w3.org/2000/svg"}
    # stored activations are reused as they are: no model run needed for new pages
    stored = FeatureActivations.load(out / "activations.safetensors")
    assert stored.features == FEATURES and stored.model
    again = build_dashboards(model, tok, tiny_saes, stored, n_contexts=5)
    assert again["resid.0:5"]["contexts"] == dashboards["resid.0:5"]["contexts"]
    with pytest.raises(ExportError, match="exists"):
        write_dashboards(model, tok, tiny_saes, FEATURES, TEXTS, out, progress=False)


def test_bad_feature_inputs(tiny, tiny_saes, tmp_path):
    model, tok = tiny
    assert parse_features("resid.12:1234, mlp.3:7") == [("resid.12", 1234), ("mlp.3", 7)]
    for bad in ("resid.12", "resid.12:x", ":5", ""):
        with pytest.raises(ConfigError):
            parse_features(bad)
    with pytest.raises(ConfigError, match="resid.2"):
        collect_activations(model, tok, tiny_saes, [("resid.2", 0)], TEXTS, progress=False)
    with pytest.raises(ConfigError, match="out of range"):
        collect_activations(model, tok, tiny_saes, [("resid.0", 32)], TEXTS, progress=False)
    with pytest.raises(ConfigError, match="texts"):
        collect_activations(model, tok, tiny_saes, [("resid.0", 1)], [], progress=False)
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ExportError, match="corrupt"):
        FeatureActivations.load(tmp_path / "bad.safetensors")
    with pytest.raises(ExportError, match="no dashboards"):
        load_dashboards(tmp_path)


def test_cli_dashboards(tiny_dir, tiny_saes, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SAECIRCUITS_PROGRESS", "1")   # the suite turns bars off; this checks one
    tiny_saes.save(tmp_path / "saes")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(TEXTS))
    args = ["dashboards", "--model", str(tiny_dir("llama")), "--device", "cpu",
            "--saes", str(tmp_path / "saes"), "--features", "resid.0:5,mlp.1:3",
            "--corpus", str(corpus), "--windows", "8", "--context", "32", "--out"]
    assert main(args + [str(tmp_path / "d"), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["features"] == ["resid.0:5", "mlp.1:3"]
    assert "feature activations" in captured.err  # the progress bar
    assert (tmp_path / "d" / "dashboards.html").is_file()
    assert main(args + [str(tmp_path / "d2"), "--activations",
                        str(tmp_path / "d" / "activations.safetensors")]) == 0
    assert load_dashboards(tmp_path / "d2") == load_dashboards(tmp_path / "d")
    bad = [a if a != "resid.0:5,mlp.1:3" else "resid.9:1" for a in args]
    assert main(bad + [str(tmp_path / "d3")]) == 2
    assert "resid.9" in capsys.readouterr().err
