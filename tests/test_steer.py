"""Steering: exactness invariants (design invariant 2), positions, KV cache, sampling, bad inputs."""
from __future__ import annotations

import json
import math

import pytest
import torch

from saecircuits import SAE, SAEConfig, SAESet
from saecircuits.errors import ConfigError, HookPointError, InterventionError, SaecircuitsError
from saecircuits.steering import Intervention, parse_spec, steer
from tests.helpers import assert_model_clean

PROMPTS = ["The cat sat on the", "Once upon a time, in a land far away, there", "Hi"]
TRACK = [")", " the", "."]
DEAD = 3  # feature made inactive everywhere in the tiny SAEs


def _sae(d_in: int, hook: str, seed: int, d_sae: int = 256, k: int = 8, scale: float = 1.0) -> SAE:
    sae = SAE.random(SAEConfig("topk", d_in, d_sae, k=k, hook=hook), seed=seed)
    with torch.no_grad():
        sae.W_dec.mul_(scale)
        sae.W_enc[:, DEAD] = 0.0
        sae.b_enc[DEAD] = -1.0
    return sae


@pytest.fixture(scope="module")
def tiny_saes(tiny):
    model, _ = tiny
    return SAESet({"resid.0": _sae(64, "resid.0", 1, scale=30.0), "resid.2": _sae(64, "resid.2", 2, scale=30.0)})


def _gen(model, tok, saes, interventions, prompts=PROMPTS, **kw):
    kw.setdefault("max_new_tokens", 6)
    return steer(model, saes, prompts, interventions, tokenizer=tok, track=TRACK, **kw)


def _all_features(hook, mode="scale", value=1.0, d_sae=256):
    return Intervention(hook, list(range(d_sae)), mode, value)


# -- exactness ---------------------------------------------------------------------------------
@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("batched", [True, False])
def test_identity_edits_leave_generation_exact(tiny, tiny_saes, use_cache, batched):
    """Invariant 2: every feature kept at its own value (scale 1, add 0, ablating a dead feature)."""
    model, tok = tiny
    prompts = PROMPTS if batched else PROMPTS[1:2]
    ivs = [_all_features("resid.0"), _all_features("resid.2", "add", 0.0),
           Intervention("resid.2", DEAD, "ablate"), Intervention("resid.0", DEAD, "ablate", ablation="mean")]
    res = _gen(model, tok, tiny_saes, ivs, prompts, use_cache=use_cache)
    assert torch.equal(res.steered_ids, res.baseline_ids)
    assert res.baseline == res.steered
    assert torch.equal(res.steered_logits, res.baseline_logits)  # bit for bit, every step
    assert res.first_divergence() == [None] * len(prompts)


def test_clamp_to_own_value_is_exact(tiny, tiny_saes):
    """Clamp every feature at a prompt position to the value it has there: identical generation."""
    model, tok = tiny
    prompt = PROMPTS[1]
    inputs = tok([prompt], return_tensors="pt")
    with torch.no_grad(), model.trace(dict(inputs)):
        x = model.model.layers[0].output.save()
    own = tiny_saes["resid.0"].encode(x)[0, 4]
    assert (own > 0).sum() == 8
    ivs = [Intervention("resid.0", list(range(256)), "set", own, positions=[4]),
           _all_features("resid.2")]
    res = _gen(model, tok, tiny_saes, ivs, [prompt])
    assert torch.equal(res.steered_ids, res.baseline_ids)
    assert torch.equal(res.steered_logits, res.baseline_logits)
    # control: the same clamp to another value does change the output
    moved = _gen(model, tok, tiny_saes, [Intervention("resid.0", list(range(256)), "set", own + 5.0,
                                                      positions=[4])], [prompt])
    assert not torch.equal(moved.steered_logits, moved.baseline_logits)


def test_strong_clamp_changes_output(tiny, tiny_saes):
    model, tok = tiny
    res = _gen(model, tok, tiny_saes, [Intervention("resid.0", 7, "set", 50.0)])
    assert (res.logit_shift[:, 0].abs() > 1e-3).any()
    assert res.steered != res.baseline


def test_generated_positions_leave_prompt_logits_untouched(tiny, tiny_saes):
    model, tok = tiny
    res = _gen(model, tok, tiny_saes, [Intervention("resid.0", 7, "set", 50.0, positions="generated")])
    assert torch.equal(res.steered_logits[:, 0], res.baseline_logits[:, 0])
    assert torch.equal(res.steered_ids[:, 0], res.baseline_ids[:, 0])
    # every later step is steered (the KV-cache steps are not skipped)
    assert (res.logit_shift[:, 1:].abs().amax(dim=-1) > 1e-4).all()
    prompt_only = _gen(model, tok, tiny_saes, [Intervention("resid.0", 7, "set", 50.0, positions="prompt")])
    assert (prompt_only.logit_shift[:, 0].abs() > 1e-3).any()


@pytest.mark.parametrize("positions", ["generated", "all", [0, -1]])
def test_kv_cache_and_full_recompute_steer_alike(tiny, tiny_saes, positions):
    model, tok = tiny
    iv = [Intervention("resid.2", [5, 9], "add", 20.0, positions=positions)]
    cached = _gen(model, tok, tiny_saes, iv, use_cache=True)
    full = _gen(model, tok, tiny_saes, iv, use_cache=False)
    assert torch.equal(cached.steered_ids, full.steered_ids)
    torch.testing.assert_close(cached.steered_logits, full.steered_logits, atol=1e-3, rtol=1e-4)
    assert not torch.allclose(cached.steered_logits, cached.baseline_logits)


def test_left_padding_positions_are_per_row(tiny, tiny_saes):
    """Explicit positions count each row's own tokens: batched == each prompt alone."""
    model, tok = tiny
    iv = [Intervention("resid.0", 7, "set", 40.0, positions=[1])]
    batched = _gen(model, tok, tiny_saes, iv, PROMPTS[:2])
    for row, prompt in enumerate(PROMPTS[:2]):
        alone = _gen(model, tok, tiny_saes, iv, [prompt])
        torch.testing.assert_close(batched.steered_logits[row, 0], alone.steered_logits[0, 0],
                                   atol=1e-4, rtol=1e-4)
        assert not torch.allclose(alone.steered_logits[0, 0], alone.baseline_logits[0, 0])


def test_only_if_active_skips_inactive_positions(tiny, tiny_saes):
    model, tok = tiny
    res = _gen(model, tok, tiny_saes, [Intervention("resid.0", DEAD, "set", 50.0, only_if_active=True)])
    assert torch.equal(res.steered_logits, res.baseline_logits)
    control = _gen(model, tok, tiny_saes, [Intervention("resid.0", DEAD, "set", 50.0)])  # without the flag
    assert not torch.allclose(control.steered_logits, control.baseline_logits)


def test_untracked_and_empty_runs_finish(tiny, tiny_saes):
    """No tracked tokens and no interventions: plain generation, steered-only mode."""
    model, tok = tiny
    empty = steer(model, tiny_saes, PROMPTS, [], 5, tokenizer=tok)
    assert empty.baseline == empty.steered and empty.baseline_logits is None
    only = steer(model, tiny_saes, PROMPTS, [Intervention("resid.0", 7, "set", 50.0)], 5, tokenizer=tok,
                 baseline=False)
    assert only.baseline is None and only.steered_ids.shape == (3, 5)
    assert only.steered != empty.steered


def test_direction_and_feature_scale(tiny, tiny_saes):
    model, tok = tiny
    direction = tiny_saes["resid.2"].W_dec[11].detach().clone()
    add_dir = _gen(model, tok, {}, [Intervention("resid.2", direction, "add", 30.0)])
    assert not torch.allclose(add_dir.steered_logits, add_dir.baseline_logits)
    zero = _gen(model, tok, {}, [Intervention("resid.2", direction, "add", 0.0)])
    assert torch.equal(zero.steered_logits, zero.baseline_logits)
    scaled = _gen(model, tok, tiny_saes, [_all_features("resid.2", "scale", 0.0)])
    assert not torch.allclose(scaled.steered_logits, scaled.baseline_logits)


def test_seeded_sampling_is_reproducible_and_local(tiny, tiny_saes):
    model, tok = tiny
    iv = [_all_features("resid.0")]
    state = torch.get_rng_state()
    a = _gen(model, tok, tiny_saes, iv, do_sample=True, seed=1, temperature=1.5, top_p=0.95)
    b = _gen(model, tok, tiny_saes, iv, do_sample=True, seed=1, temperature=1.5, top_p=0.95)
    c = _gen(model, tok, tiny_saes, iv, do_sample=True, seed=2, temperature=1.5, top_p=0.95)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.steered_ids, b.steered_ids) and torch.equal(a.baseline_ids, a.steered_ids)
    assert not torch.equal(a.steered_ids, c.steered_ids)


def test_feature_selection_helpers(tiny, tiny_saes):
    from saecircuits.steering import attribution_features, contrastive_features

    model, tok = tiny
    found = contrastive_features(model, tiny_saes, "resid.2", PROMPTS[:2], PROMPTS[1:], tok, top=4)
    assert len(found) == 4 and found[0][1] >= found[-1][1]
    dot = tok(".", add_special_tokens=False)["input_ids"][0]
    scored = attribution_features(model, tiny_saes, "resid.2", PROMPTS, lambda lg: lg[:, -1, dot], tok, top=3)
    assert len(scored) == 3 and scored[0][1] >= scored[2][1] and scored[0][1] > 0
    with pytest.raises(ConfigError, match="resid.1"):
        contrastive_features(model, tiny_saes, "resid.1", PROMPTS, PROMPTS, tok)
    assert_model_clean(model)



def test_promoting_features_is_the_first_order_effect_of_adding(tiny, tiny_saes):
    """g = d log P(tracked) / d feature at the last position: adding a small amount of the top
    feature there changes log P by about g x amount; nothing accumulates into parameters."""
    from saecircuits.replacement import ReplacementModel
    from saecircuits.steering import promoting_features

    model, tok = tiny
    rm = ReplacementModel(model, tiny_saes, tok)
    ids = [tok(t, add_special_tokens=False)["input_ids"][0] for t in TRACK]
    prompts = PROMPTS[:2]
    params = [p for sae in tiny_saes.values() for p in sae.parameters()]
    grads_before = [None if p.grad is None else p.grad.clone() for p in params]
    found = promoting_features(rm, prompts, ids, top=4)
    assert list(found) == rm.hooks and all(len(rows) == 4 for rows in found.values())
    for rows in found.values():
        assert [g for _, g in rows] == sorted((g for _, g in rows), reverse=True)
    feat, g = found["resid.2"][0]
    assert g > 0
    amount = 1e-2
    for i, prompt in enumerate(prompts):  # per prompt: g is the mean over prompts of per-prompt slopes
        res = steer(model, tiny_saes, [prompt], [Intervention("resid.2", feat, "add", amount, positions=[-1])],
                    1, tokenizer=tok, track=ids)
        slope = float(res.steered_probs[0, 0].sum().log() - res.baseline_probs[0, 0].sum().log()) / amount
        one = promoting_features(rm, [prompt], ids, top=tiny_saes["resid.2"].cfg.d_sae)["resid.2"]
        assert slope == pytest.approx(dict(one)[feat], rel=0.05, abs=1e-3)
    for p, before in zip(params, grads_before):  # autograd.grad: nothing accumulated
        assert (p.grad is None and before is None) or torch.equal(p.grad, before)
    with pytest.raises(ConfigError, match="target token"):
        promoting_features(rm, prompts, [], top=4)
    with pytest.raises(ConfigError, match="no hook points"):
        promoting_features(ReplacementModel(model, {}, tok), prompts, ids)
    assert_model_clean(model)

# -- spec parsing ------------------------------------------------------------------------------
def test_parse_spec():
    iv = parse_spec("resid.12:1234=8.0", "set")
    assert (iv.hook, iv.feature, iv.mode, iv.value, iv.positions) == ("resid.12", 1234, "set", 8.0, "all")
    iv = parse_spec("model.layers.3.mlp:input:5,9=0.5@generated", "scale")
    assert (iv.hook, iv.feature, iv.value, iv.positions) == ("model.layers.3.mlp:input", [5, 9], 0.5, "generated")
    iv = parse_spec("resid.4:77=mean@0,1,-1", "ablate")
    assert (iv.ablation, iv.positions) == ("mean", [0, 1, -1])
    assert parse_spec("resid.4:77", "ablate").ablation == "zero"
    for text, mode, bad in [("resid.4", "set", "resid.4"), ("resid.4:x=1", "set", "x"),
                            ("resid.4:1", "set", "needs a value"), ("resid.4:1=abc", "add", "abc"),
                            ("resid.4:1=2", "clampify", "clampify")]:
        with pytest.raises(InterventionError, match=bad):
            parse_spec(text, mode)


# -- bad inputs: clear error, model untouched --------------------------------------------------
BAD = [
    (lambda: [Intervention("resid.0", 256, "set", 1.0)], {}, InterventionError, "256"),
    (lambda: [Intervention("resid.0", [1, -1], "set", 1.0)], {}, InterventionError, "-1"),
    (lambda: [Intervention("resid.1", 3, "set", 1.0)], {}, InterventionError, "resid.1"),
    (lambda: [Intervention("resid.9", 3, "set", 1.0)], {}, HookPointError, "resid.9"),
    (lambda: [Intervention("resid.0", 3, "clamp", 1.0)], {}, InterventionError, "clamp"),
    (lambda: [Intervention("resid.0", 3, "ablate", ablation="median")], {}, InterventionError, "median"),
    (lambda: [Intervention("resid.0", 3, "set", math.nan)], {}, InterventionError, "nan"),
    (lambda: [Intervention("resid.0", 3, "add", torch.tensor([math.inf]))], {}, InterventionError, "non-finite"),
    (lambda: [Intervention("resid.0", torch.zeros(64), "add", 1.0)], {}, InterventionError, "non-zero"),
    (lambda: [Intervention("resid.0", torch.ones(10), "add", 1.0)], {}, InterventionError, "10"),
    (lambda: [Intervention("resid.0", 3, "set", 1.0, positions=[1])], {}, InterventionError, "position 1"),
    (lambda: [Intervention("resid.0", 3, "set", 1.0, positions="middle")], {}, InterventionError, "middle"),
    (lambda: [Intervention("resid.0", 3, "set", 1.0)], {"max_new_tokens": 0}, ConfigError, "max_new_tokens"),
    (lambda: [Intervention("resid.0", 3, "set", 1.0)], {"max_new_tokens": -2}, ConfigError, "-2"),
    (lambda: [Intervention("resid.0", 3, "set", 1.0)], {"temperature": 0.0}, ConfigError, "temperature"),
    (lambda: [Intervention("resid.0", 3, "set", 1.0)], {"top_p": 1.5}, ConfigError, "1.5"),
    (lambda: ["resid.0:3=1"], {}, InterventionError, "resid.0:3=1"),
]


def test_bad_inputs_raise_and_leave_model_clean(tiny, tiny_saes):
    model, tok = tiny
    prompts = ["Hi", "The cat sat"]  # shortest prompt: 1 token
    ref = _gen(model, tok, tiny_saes, [_all_features("resid.0")], prompts)
    for make, kw, error, needle in BAD:
        with pytest.raises(error, match=needle):
            _gen(model, tok, tiny_saes, make(), prompts, **kw)
        assert_model_clean(model)
    with pytest.raises(InterventionError, match="resid.0"):  # hook without SAE
        _gen(model, tok, {}, [Intervention("resid.0", 3, "set", 1.0)], prompts)
    again = _gen(model, tok, tiny_saes, [_all_features("resid.0")], prompts)
    assert torch.equal(again.baseline_ids, ref.baseline_ids)
    assert torch.equal(again.steered_logits, ref.steered_logits)


def test_error_during_generation_leaves_model_clean(tiny, tiny_saes, monkeypatch):
    model, tok = tiny
    before = _gen(model, tok, tiny_saes, [_all_features("resid.2")])
    sae = tiny_saes["resid.2"]
    calls = {"n": 0}
    original = SAE.encode

    def flaky(self, x):
        calls["n"] += 1
        if self is sae and calls["n"] > 3:
            raise RuntimeError("boom at a cached step")
        return original(self, x)

    monkeypatch.setattr(SAE, "encode", flaky)
    with pytest.raises(Exception, match="boom"):
        _gen(model, tok, tiny_saes, [_all_features("resid.2")])
    monkeypatch.setattr(SAE, "encode", original)
    assert_model_clean(model)
    after = _gen(model, tok, tiny_saes, [_all_features("resid.2")])
    assert torch.equal(after.baseline_ids, before.baseline_ids)
    assert torch.equal(after.baseline_logits, before.baseline_logits)


# -- CLI ---------------------------------------------------------------------------------------
def test_cli_steer(tiny, tiny_dir, tiny_saes, tmp_path, capsys):
    from saecircuits.cli import main

    tiny_saes.save(tmp_path / "saes")
    (tmp_path / "p.txt").write_text("The cat sat on the\nHi there\n")
    argv = ["steer", "--model", str(tiny_dir("llama")), "--device", "cpu", "--saes", str(tmp_path / "saes"),
            "--prompts", str(tmp_path / "p.txt"), "--clamp", "resid.0:7=50", "--scale", "resid.2:1,2=1.0",
            "--ablate", "resid.2:4=mean@prompt", "--max-new-tokens", "4", "--track", ".", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["results"]) == 2 and len(out["interventions"]) == 3
    assert any(r["baseline"] != r["steered"] for r in out["results"])
    assert main(argv[:-1]) == 0
    text = capsys.readouterr().out
    assert "baseline:" in text and "steered:" in text
    bad = ["steer", "--model", str(tiny_dir("llama")), "--saes", str(tmp_path / "saes"), "--prompt", "Hi",
           "--clamp", "resid.0:999=1"]
    assert main(bad) == 2
    assert "999" in capsys.readouterr().err
    assert main(bad[:-2]) == 2  # no intervention at all
    assert_model_clean(tiny[0])


# -- SmolLM2 -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_identity_exact_and_clamp_steers(smol):
    """Invariant 2 on the real model (batched, cache on/off) and a real clamp that changes text."""
    model, tok = smol
    saes = SAESet({"resid.12": SAE.random(SAEConfig("topk", 576, 2304, k=32, hook="resid.12"), seed=0)})
    prompts = ["When Mary and John went to the store, John gave a drink to", "def f(x):\n    return abs(x"]
    for use_cache in (True, False):
        res = steer(model, saes, prompts, [Intervention("resid.12", list(range(2304)), "scale", 1.0)],
                    6, tokenizer=tok, track=[" Mary", ")"], use_cache=use_cache)
        assert torch.equal(res.steered_ids, res.baseline_ids)
        assert torch.equal(res.steered_logits, res.baseline_logits)
    assert res.baseline[0].startswith(" Mary")
    direction = saes["resid.12"].W_dec[0].detach()
    pushed = steer(model, {}, prompts, [Intervention("resid.12", direction, "add", 200.0)], 6,
                   tokenizer=tok, track=[" Mary"])
    assert pushed.steered != pushed.baseline
    assert_model_clean(model)


@pytest.mark.slow
def test_trained_saes_exact_identity_and_parens_clamp(smol, smol_saes):
    """Trained SmolLM2 SAEs: identity edits at 3 hooks are exact; zero-ablating the features with
    the top attribution to the parens metric lowers P(")"-starting tokens) where ")" is due."""
    from saecircuits.steering import attribution_features
    from saecircuits.tasks import parens_task
    from saecircuits.tasks.parens import closing_ids

    model, tok = smol
    task = parens_task(tok, n=24, seed=0)
    d = {h: s.cfg.d_sae for h, s in smol_saes.items()}
    ivs = [Intervention(h, list(range(n)), "scale", 1.0) for h, n in d.items()]
    held = task.patch[16:]
    same = steer(model, smol_saes, held[:3], ivs, 4, tokenizer=tok, track=[")"])
    assert torch.equal(same.steered_ids, same.baseline_ids)
    assert torch.equal(same.steered_logits, same.baseline_logits)
    pick = task.take(slice(0, 8))
    top = attribution_features(model, smol_saes, "resid.16", pick.clean, pick.metric, tok, top=3)
    assert top[0][1] > 0
    res = steer(model, smol_saes, pick.clean, [Intervention("resid.16", [f for f, _ in top], "ablate",
                                                            positions=[-1])],
                1, tokenizer=tok, track=closing_ids(tok))
    shift = res.steered_probs[:, 0].sum(-1) - res.baseline_probs[:, 0].sum(-1)
    assert shift.mean() < 0  # ablating the features that support ")" lowers P(")"...)
    assert_model_clean(model)


@pytest.mark.slow
def test_promoting_features_steer_smollm2_toward_close_paren(smol, smol_saes):
    """Real model, real text: features chosen by `promoting_features` on selection prompts, set
    to 12x their max on corpus text, raise P(next token starts with ")") on disjoint prompts
    where ")" is not due, by orders of magnitude."""
    from saecircuits.demo import NOT_DUE_PROMPTS, SELECT_PROMPTS
    from saecircuits.replacement import ReplacementModel
    from saecircuits.steering import feature_activations, promoting_features
    from saecircuits.tasks.parens import closing_ids
    from trainers.corpus import load_documents

    model, tok = smol
    rm = ReplacementModel(model, smol_saes, tok)
    close = closing_ids(tok)
    hook = "resid.24"
    found = promoting_features(rm, SELECT_PROMPTS, close, top=5)[hook]
    texts = [d.text[:600] for d in load_documents(None)[:24]]
    peak = torch.stack([a.amax(0) for a in feature_activations(model, smol_saes, hook, texts, tok)]).amax(0)
    held = []
    for feat, g in found:
        assert g > 0
        res = steer(rm, None, NOT_DUE_PROMPTS, [Intervention(hook, feat, "set", 12 * float(peak[feat]))],
                    1, track=close)
        held.append((float(res.steered_probs[:, 0].sum(-1).mean()), float(res.baseline_probs[:, 0].sum(-1).mean())))
    best, base = max(held)
    assert base < 1e-3 and best > 0.05 and best > 100 * base, held
    assert_model_clean(model)
