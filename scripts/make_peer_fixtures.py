"""Golden peer fixtures: small SAEs saved by each peer's OWN code plus the peer's OWN outputs.

Run each command inside a virtual environment that has that peer installed (see
benchmarks/RESULTS.md for the versions used); files go to tests/fixtures/peers/<peer>/:

    /work/venvs/saelens/bin/python  scripts/make_peer_fixtures.py saelens
    /work/venvs/sparsify/bin/python scripts/make_peer_fixtures.py sparsify
    /work/venvs/dl/bin/python       scripts/make_peer_fixtures.py dictionary_learning
    python3                         scripts/make_peer_fixtures.py gemmascope      (numpy only)
    /work/venvs/ct/bin/python       scripts/make_peer_fixtures.py circuit_tracer  (graph JSON schema)

    # write-back check: folders written by `saecircuits convert --to saelens` load in the real sae-lens
    /work/venvs/saelens/bin/python scripts/make_peer_fixtures.py check-saelens DIR [DIR ...]
    /work/venvs/sparsify/bin/python scripts/make_peer_fixtures.py check-sparsify DIR [DIR ...]

Every SAE folder gets `reference.safetensors` with `x [16, 32]` (fixed inputs), `feats` (the peer's
encode(x)) and `recon` (the peer's decode(feats)); tests load the folder with saecircuits and compare.
This script imports nothing from saecircuits, so it runs in a bare peer environment.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "peers"
D_IN, D_SAE, K = 32, 128, 8


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def inputs() -> torch.Tensor:
    """Fixed inputs `[16, D_IN]` shared by every fixture."""
    return torch.randn(16, D_IN, generator=_gen(1234)) * 2.0


def weights(seed: int, unit_rows: bool = True) -> dict[str, torch.Tensor]:
    """Random SAE weights in SAELens orientation with non-zero biases and thresholds."""
    g = _gen(seed)
    w_dec = torch.randn(D_SAE, D_IN, generator=g)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    if not unit_rows:
        w_dec = w_dec * (0.2 + 2.0 * torch.rand(D_SAE, 1, generator=g))
    return {"W_enc": (w_dec.T + 0.1 * torch.randn(D_IN, D_SAE, generator=g)).contiguous(),
            "W_dec": w_dec.contiguous(),
            "b_enc": 0.3 * torch.randn(D_SAE, generator=g),
            "b_dec": 0.5 * torch.randn(D_IN, generator=g),
            "threshold": 0.2 + 0.8 * torch.rand(D_SAE, generator=g)}


def write_reference(folder: Path, x: torch.Tensor, feats: torch.Tensor, recon: torch.Tensor,
                    **extra: str) -> None:
    save_file({"x": x.contiguous(), "feats": feats.detach().float().contiguous(),
               "recon": recon.detach().float().contiguous()}, str(folder / "reference.safetensors"),
              metadata={k: str(v) for k, v in extra.items()})
    print(f"{folder.relative_to(ROOT)}: L0 {float((feats != 0).float().sum(-1).mean()):.1f}")


# -- SAELens -----------------------------------------------------------------------------------
def make_saelens() -> None:
    import sae_lens
    from sae_lens import SAE
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    out, x = ROOT / "saelens", inputs()

    def meta(layer: int) -> SAEMetadata:
        return SAEMetadata(model_name="HuggingFaceTB/SmolLM2-135M", hook_name=f"blocks.{layer}.hook_resid_post")

    cases = [
        ("standard", StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=meta(1))), weights(1)),
        ("standard_no_bdec_input", StandardSAE(StandardSAEConfig(
            d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False, metadata=meta(2))), weights(2)),
        ("topk", TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, metadata=meta(3))), weights(3)),
        ("topk_rescale", TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, rescale_acts_by_decoder_norm=True,
                                               metadata=meta(4))), weights(4, unit_rows=False)),
        ("jumprelu", JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=meta(5))), weights(5)),
    ]
    for name, sae, w in cases:
        state = {n: w[n] for n in sae.state_dict()}
        sae.load_state_dict(state)
        folder = out / name
        sae.save_model(folder)
        with torch.no_grad():
            feats = sae.encode(x)
            write_reference(folder, x, feats, sae.decode(feats), peer=f"sae-lens {sae_lens.__version__}")
    # Gated: saecircuits refuses it; saved so the refusal is tested on a real file
    from sae_lens.saes.gated_sae import GatedSAE, GatedSAEConfig

    gated = GatedSAE(GatedSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=meta(7)))
    gated.save_model(out / "gated_refused")
    # BatchTopK: trained as batch top-k, saved by SAELens itself as a JumpReLU inference SAE
    cfg = BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, metadata=meta(6))
    train = BatchTopKTrainingSAE(cfg)
    w = weights(6)
    train.load_state_dict({**{n: w[n] for n in ("W_enc", "W_dec", "b_enc", "b_dec")},
                           "topk_threshold": torch.tensor(0.7)}, strict=False)
    folder = out / "batchtopk"
    train.save_inference_model(folder)
    sae = SAE.load_from_disk(folder)
    with torch.no_grad():
        feats = sae.encode(x)
        write_reference(folder, x, feats, sae.decode(feats), peer=f"sae-lens {sae_lens.__version__}",
                        saved_as=type(sae).__name__)


def check_saelens(folders: list[str]) -> None:
    """Load folders written by `saecircuits convert --to saelens` with the real sae-lens and
    compare its encode/decode with the `reference.safetensors` saecircuits wrote beside them."""
    import sae_lens
    from sae_lens import SAE

    worst = 0.0
    for name in folders:
        folder = Path(name)
        sae = SAE.load_from_disk(folder)
        ref = load_file(str(folder / "reference.safetensors"))
        with torch.no_grad():
            feats = sae.encode(ref["x"])
            recon = sae.decode(feats)
        diff = max(float((feats - ref["feats"]).abs().max()), float((recon - ref["recon"]).abs().max()))
        worst = max(worst, diff)
        print(f"{folder}: sae-lens {sae_lens.__version__} {type(sae).__name__} "
              f"hook {sae.cfg.metadata.hook_name}: max|diff| {diff:.2e}")
    print(f"worst max|diff| {worst:.2e}")
    if worst > 1e-5:
        sys.exit(1)


def check_sparsify(folders: list[str]) -> None:
    """Same as check_saelens for folders written by `saecircuits convert --to sparsify`."""
    import importlib.metadata

    from sparsify import SparseCoder

    worst = 0.0
    for name in folders:
        folder = Path(name)
        sae = SparseCoder.load_from_disk(folder)
        ref = load_file(str(folder / "reference.safetensors"))
        with torch.no_grad():
            enc = sae.encode(ref["x"])
            feats = torch.zeros_like(ref["feats"]).scatter(-1, enc.top_indices, enc.top_acts)
            recon = sae.decode(enc.top_acts, enc.top_indices)
        diff = max(float((feats - ref["feats"]).abs().max()), float((recon - ref["recon"]).abs().max()))
        worst = max(worst, diff)
        print(f"{folder}: eai-sparsify {importlib.metadata.version('eai-sparsify')}: max|diff| {diff:.2e}")
    print(f"worst max|diff| {worst:.2e}")
    if worst > 1e-5:
        sys.exit(1)


# -- sparsify ------------------------------------------------------------------------------------
def make_sparsify() -> None:
    import importlib.metadata

    from sparsify import SparseCoder, SparseCoderConfig

    version = importlib.metadata.version("eai-sparsify")
    out, x = ROOT / "sparsify", inputs()
    for name, transcode in (("layers.3", False), ("layers.4.mlp", True)):
        cfg = SparseCoderConfig(num_latents=D_SAE, k=K, transcode=transcode)
        sae = SparseCoder(D_IN, cfg, device="cpu", dtype=torch.float32)
        w = weights(10 + int(transcode))
        with torch.no_grad():
            sae.encoder.weight.copy_(w["W_enc"].T)
            sae.encoder.bias.copy_(w["b_enc"])
            sae.W_dec.copy_(w["W_dec"])
            sae.b_dec.copy_(w["b_dec"])
        folder = out / "run" / name
        sae.save_to_disk(folder)
        with torch.no_grad():
            enc = sae.encode(x)
            top_acts, top_idx = enc.top_acts, enc.top_indices
            feats = torch.zeros(x.shape[0], D_SAE).scatter(-1, top_idx, top_acts)
            recon = sae.decode(top_acts, top_idx)
        write_reference(folder, x, feats, recon, peer=f"eai-sparsify {version}", transcode=transcode)


# -- dictionary_learning -------------------------------------------------------------------------
def make_dictionary_learning() -> None:
    import importlib.metadata

    from dictionary_learning.dictionary import AutoEncoder, JumpReluAutoEncoder
    from dictionary_learning.trainers.top_k import AutoEncoderTopK

    version = importlib.metadata.version("dictionary-learning")
    out, x = ROOT / "dictionary_learning", inputs()
    for name, cls, layer in (("AutoEncoder", AutoEncoder, 1), ("AutoEncoderTopK", AutoEncoderTopK, 2),
                             ("JumpReluAutoEncoder", JumpReluAutoEncoder, 3)):
        ae = cls(D_IN, D_SAE, k=K) if cls is AutoEncoderTopK else cls(D_IN, D_SAE)
        w = weights(20 + layer)
        state = ae.state_dict()
        mapped = {"encoder.weight": w["W_enc"].T, "encoder.bias": w["b_enc"], "decoder.weight": w["W_dec"].T,
                  "bias": w["b_dec"], "b_dec": w["b_dec"], "W_enc": w["W_enc"], "W_dec": w["W_dec"],
                  "b_enc": w["b_enc"], "threshold": w["threshold"]}
        new = {n: (mapped[n].contiguous() if n in mapped and mapped[n].shape == v.shape else v)
               for n, v in state.items()}
        ae.load_state_dict(new)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(ae.state_dict(), folder / "ae.pt")
        trainer = {"dict_class": name, "activation_dim": D_IN, "dict_size": D_SAE, "layer": layer,
                   "lm_name": "HuggingFaceTB/SmolLM2-135M", "submodule_name": f"resid_post_layer_{layer}"}
        if cls is AutoEncoderTopK:
            trainer["k"] = K
        (folder / "config.json").write_text(json.dumps({"trainer": trainer}, indent=1))
        with torch.no_grad():
            feats = ae.encode(x)
            write_reference(folder, x, feats, ae.decode(feats), peer=f"dictionary-learning {version}")
    # BatchTopKSAE: saecircuits refuses it; saved so the refusal is tested on a real file
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE

    folder = out / "BatchTopKSAE_refused"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(BatchTopKSAE(D_IN, D_SAE, K).state_dict(), folder / "ae.pt")
    (folder / "config.json").write_text(json.dumps({"trainer": {
        "dict_class": "BatchTopKSAE", "activation_dim": D_IN, "dict_size": D_SAE, "k": K, "layer": 4,
        "lm_name": "HuggingFaceTB/SmolLM2-135M", "submodule_name": "resid_post_layer_4"}}, indent=1))


# -- Gemma Scope (released params.npz layout; reference = the published numpy formula) ----------
def make_gemmascope() -> None:
    x = inputs().numpy().astype(np.float32)
    for layer, width, l0, seed in ((5, "width_16k", 41, 30), (5, "width_16k", 82, 31), (7, "width_16k", 20, 32)):
        w = {k: v.numpy().astype(np.float32) for k, v in weights(seed).items()}
        folder = ROOT / "gemmascope" / f"layer_{layer}" / width / f"average_l0_{l0}"
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "params.npz", **w)
        # Gemma Scope's JumpReLUSAE.encode: pre = x @ W_enc + b_enc (b_dec is NOT subtracted)
        pre = x @ w["W_enc"] + w["b_enc"]
        feats = (pre > w["threshold"]) * np.maximum(pre, 0)
        recon = feats @ w["W_dec"] + w["b_dec"]
        write_reference(folder, torch.from_numpy(x), torch.from_numpy(feats.astype(np.float32)),
                        torch.from_numpy(recon.astype(np.float32)), peer="gemma-scope formula (numpy)")


# -- circuit-tracer graph schema -----------------------------------------------------------------
def make_circuit_tracer() -> None:
    import importlib.metadata

    from circuit_tracer.frontend.graph_models import Model

    schema = Model.model_json_schema()
    schema["$comment"] = f"exported from circuit_tracer.frontend.graph_models.Model, " \
                         f"circuit-tracer {importlib.metadata.version('circuit-tracer')}"
    path = ROOT / "circuit_tracer_graph_schema.json"
    path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")


PEERS = {"saelens": make_saelens, "sparsify": make_sparsify, "dictionary_learning": make_dictionary_learning,
         "gemmascope": make_gemmascope, "circuit_tracer": make_circuit_tracer}

if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "check-saelens":
        check_saelens(sys.argv[2:])
    elif len(sys.argv) >= 2 and sys.argv[1] == "check-sparsify":
        check_sparsify(sys.argv[2:])
    elif len(sys.argv) == 2 and sys.argv[1] in PEERS:
        PEERS[sys.argv[1]]()
    else:
        sys.exit(f"usage: make_peer_fixtures.py {{{'|'.join(PEERS)}}} | check-saelens DIR... | check-sparsify DIR...")
