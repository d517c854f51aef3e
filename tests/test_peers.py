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
from saecircuits.sae import load_sae_set
from saecircuits.formats import load_sae

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
    "sparsify/run/layers.4.mlp": ("mlp_in.4", {}),   # a transcoder: reads mlp_in.4, writes mlp.4
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


def test_sparsify_transcoder_loads_as_a_transcoder():
    """sparsify's transcoder (transcode=True at layers.4.mlp) is a transcoder mlp_in.4 -> mlp.4 of
    the dictionary family; a run mixing it with SAEs is refused as a set."""
    from saecircuits.errors import ConfigError

    rel = "sparsify/run/layers.4.mlp"
    if not present(rel):
        pytest.skip("sparsify fixtures not generated")
    tc = load_sae(PEERS / rel)
    assert tc.is_transcoder and (tc.read_sites, tc.write_sites) == (["mlp_in.4"], ["mlp.4"])
    assert not tc.cfg.subtracts_b_dec
    with pytest.raises(ConfigError, match="mixes SAEs and transcoders"):
        load_sae_set(PEERS / "sparsify" / "run")


@pytest.mark.parametrize("rel,word", [("saelens/gated_refused", "gated"),
                                      ("dictionary_learning/BatchTopKSAE_refused", "BatchTopKSAE")])
def test_unsupported_peer_files_are_refused(rel, word):
    if not (PEERS / rel).is_dir():
        pytest.skip(f"fixture {rel} not generated")
    with pytest.raises(SAEFormatError, match=word):
        load_sae(PEERS / rel)


def test_saelens_set_of_supported_folders(tmp_path):
    import shutil

    if not present("saelens/topk"):
        pytest.skip("sae-lens fixtures not generated")
    for name in ("standard", "topk_rescale", "batchtopk"):
        shutil.copytree(PEERS / "saelens" / name, tmp_path / name)
    saes = SAESet.load(tmp_path)
    assert sorted(saes) == ["resid.1", "resid.4", "resid.6"]
    enc, dec = max_diff(saes["resid.4"], reference(tmp_path / "topk_rescale"))
    assert enc <= TOL and dec <= TOL


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
    with pytest.raises(SAEFormatError, match="gated"):  # one refused SAE refuses the set, naming it
        SAESet.load(PEERS / "saelens", format="saelens")
    one = SAESet.load(PEERS / "saelens" / "topk_rescale")
    assert list(one) == ["resid.4"]


def _random_set() -> SAESet:
    from saecircuits import SAE, SAEConfig

    saes = {}
    for i, (arch, hook) in enumerate([("relu", "resid.1"), ("topk", "resid.2"), ("jumprelu", "mlp.3"),
                                      ("batchtopk", "attn.4")]):
        sae = SAE.random(SAEConfig(arch, 32, 128, k=8 if arch in ("topk", "batchtopk") else None, hook=hook,
                                   model_name="m"), seed=i)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            sae.b_enc.normal_(0, 0.3, generator=g)
            sae.b_dec.normal_(0, 0.5, generator=g)
            if sae.threshold is not None:
                sae.threshold.uniform_(0.01, 0.05, generator=g)
        saes[hook] = sae
    return SAESet(saes)


def test_round_trip_through_saelens_is_exact(tmp_path):
    from saecircuits.cli import main

    saes = _random_set()
    saes.save(tmp_path / "native")
    assert main(["convert", str(tmp_path / "native"), "--to", "saelens", "--out", str(tmp_path / "sl"),
                 "--reference"]) == 0
    cfg = (tmp_path / "sl" / "mlp.3" / "cfg.json").read_text()
    assert '"architecture": "jumprelu"' in cfg and "blocks.3.hook_mlp_out" in cfg
    assert (tmp_path / "sl" / "resid.2" / "sae_weights.safetensors").is_file()
    back = SAESet.load(tmp_path / "sl")
    assert sorted(back) == sorted(saes)
    for hook, sae in saes.items():
        got = back[hook]
        assert (got.cfg.architecture, got.cfg.k, got.cfg.hook, got.cfg.model_name) == \
               (sae.cfg.architecture, sae.cfg.k, sae.cfg.hook, sae.cfg.model_name)
        for name, value in sae.state_tensors().items():
            assert torch.equal(value, got.state_tensors()[name]), (hook, name)
        ref = reference(tmp_path / "sl" / hook)  # our own outputs written beside the files
        assert torch.equal(got.encode(ref["x"]), ref["feats"])


def test_convert_to_sparsify_and_refusals(tmp_path, capsys):
    from saecircuits.cli import main

    saes = _random_set()
    saes.save(tmp_path / "native")
    assert main(["convert", str(tmp_path / "native"), "--to", "sparsify", "--out", str(tmp_path / "sp")]) == 2
    assert "TopK" in capsys.readouterr().err and not (tmp_path / "sp").exists()
    assert main(["convert", str(tmp_path / "native"), "--hooks", "resid.2", "--to", "sparsify",
                 "--out", str(tmp_path / "sp")]) == 0
    back = load_sae(tmp_path / "sp" / "layers.2")
    assert back.cfg.hook == "resid.2"
    for name, value in saes["resid.2"].state_tensors().items():
        assert torch.equal(value, back.state_tensors()[name])


def test_cli_reads_peer_files(tmp_path):
    """Every --saes command goes through one loader: a sparsify run and a Gemma Scope tree load."""
    import argparse

    from saecircuits.commands.saes_args import add_saes_arguments, load_saes

    parser = argparse.ArgumentParser()
    add_saes_arguments(parser)
    args = parser.parse_args(["--saes", str(PEERS / "gemmascope"), "--variant", "average_l0_82"])
    assert sorted(load_saes(args)) == ["resid.5", "resid.7"]
    if present("saelens/topk"):
        args = parser.parse_args(["--saes", str(PEERS / "saelens" / "topk"), "--format", "saelens"])
        assert list(load_saes(args)) == ["resid.3"]
    args = parser.parse_args(["--saes", str(PEERS / "gemmascope"), "--format", "onnx"])
    with pytest.raises(Exception, match="onnx"):
        load_saes(args)


# -- attribution graphs for circuit-tracer / Neuronpedia -----------------------------------------
SCHEMA = PEERS / "circuit_tracer_graph_schema.json"


def _traced_like_graph(with_tokens: bool):
    """A graph shaped like `trace` output: positional features at two hooks of one layer, a summed
    feature, error nodes, the metric node; prompt tokens only when `with_tokens`."""
    from saecircuits.attribution.graph import FeatureGraph

    meta = {"task": "ioi", "method": "attrib", "model": "SmolLM2-135M-Instruct", "metric": "ioi logit_diff",
            "prompt": "When Mary and John went to the store, John gave a drink to"}
    if with_tokens:
        meta["prompt_tokens"] = ["When", " Mary", " and", " John", " went", " to", " the", " store", ",", " John",
                                 " gave", " a", " drink", " to"]
    g = FeatureGraph(meta=meta)
    nodes = [("resid.4/1/7", "feature", "resid.4", 4, 1, 7), ("mlp.4/1/7", "feature", "mlp.4", 4, 1, 7),
             ("resid.4/9/err", "error", "resid.4", 4, 9, None), ("resid.10/13/3", "feature", "resid.10", 10, 13, 3),
             ("resid.10/*/5", "feature", "resid.10", 10, None, 5)]
    for nid, kind, hook, layer, pos, feat in nodes:
        g.add_node(nid, kind=kind, hook=hook, layer=layer, pos=pos, feature=feat, activation=1.0, effect=0.5,
                   label="↑ ' Mary'")
    g.add_node("metric", kind="metric", layer=30, effect=6.1, label="ioi logit_diff")
    for u in ("resid.4/1/7", "mlp.4/1/7", "resid.4/9/err"):
        g.add_edge(u, "resid.10/13/3", 0.25)
    g.add_edge("resid.10/13/3", "metric", 1.0)
    g.add_edge("resid.10/*/5", "metric", -0.5)
    return g


@pytest.mark.parametrize("with_tokens", [True, False])
def test_graph_json_validates_against_circuit_tracer_schema(tmp_path, with_tokens):
    import json
    import re

    jsonschema = pytest.importorskip("jsonschema")
    from saecircuits.export import export_graph

    export_graph(_traced_like_graph(with_tokens), tmp_path / "g", formats=["neuronpedia"])
    data = json.loads((tmp_path / "g" / "graph.json").read_text())
    assert json.loads((tmp_path / "g" / "ioi.json").read_text()) == data  # what start-server fetches
    listing = json.loads((tmp_path / "g" / "graph-metadata.json").read_text())
    assert listing["graphs"][0]["slug"] == data["metadata"]["slug"] == "ioi"
    if SCHEMA.is_file():
        jsonschema.validate(data, json.loads(SCHEMA.read_text()))
    meta = data["metadata"]
    tokens = meta["prompt_tokens"]
    assert tokens and "".join(tokens).strip() == meta["prompt"]
    assert meta["transcoder_list"] == ["resid.4", "mlp.4", "resid.10"] or \
        meta["transcoder_list"] == ["mlp.4", "resid.4", "resid.10"]
    assert meta["schema_version"] == 1 and "{hook}" in meta["feature_details"]["url_template"]
    nodes = {n["saecircuits_id"]: n for n in data["nodes"] if "saecircuits_id" in n}
    assert all(isinstance(n["feature"], int) for n in data["nodes"])
    assert len({n["node_id"] for n in data["nodes"]}) == len(data["nodes"])
    # real positions; summed and metric nodes at the last token
    assert nodes["resid.4/1/7"]["ctx_idx"] == 1 and nodes["resid.10/13/3"]["ctx_idx"] == 13
    assert nodes["resid.10/*/5"]["ctx_idx"] == nodes["metric"]["ctx_idx"] == len(tokens) - 1
    # one feature id per (hook, latent): the same latent index at resid.4 and mlp.4 differs
    assert nodes["resid.4/1/7"]["feature"] != nodes["mlp.4/1/7"]["feature"]
    assert nodes["resid.4/1/7"]["feature_json"] == "features/resid.4_7.json"
    assert nodes["resid.4/9/err"]["feature"] == -1
    assert re.fullmatch(r'Output ".+" \(p=\d\.\d{3}\)', nodes["metric"]["clerp"])
    assert int(nodes["metric"]["layer"]) == 31
    embeds = [n for n in data["nodes"] if n["feature_type"] == "embedding"]
    assert [n["ctx_idx"] for n in embeds] == list(range(len(tokens)))
    assert [n["clerp"] for n in embeds] == tokens
    ids = {n["node_id"] for n in data["nodes"]}
    assert all(link["source"] in ids and link["target"] in ids for link in data["links"])
    assert len(data["links"]) == 5


def _trace_from_saelens_files(tok, model_args, d_in, hooks, model_name, tmp_path):
    """Random TopK SAEs (untrained: this checks the file and graph plumbing, not circuit quality)
    -> SAELens files -> `trace --saes <SAELens dir>` on IOI -> `export` -> graph.json that
    circuit-tracer's schema accepts, with the real tokens and positions."""
    import json

    from saecircuits import SAE, SAEConfig
    from saecircuits.cli import main

    SAESet({h: SAE.random(SAEConfig("topk", d_in, 512, k=16, hook=h, model_name=model_name),
                          seed=i) for i, h in enumerate(hooks)}).save(tmp_path / "own")
    assert main(["convert", str(tmp_path / "own"), "--to", "saelens", "--out", str(tmp_path / "sl")]) == 0
    assert main(["trace", *model_args, "--saes", str(tmp_path / "sl"), "--format", "saelens",
                 "--task", "ioi", "--n", "4", "--top-k", "8", "--positional", "--batch-size", "4",
                 "--out", str(tmp_path / "tr")]) == 0
    assert main(["export", str(tmp_path / "tr"), "--format", "neuronpedia", "--out", str(tmp_path / "ex")]) == 0
    data = json.loads((tmp_path / "ex" / "graph.json").read_text())
    if SCHEMA.is_file():
        pytest.importorskip("jsonschema").validate(data, json.loads(SCHEMA.read_text()))
    meta = data["metadata"]
    ids = tok(meta["prompt"])["input_ids"]
    assert meta["prompt_tokens"] == [tok.decode([i]) for i in ids]
    assert sorted(meta["transcoder_list"]) == sorted(hooks)
    placed = [n for n in data["nodes"] if n["feature_type"] in ("cross layer transcoder", "mlp reconstruction error")]
    assert placed and all(0 <= n["ctx_idx"] < len(ids) for n in data["nodes"])
    assert {n["ctx_idx"] for n in placed} == {n["pos"] for n in placed}  # real positions from the trace
    assert len({n["ctx_idx"] for n in placed}) > 1
    (logit,) = [n for n in data["nodes"] if n["feature_type"] == "logit"]
    assert logit["clerp"].startswith('Output "') and "(p=" in logit["clerp"]


def test_tiny_trace_from_saelens_files_exports_a_circuit_tracer_graph(tiny, tiny_dir, tmp_path):
    _trace_from_saelens_files(tiny[1], ["--model", str(tiny_dir("llama")), "--device", "cpu"], 64,
                              ["resid.0", "resid.1", "resid.2"], str(tiny_dir("llama")), tmp_path)


@pytest.mark.slow
def test_smol_trace_from_saelens_files_exports_a_circuit_tracer_graph(smol, tmp_path):
    """SmolLM2 end to end through peer files (the embedded default model: no --model)."""
    _trace_from_saelens_files(smol[1], [], 576, ["resid.6", "resid.16", "resid.24"],
                              "SmolLM2-135M-Instruct", tmp_path)
