import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from saecircuits import SAE, SAEConfig
from saecircuits.errors import ConfigError, SAEFormatError
from saecircuits.sae import load_sae_set
from saecircuits.formats import hook_from_transformerlens, load_sae


def reference(arch: str, seed=0) -> SAE:
    sae = SAE.random(SAEConfig(arch, 16, 48, k=6 if arch == "topk" else None, hook="resid.3"), seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=g)
        sae.b_dec.normal_(0, 0.1, generator=g)
        if sae.threshold is not None:
            sae.threshold.uniform_(0.0, 0.05, generator=g)
    return sae


def assert_same_codes(a: SAE, b: SAE) -> None:
    x = torch.randn(10, 16, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a.encode(x), b.encode(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu"])
def test_saelens_v6(tmp_path, arch):
    ref = reference(arch)
    save_file({k: v.contiguous() for k, v in ref.state_tensors().items()}, tmp_path / "sae_weights.safetensors")
    cfg = {"architecture": {"relu": "standard"}.get(arch, arch), "d_in": 16, "d_sae": 48, "dtype": "float32",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "k": 6,
           "metadata": {"model_name": "m", "hook_name": "blocks.3.hook_resid_post"}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    sae = load_sae(tmp_path)
    assert sae.cfg.hook == "resid.3" and sae.cfg.architecture == arch
    assert_same_codes(ref, sae)


def test_saelens_pre_v6_without_b_dec_on_input(tmp_path):
    ref = reference("relu")
    t = ref.state_tensors()
    # a file whose encoder does not subtract b_dec: b_enc' = b_enc - b_dec W_enc gives the same codes
    t["b_enc"] = t["b_enc"] - t["b_dec"] @ t["W_enc"]
    save_file({k: v.contiguous() for k, v in t.items()}, tmp_path / "sae_weights.safetensors")
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 16, "d_sae": 48, "activation_fn_str": "relu",
                                                   "apply_b_dec_to_input": False,
                                                   "hook_point": "blocks.4.hook_resid_pre"}))
    sae = load_sae(tmp_path)
    assert sae.cfg.hook == "resid.3"
    assert_same_codes(ref, sae)


def test_sparsify(tmp_path):
    ref = reference("topk")
    folder = tmp_path / "run" / "layers.3"
    folder.mkdir(parents=True)
    t = ref.state_tensors()
    save_file({"encoder.weight": t["W_enc"].T.contiguous(), "encoder.bias": t["b_enc"],
               "W_dec": t["W_dec"], "b_dec": t["b_dec"]}, folder / "sae.safetensors")
    (folder / "cfg.json").write_text(json.dumps({"k": 6, "num_latents": 48, "expansion_factor": 3,
                                                 "activation": "topk"}))
    saes = load_sae_set(tmp_path / "run")
    assert list(saes) == ["resid.3"]
    assert_same_codes(ref, saes["resid.3"])


@pytest.mark.parametrize("cls", ["AutoEncoder", "AutoEncoderTopK", "JumpReluAutoEncoder"])
def test_dictionary_learning(tmp_path, cls):
    ref = reference({"AutoEncoder": "relu", "AutoEncoderTopK": "topk"}.get(cls, "jumprelu"))
    t = ref.state_tensors()
    if cls == "JumpReluAutoEncoder":  # its encoder does not subtract b_dec: x W_enc + b_enc
        state = dict(t, b_enc=t["b_enc"] - t["b_dec"] @ t["W_enc"])
    else:
        state = {"encoder.weight": t["W_enc"].T.contiguous(), "encoder.bias": t["b_enc"],
                 "decoder.weight": t["W_dec"].T.contiguous(),
                 ("bias" if cls == "AutoEncoder" else "b_dec"): t["b_dec"]}
        if cls == "AutoEncoderTopK":
            state["k"] = torch.tensor(6)
    torch.save(state, tmp_path / "ae.pt")
    (tmp_path / "config.json").write_text(json.dumps({"trainer": {
        "dict_class": cls, "activation_dim": 16, "dict_size": 48, "k": 6 if cls == "AutoEncoderTopK" else None,
        "layer": 3, "lm_name": "m", "submodule_name": "resid_post_layer_3"}}))
    sae = load_sae(tmp_path)
    assert sae.cfg.hook == "resid.3"
    assert_same_codes(ref, sae)


def test_gemmascope(tmp_path):
    ref = reference("jumprelu")
    t = ref.state_tensors()  # Gemma Scope encodes x W_enc + b_enc (no b_dec subtraction)
    t["b_enc"] = t["b_enc"] - t["b_dec"] @ t["W_enc"]
    np.savez(tmp_path / "params.npz", **{k: v.numpy() for k, v in t.items()})
    with pytest.raises(SAEFormatError, match="hook"):
        load_sae(tmp_path)
    assert_same_codes(ref, load_sae(tmp_path, hook="resid.3"))


def test_native_and_bad_inputs(tmp_path):
    ref = reference("relu")
    ref.save(tmp_path / "native")
    assert_same_codes(ref, load_sae(tmp_path / "native"))
    with pytest.raises(ConfigError, match="onnx"):
        load_sae(tmp_path / "native", format="onnx")
    with pytest.raises(SAEFormatError, match="does not exist"):
        load_sae(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAEFormatError, match="known format"):
        load_sae(tmp_path / "empty")
    with pytest.raises(SAEFormatError, match="hook_banana"):
        hook_from_transformerlens("blocks.1.hook_banana")
    broken = tmp_path / "broken"
    broken.mkdir()
    save_file({"W_enc": torch.zeros(16, 48)}, broken / "sae_weights.safetensors")
    (broken / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": 16, "d_sae": 48,
                                                 "metadata": {"hook_name": "blocks.0.hook_resid_post"}}))
    with pytest.raises(SAEFormatError, match="b_enc"):
        load_sae(broken)
