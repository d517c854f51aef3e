import json

import pytest
import torch

from saecircuits import SAE, SAEConfig, SAESet
from saecircuits.errors import ConfigError, HookPointError, SAEFormatError, ShapeError
from saecircuits.sae import ARCHITECTURES


def make(arch: str, d_in=16, d_sae=64, k=4, seed=0, dtype="float32") -> SAE:
    from saecircuits.dictionaries import get

    sae = SAE.random(SAEConfig(arch, d_in, d_sae, k=k if get(arch).uses_k else None,
                               hook="resid.1", dtype=dtype), seed=seed)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed + 1))
        if sae.threshold is not None:
            sae.threshold.fill_(0.05)
    return sae


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_shapes_and_sparsity(arch):
    sae = make(arch)
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(0))
    f = sae.encode(x)
    assert f.shape == (3, 5, 64) and (f >= 0).all()
    assert sae.decode(f).shape == x.shape and sae(x).shape == x.shape
    if arch == "topk":
        assert ((f != 0).sum(-1) <= 4).all()
    if arch in ("jumprelu", "batchtopk"):
        assert ((f == 0) | (f > 0.05)).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_any_input_dtype(dtype):
    sae = make("topk")
    x = torch.randn(2, 16).to(dtype)
    assert sae(x).dtype == dtype
    torch.testing.assert_close(sae(x).float(), sae(x.float()), atol=0.05, rtol=0.05)


def test_bfloat16_sae_roundtrip(tmp_path):
    sae = make("relu", dtype="bfloat16")
    sae.save(tmp_path / "s")
    again = SAE.load(tmp_path / "s")
    assert again.dtype == torch.bfloat16
    assert torch.equal(again.W_enc, sae.W_enc)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_save_load_roundtrip_is_exact(arch, tmp_path):
    sae = make(arch)
    sae.cfg.metadata["tokens"] = 123
    sae.save(tmp_path / "sae")
    again = SAE.load(tmp_path / "sae")
    assert again.cfg == sae.cfg
    for name, value in sae.state_tensors().items():
        assert torch.equal(value, again.state_tensors()[name])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fold_input_scale_keeps_features(arch):
    sae = make(arch)
    x = torch.randn(7, 16, generator=torch.Generator().manual_seed(3))
    scale = 2.5
    f_scaled, rec_scaled = sae.encode(x * scale), sae(x * scale) / scale
    sae.fold_input_scale(scale)
    torch.testing.assert_close(sae.encode(x), f_scaled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae(x), rec_scaled, atol=1e-5, rtol=1e-5)
    assert sae.cfg.normalization_scale == scale


@pytest.mark.parametrize("kwargs, match", [
    (dict(architecture="gated", d_in=4, d_sae=8), "gated"),
    (dict(architecture="topk", d_in=4, d_sae=8, k=9), "k must"),
    (dict(architecture="topk", d_in=4, d_sae=8, k=0), "k must"),
    (dict(architecture="topk", d_in=4, d_sae=8), "k must"),
    (dict(architecture="relu", d_in=0, d_sae=8), "d_in"),
    (dict(architecture="relu", d_in=4, d_sae=8, dtype="int8"), "int8"),
])
def test_bad_configs(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SAEConfig(**kwargs)


def test_wrong_inputs():
    sae = make("relu")
    with pytest.raises(ShapeError, match="d_in=16"):
        sae.encode(torch.randn(2, 17))
    with pytest.raises(ShapeError, match="floating-point"):
        sae.encode(torch.ones(2, 16, dtype=torch.long))
    with pytest.raises(ShapeError, match="d_sae=64"):
        sae.decode(torch.randn(2, 63))
    with pytest.raises(ShapeError, match="meta"):
        sae.encode(torch.randn(2, 16, device="meta"))


def _corrupt(tmp_path, mutate):
    from safetensors.torch import load_file, save_file

    make("jumprelu").save(tmp_path / "s")
    tensors = load_file(tmp_path / "s" / "sae.safetensors")
    mutate(tensors)
    save_file(tensors, tmp_path / "s" / "sae.safetensors")
    return tmp_path / "s"


@pytest.mark.parametrize("mutate, match", [
    (lambda t: t.pop("threshold"), "missing tensors \\['threshold'\\]"),
    (lambda t: t.update(extra=torch.zeros(2)), "unexpected tensors \\['extra'\\]"),
    (lambda t: t.update(W_dec=torch.zeros(64, 15)), "W_dec has shape"),
    (lambda t: t.update(b_enc=torch.full((64,), float("nan"))), "b_enc contains NaN"),
    (lambda t: t.update(b_dec=t["b_dec"].double()), "b_dec has dtype"),
])
def test_corrupt_weights_rejected(tmp_path, mutate, match):
    with pytest.raises(SAEFormatError, match=match):
        SAE.load(_corrupt(tmp_path, mutate))


def test_corrupt_files_rejected(tmp_path):
    folder = make("relu").save(tmp_path / "s")
    (folder / "sae.safetensors").write_bytes(b"garbage")
    with pytest.raises(SAEFormatError, match="safetensors"):
        SAE.load(folder)
    (folder / "cfg.json").write_text("{not json")
    with pytest.raises(SAEFormatError, match="JSON"):
        SAE.load(folder)
    (folder / "cfg.json").write_text(json.dumps({"architecture": "banana", "d_in": 16, "d_sae": 64}))
    with pytest.raises(SAEFormatError, match="banana"):
        SAE.load(folder)
    (folder / "cfg.json").unlink()
    with pytest.raises(SAEFormatError, match="cfg.json"):
        SAE.load(folder)


def test_saeset_roundtrip_and_checks(tiny, tmp_path):
    model, _ = tiny
    saes = SAESet({h: make("topk", d_in=64, d_sae=128, seed=i) for i, h in enumerate(["resid.0", "mlp.2"])})
    saes.save(tmp_path / "set")
    again = SAESet.load(tmp_path / "set", model=model)
    assert sorted(again) == ["mlp.2", "resid.0"]
    assert torch.equal(again["mlp.2"].W_dec, saes["mlp.2"].W_dec)
    assert list(SAESet.load(tmp_path / "set", hooks=["mlp.2"])) == ["mlp.2"]
    with pytest.raises(SAEFormatError, match="resid.5"):
        SAESet.load(tmp_path / "set", hooks=["resid.5"])
    with pytest.raises(HookPointError, match="attn.1"):
        again["attn.1"]
    assert "attn.1" not in again and again.get("attn.1") is None and "mlp.2" in again
    narrow = SAESet({"resid.0": make("relu", d_in=16)})
    with pytest.raises(ShapeError, match="d_in=16"):
        narrow.check(model)
    with pytest.raises(SAEFormatError, match="does not exist"):
        SAESet.load(tmp_path / "nope")
    single = SAESet.load(tmp_path / "set" / "mlp.2")      # one folder: a one-entry set
    assert list(single) == ["mlp.2"] and torch.equal(single["mlp.2"].W_dec, saes["mlp.2"].W_dec)
    (tmp_path / "set" / "mlp.2" / "cfg.json").write_text("{not json")
    with pytest.raises(SAEFormatError, match="not valid JSON"):
        SAESet.load(tmp_path / "set")
