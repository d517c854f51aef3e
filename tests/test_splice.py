import pytest
import torch

import saecircuits as sc
from saecircuits.errors import ConfigError, HookPointError, ShapeError
from saecircuits.splice import encode_inputs
from helpers import assert_model_clean, bare_logits

PROMPTS = ["When Mary and John went to the store, John gave a drink to",
           "def area(r):\n    return 3.14 * (r * r"]
SMOL_HOOKS = ["embed", "resid.4", "attn.10", "mlp.16", "resid.20", "resid.23"]


def random_saes(hooks, d_in, d_sae=256, arch="topk"):
    return sc.SAESet({h: sc.SAE.random(sc.SAEConfig(arch, d_in, d_sae, k=16 if arch == "topk" else None,
                                                     hook=h), seed=i) for i, h in enumerate(hooks)})


@pytest.mark.slow
def test_invariant1_splice_leaves_logits_unchanged_smollm2(smol):
    model, tok = smol
    saes = random_saes(SMOL_HOOKS, 576, 2304)
    inputs = encode_inputs(tok, PROMPTS)
    bare = sc.spliced_logits(model, None, inputs)
    spliced = sc.spliced_logits(model, saes, inputs)
    assert (bare - spliced).abs().max().item() <= 1e-4
    torch.testing.assert_close(bare, bare_logits(model, tok, PROMPTS), atol=1e-4, rtol=0)
    assert_model_clean(model)


@pytest.mark.slow
def test_features_take_gradients_and_edits_change_output(smol):
    model, tok = smol
    saes = random_saes(["resid.4", "resid.20"], 576, 1024)
    inputs = encode_inputs(tok, PROMPTS[:1])
    with model.trace(inputs):
        acts = sc.splice(model, saes, track_grad=True)
        logits = model.lm_head.output.save()
    mary = tok.encode(" Mary")[0]
    logits[0, -1, mary].backward()
    for hook in saes:
        f, err = acts[hook].features, acts[hook].error
        assert f.shape == (1, inputs["input_ids"].shape[1], 1024)
        assert err.shape[-1] == 576 and err.is_leaf and not err.grad_fn
        assert f.grad is not None and f.grad.abs().sum() > 0
        assert err.grad is not None and err.grad.abs().sum() > 0

    def zero_resid4(hook, f, err):
        return (torch.zeros_like(f), err) if hook == "resid.4" else None

    with torch.no_grad(), model.trace(inputs):
        sc.splice(model, saes, edit=zero_resid4)
        edited = model.lm_head.output.save()
    assert (edited - logits.detach()).abs().max() > 1e-3
    assert_model_clean(model)


@pytest.mark.slow
def test_invariant5_exception_inside_splice_leaves_model_clean(smol):
    model, tok = smol
    saes = random_saes(["resid.4", "resid.10"], 576, 512)
    inputs = encode_inputs(tok, PROMPTS)
    before = sc.spliced_logits(model, None, inputs)

    def boom(hook, f, err):
        if hook == "resid.10":
            raise RuntimeError("boom at resid.10")
        return torch.zeros_like(f), err

    with pytest.raises(RuntimeError, match="boom"):
        with model.trace(inputs):
            sc.splice(model, saes, edit=boom)
            model.lm_head.output.save()
    assert_model_clean(model)
    torch.testing.assert_close(sc.spliced_logits(model, None, inputs), before, atol=0, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "gemma2", "qwen3"])
def test_splice_exact_on_other_families(tiny_dir, family):
    model, tok = sc.load_model(str(tiny_dir(family)), device="cpu")
    saes = random_saes(["embed", "attn.0", "mlp.1", "resid.2"], 64, 128, arch="relu")
    inputs = encode_inputs(tok, PROMPTS)
    assert torch.equal(sc.spliced_logits(model, saes, inputs), sc.spliced_logits(model, None, inputs))
    # the SAEs are really in the path: zeroing one hook's features moves the logits
    from saecircuits.replacement import ReplacementModel

    zero_mlp = lambda site, f, err: (torch.zeros_like(f), err) if site.name == "mlp.1" else None  # noqa: E731
    edited, _ = ReplacementModel(model, saes, tok).run(inputs, edit=zero_mlp)
    assert (edited - sc.spliced_logits(model, None, inputs)).abs().max() > 1e-4


def test_bad_splices_leave_tiny_model_clean(tiny):
    model, tok = tiny
    inputs = encode_inputs(tok, PROMPTS)
    before = sc.spliced_logits(model, None, inputs)
    with pytest.raises(HookPointError, match="resid.9"):
        sc.spliced_logits(model, random_saes(["resid.9"], 64), inputs)
    with pytest.raises(ShapeError, match="d_in=32"):
        sc.spliced_logits(model, random_saes(["resid.1"], 32), inputs)
    with pytest.raises(ConfigError, match="at least one SAE"):
        with model.trace(inputs):
            sc.splice(model, {})
    with pytest.raises(ConfigError, match="non-empty"):
        encode_inputs(tok, [])
    with pytest.raises(ConfigError, match="non-empty"):
        encode_inputs(tok, ["ok", ""])
    meta_saes = random_saes(["resid.1"], 64).to("meta")
    with pytest.raises(ShapeError, match="meta"):
        sc.spliced_logits(model, meta_saes, inputs)
    assert_model_clean(model)
    assert torch.equal(sc.spliced_logits(model, None, inputs), before)


def test_half_precision_sae_on_float_model(tiny):
    model, tok = tiny
    inputs = encode_inputs(tok, PROMPTS)
    saes = random_saes(["resid.1"], 64).to(dtype=torch.bfloat16)
    for sae in saes.values():
        sae.cfg.dtype = "bfloat16"
    assert torch.equal(sc.spliced_logits(model, saes, inputs), sc.spliced_logits(model, None, inputs))
    # the bf16 SAE is really in the path: its features are bf16, and zeroing them moves the logits
    from saecircuits.replacement import ReplacementModel

    edited, acts = ReplacementModel(model, saes, tok).run(
        inputs, edit=lambda site, f, err: (torch.zeros_like(f), err))
    assert acts["resid.1"].features.dtype == torch.bfloat16
    assert (edited - sc.spliced_logits(model, None, inputs)).abs().max() > 1e-4
