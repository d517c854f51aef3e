"""Loads of files saved by the peers' OWN code, compared with the peers' OWN encode/decode outputs.

Fixtures: tests/fixtures/peers/<peer>/..., made by scripts/make_peer_fixtures.py inside each peer's
virtual environment (versions in each reference.safetensors' metadata and benchmarks/RESULTS.md).
"""
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from saecircuits import SAESet
from saecircuits.errors import SAEFormatError
from saecircuits.formats import load_sae, load_sae_set

PEERS = Path(__file__).parent / "fixtures" / "peers"
TOL = 1e-5  # absolute, for values of order 1; scaled by the largest |value| above that (float32 ulps)

# fixture folder (relative to PEERS) -> (hook point it must read, kwargs for load_sae)
CASES = {
    "saelens/standard": ("resid.1", {}),
    "saelens/standard_no_bdec_input": ("resid.2", {}),
    "saelens/topk": ("resid.3", {}),
    "saelens/topk_rescale": ("resid.4", {}),
    "saelens/jumprelu": ("resid.5", {}),
    "saelens/batchtopk": ("resid.6", {}),
    "gemmascope/layer_5/width_16k/average_l0_41": ("resid.5", {}),
    "gemmascope/layer_7/width_16k/average_l0_20": ("resid.7", {}),
    "sparsify/run/layers.3": ("resid.3", {}),
    "sparsify/run/layers.4.mlp": ("mlp.4", {"transcoder": True}),
    "dictionary_learning/AutoEncoder": ("resid.1", {}),
    "dictionary_learning/AutoEncoderTopK": ("resid.2", {}),
    "dictionary_learning/JumpReluAutoEncoder": ("resid.3", {}),
}


def reference(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "reference.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def max_diff(sae, ref) -> tuple[float, float]:
    """Max |ours - peer's| of encode(x) and decode(peer feats), each divided by max(1, max |peer value|)."""
    with torch.no_grad():
        feats = sae.encode(ref["x"])
        recon = sae.decode(ref["feats"])
    scale = [max(1.0, float(ref[n].abs().max())) for n in ("feats", "recon")]
    return (float((feats - ref["feats"]).abs().max()) / scale[0],
            float((recon - ref["recon"]).abs().max()) / scale[1])


def present(rel: str) -> bool:
    return (PEERS / rel / "reference.safetensors").is_file()


@pytest.mark.parametrize("rel", sorted(CASES))
def test_peer_file_matches_peer_outputs(rel):
    if not present(rel):
        pytest.skip(f"fixture {rel} not generated (peer package did not install)")
    hook, kwargs = CASES[rel]
    sae = load_sae(PEERS / rel, **kwargs)
    assert sae.cfg.hook == hook
    enc, dec = max_diff(sae, reference(PEERS / rel))
    assert enc <= TOL and dec <= TOL, (rel, enc, dec)
    # the peer's features are active: the comparison is not between two zero tensors
    assert (reference(PEERS / rel)["feats"] != 0).sum() > 50


def test_every_fixture_is_covered():
    found = {str(p.parent.relative_to(PEERS)) for p in PEERS.rglob("reference.safetensors")}
    assert found <= set(CASES) | {"gemmascope/layer_5/width_16k/average_l0_82"}, found - set(CASES)


def test_sparsify_transcoder_refused_as_sae():
    rel = "sparsify/run/layers.4.mlp"
    if not present(rel):
        pytest.skip("sparsify fixtures not generated")
    with pytest.raises(SAEFormatError, match="transcoder"):
        load_sae(PEERS / rel)
    with pytest.raises(SAEFormatError, match="transcoder"):
        load_sae_set(PEERS / "sparsify" / "run")
    tc = load_sae(PEERS / rel, transcoder=True)
    assert tc.cfg.metadata["transcoder"] is True


def test_gemmascope_tree_and_variants():
    root = PEERS / "gemmascope"
    with pytest.raises(SAEFormatError, match="average_l0_41.*average_l0_82|variant"):
        load_sae_set(root)
    saes = SAESet.load(root, variant="average_l0_41")
    assert sorted(saes) == ["resid.5", "resid.7"]
    enc, dec = max_diff(saes["resid.5"], reference(root / "layer_5/width_16k/average_l0_41"))
    assert enc <= TOL and dec <= TOL
    only = SAESet.load(root, variant="average_l0_82", hooks=["resid.5"])
    assert list(only) == ["resid.5"]
    enc, _ = max_diff(only["resid.5"], reference(root / "layer_5/width_16k/average_l0_82"))
    assert enc <= TOL
    with pytest.raises(SAEFormatError, match="matches 0"):
        load_sae_set(root, variant="average_l0_999")


def test_saelens_directory_as_set():
    if not present("saelens/topk"):
        pytest.skip("sae-lens fixtures not generated")
    saes = SAESet.load(PEERS / "saelens", format="saelens")
    assert sorted(saes) == [f"resid.{i}" for i in range(1, 7)]
    one = SAESet.load(PEERS / "saelens" / "topk_rescale")
    assert list(one) == ["resid.4"]
