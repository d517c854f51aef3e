"""Write SAEs in other libraries' formats (write-back), checked with the peers' own loaders.

- `saelens`: `<out>/<hook>/cfg.json` (v6 nested config) + `sae_weights.safetensors`; loads with
  `sae_lens.SAE.load_from_disk` (relu -> standard, topk -> topk, jumprelu / batchtopk -> jumprelu,
  since batchtopk runs as a per-latent threshold at inference). The hook point is written as the
  TransformerLens name (`resid.L` -> `blocks.L.hook_resid_post`) and kept verbatim in
  `metadata.saecircuits_hook`, so saecircuits -> SAELens -> saecircuits is exact.
- `sparsify`: `<out>/<hookpoint>/cfg.json` + `sae.safetensors` (`encoder.weight [d_sae, d_in]`,
  `encoder.bias`, `W_dec`, `b_dec`) with HF hookpoints (`resid.L` -> `layers.L`); TopK only. Our
  hook name goes into the safetensors header's metadata (`saecircuits_hook`), which sparsify's
  loader does not read (in cfg.json it made sparsify print "Dropping extra args").
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from ..errors import ConfigError, SAEFormatError
from ..fileio import write_json, write_safetensors
from ..dictionaries import Dictionary as SAE

TARGETS = ("native", "saelens", "sparsify", "circuit_tracer")
_HOOK = re.compile(r"^(resid|mlp|attn)\.(\d+)$")
_SAELENS_ARCH = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}


def transformerlens_hook(hook: str) -> str:
    """`resid.5` -> `blocks.5.hook_resid_post`, `mlp.5` -> `blocks.5.hook_mlp_out`, `embed` -> resid_pre 0."""
    if hook == "embed":
        return "blocks.0.hook_resid_pre"
    match = _HOOK.match(hook)
    if not match:
        raise SAEFormatError(f"hook point {hook!r} has no TransformerLens name (expected embed, resid.L, "
                             "mlp.L or attn.L)")
    kind = {"resid": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}[match.group(1)]
    return f"blocks.{match.group(2)}.hook_{kind}"


def sparsify_hookpoint(hook: str) -> str:
    """`resid.5` -> `layers.5`, `mlp.5` -> `layers.5.mlp`, `attn.5` -> `layers.5.self_attn`."""
    match = _HOOK.match(hook)
    if not match:
        raise SAEFormatError(f"hook point {hook!r} has no sparsify hookpoint (expected resid.L, mlp.L or attn.L)")
    suffix = {"resid": "", "mlp": ".mlp", "attn": ".self_attn"}[match.group(1)]
    return f"layers.{match.group(2)}{suffix}"


def save_saelens(sae: SAE, folder: str | Path) -> Path:
    """Write one SAE as a SAELens v6 folder (`cfg.json` + `sae_weights.safetensors`)."""
    cfg = sae.cfg
    arch = _SAELENS_ARCH[cfg.architecture]
    tensors = sae.state_tensors()
    if arch != "jumprelu":
        tensors.pop("threshold", None)
    # sae_lens_version names the config layout (v6); without it SAELens reads a pre-6 flat config
    meta = {"sae_lens_version": "6.0.0", "model_name": cfg.model_name or None,
            "hook_name": transformerlens_hook(cfg.hook),
            "saecircuits_hook": cfg.hook, "saecircuits_architecture": cfg.architecture, "saecircuits_k": cfg.k}
    out = {"architecture": arch, "d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": cfg.dtype, "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
           "metadata": meta}
    if arch == "topk":
        out.update(k=cfg.k, rescale_acts_by_decoder_norm=False)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / "sae_weights.safetensors", {k: v.contiguous() for k, v in tensors.items()})
    write_json(folder / "cfg.json", out)
    return folder


def save_sparsify(sae: SAE, folder: str | Path) -> Path:
    """Write one TopK SAE as a sparsify folder (`cfg.json` + `sae.safetensors`)."""
    cfg = sae.cfg
    if cfg.architecture != "topk":
        raise SAEFormatError(f"sparsify stores TopK SAEs only; the SAE at {cfg.hook!r} is {cfg.architecture}")
    t = sae.state_tensors()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / "sae.safetensors", {"encoder.weight": t["W_enc"].T.contiguous(),
                                                   "encoder.bias": t["b_enc"].contiguous(),
                                                   "W_dec": t["W_dec"].contiguous(), "b_dec": t["b_dec"].contiguous()},
                      metadata={"saecircuits_hook": cfg.hook})
    write_json(folder / "cfg.json", {
        "activation": "topk", "expansion_factor": max(1, math.ceil(cfg.d_sae / cfg.d_in)),
        "normalize_decoder": False, "num_latents": cfg.d_sae, "k": cfg.k, "multi_topk": False,
        "skip_connection": False, "transcode": False, "d_in": cfg.d_in})
    return folder


def write_reference(sae: SAE, folder: Path, seed: int = 0, rows: int = 16) -> None:
    """`reference.safetensors`: fixed inputs `x [rows, d_in]`, our `feats` and `recon = decode(feats)`,
    for checking written files with the peer's own code (scripts/make_peer_fixtures.py check-saelens)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, sae.cfg.d_in, generator=gen).to(sae.dtype)
    with torch.no_grad():
        feats = sae.encode(x)
        recon = sae.decode(feats)
    write_safetensors(folder / "reference.safetensors",
                      {"x": x.float().contiguous(), "feats": feats.float().contiguous(),
                       "recon": recon.float().contiguous()})


def convert_sae_set(saes, out: str | Path, to: str, reference: bool = False) -> dict[str, str]:
    """Write every SAE of `saes` under `out` in format `to`; returns {hook: folder}."""
    if to not in TARGETS:
        raise ConfigError(f"unknown target format {to!r}; expected one of {', '.join(TARGETS)}")
    out = Path(out)
    if to == "circuit_tracer":
        from .circuit_tracer import save_transcoder_set

        model = next((s.cfg.model_name for s in saes.values() if s.cfg.model_name), "")
        folder = save_transcoder_set(dict(saes), out, model_name=model)
        written = {name: str(folder) for name in saes}
        write_json(out / "saecircuits_convert.json", {"to": to, "saes": written})
        return written
    for hook, sae in saes.items():  # refuse before writing anything
        if sae.is_transcoder and to != "native":
            raise SAEFormatError(f"the transcoder {hook!r} has no {to} form here; write it with "
                                 "--to native or --to circuit_tracer")
    if to == "sparsify":
        for hook, sae in saes.items():
            if sae.cfg.architecture != "topk":
                raise SAEFormatError(f"sparsify stores TopK SAEs only; the SAE at {hook!r} is "
                                     f"{sae.cfg.architecture} (convert --to saelens keeps it)")
            sparsify_hookpoint(hook)
    written: dict[str, str] = {}
    for hook, sae in saes.items():
        if to == "sparsify":
            folder = save_sparsify(sae, out / sparsify_hookpoint(hook))
        elif to == "saelens":
            folder = save_saelens(sae, out / hook)
        else:
            folder = sae.save(out / hook)
        if reference:
            write_reference(sae, folder)
        written[hook] = str(folder)
    write_json(out / "saecircuits_convert.json", {"to": to, "saes": written})
    return written
