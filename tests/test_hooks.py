import nnsight
import pytest
import torch

import saecircuits as sc
from saecircuits import hooks
from saecircuits.errors import HookPointError
from conftest import FAMILIES
from helpers import assert_model_clean


def _values(model, names, prompt="The cat sat on the mat because it was"):
    points = hooks.sort_by_forward_order(model, names)
    with torch.no_grad(), model.trace(prompt):
        out = nnsight.save({hp.name: hooks.read(model, hp) for hp in points})
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_canonical_hook_points_per_family(tiny_dir, family):
    model, _ = sc.load_model(str(tiny_dir(family)), device="cpu")
    points = sc.hook_points(model)
    names = [p.name for p in points]
    assert names[0] == "embed" and names[-1] == "resid.2"
    assert {"attn.1", "mlp.1", "resid.1"} <= set(names)
    assert all(p.width == 64 for p in points)
    assert [p.order for p in points] == sorted(p.order for p in points)
    # the residual stream after block 1 is the one before it plus what attn and mlp add
    vals = _values(model, ["resid.0", "attn.1", "mlp.1", "resid.1"])
    torch.testing.assert_close(vals["resid.0"] + vals["attn.1"] + vals["mlp.1"], vals["resid.1"],
                               atol=1e-5, rtol=1e-5)
    # resid.L is what HF reports as hidden state L+1
    hf = sc.models.unwrap(model)
    with torch.no_grad():
        hidden = hf(**model.tokenizer("The cat sat on the mat because it was", return_tensors="pt"),
                    output_hidden_states=True).hidden_states
    torch.testing.assert_close(vals["resid.1"], hidden[2])
    assert_model_clean(model)


@pytest.mark.slow
def test_smollm2_hook_points(smol):
    model, _ = smol
    points = sc.hook_points(model)
    assert len(points) == 1 + 5 * 30       # embed; per layer resid_mid, mlp_in, attn, mlp, resid
    assert {p.name for p in points if p.layer == 7} == {"attn.7", "resid_mid.7", "mlp_in.7", "mlp.7", "resid.7"}
    assert {p.width for p in points} == {576}
    assert sc.resolve(model, "mlp.7").module_path == "model.layers.7.mlp"
    assert sc.resolve(model, "attn.7").module_path == "model.layers.7.self_attn"
    assert sc.resolve(model, "embed").module_path == "model.embed_tokens"


def test_raw_module_paths(tiny):
    model, _ = tiny
    hp = sc.resolve(model, "model.layers.1.mlp")
    assert hp.side == "output" and hp.layer == 1 and hp.width == 64
    mid = sc.resolve(model, "model.layers.1.post_attention_layernorm:input")
    assert mid.side == "input" and mid.order < sc.resolve(model, "mlp.1").order
    inner = sc.resolve(model, "model.layers.1.mlp.act_fn")
    assert inner.width == 128


@pytest.mark.parametrize("bad", ["resid.99", "resid.x", "mlp", "layers.1", "model.layers.1.mlp:sideways", ""])
def test_unknown_hook_point_lists_valid_ones(tiny, bad):
    model, _ = tiny
    with pytest.raises(HookPointError) as info:
        sc.resolve(model, bad)
    message = str(info.value)
    assert repr(bad) in message or "non-empty" in message or "side" in message
    if bad.startswith(("resid.", "mlp", "layers")):
        assert "resid.0..resid.2" in message


def test_duplicate_hook_points_refused(tiny):
    model, _ = tiny
    with pytest.raises(HookPointError, match="same place"):
        hooks.sort_by_forward_order(model, ["resid.1", "model.layers.1"])
