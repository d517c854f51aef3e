"""Read SAEs saved by other libraries into the native `SAE` class.

Formats (facts in shared/anchors.md):
- `native`: cfg.json + sae.safetensors (this library).
- `saelens`: cfg.json + sae_weights.safetensors (v6 nested or pre-v6 flat config).
- `sparsify`: cfg.json + sae.safetensors with encoder.weight [d_sae, d_in].
- `dictionary_learning`: ae.pt (state dict, loaded with weights_only=True) + config.json.
- `gemmascope`: params.npz (JumpReLU); the hook point must be given.

`load_sae(path, format="auto", hook=None)` returns one SAE; `load_sae_set(path)` a set from a
directory of such folders. Loaded weights are converted exactly (e.g. SAELens'
`apply_b_dec_to_input=False` is folded into b_enc) and validated like native files.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, SAEFormatError
from ..sae import CFG_FILE, SAE, WEIGHTS_FILE, SAEConfig, SAESet
from ..fileio import read_safetensors

FORMATS = ("native", "saelens", "sparsify", "dictionary_learning", "gemmascope")
_TL_HOOK = re.compile(r"^blocks\.(\d+)\.hook_(resid_post|mlp_out|attn_out|resid_pre)$")


def detect_format(folder: Path) -> str:
    """Guess the format of an SAE folder from its file names and config keys."""
    if (folder / "params.npz").is_file():
        return "gemmascope"
    if (folder / "ae.pt").is_file():
        return "dictionary_learning"
    if (folder / "sae_weights.safetensors").is_file():
        return "saelens"
    if (folder / CFG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
        try:
            cfg = json.loads((folder / CFG_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SAEFormatError(f"{folder / CFG_FILE} is not valid JSON: {err}") from err
        return "native" if "architecture" in cfg and "d_sae" in cfg else "sparsify"
    raise SAEFormatError(f"{str(folder)!r} holds no SAE files of a known format ({', '.join(FORMATS)})")


def hook_from_transformerlens(name: str) -> str:
    """`blocks.5.hook_resid_post` -> `resid.5` (resid_pre of block L is resid.{L-1}, or embed)."""
    match = _TL_HOOK.match(name or "")
    if not match:
        raise SAEFormatError(f"cannot map TransformerLens hook {name!r} to a hook point; pass hook=...")
    layer, kind = int(match.group(1)), match.group(2)
    if kind == "resid_pre":
        return "embed" if layer == 0 else f"resid.{layer - 1}"
    return {"resid_post": "resid", "mlp_out": "mlp", "attn_out": "attn"}[kind] + f".{layer}"


def _build(cfg: SAEConfig, tensors: dict[str, torch.Tensor], source: str) -> SAE:
    sae = SAE(cfg)
    expected = sae.state_tensors()
    for name, ref in expected.items():
        if name not in tensors:
            raise SAEFormatError(f"{source}: missing tensor {name}")
        value = tensors[name].to(ref.dtype)
        if value.shape != ref.shape:
            raise SAEFormatError(f"{source}: {name} has shape {tuple(value.shape)}, expected {tuple(ref.shape)}")
        if not torch.isfinite(value).all():
            raise SAEFormatError(f"{source}: {name} contains NaN or inf values")
        with torch.no_grad():
            getattr(sae, name).copy_(value)
    return sae


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _load_saelens(folder: Path, hook: str | None) -> SAE:
    cfg = json.loads((folder / CFG_FILE).read_text())
    tensors = read_safetensors(folder / "sae_weights.safetensors")
    meta = cfg.get("metadata") or {}
    arch = cfg.get("architecture") or cfg.get("activation_fn_str") or "standard"
    arch = {"standard": "relu", "relu": "relu", "topk": "topk", "jumprelu": "jumprelu"}.get(arch)
    if arch is None:
        raise SAEFormatError(f"{folder}: SAELens architecture {cfg.get('architecture')!r} is not supported "
                             "(supported: standard, topk, jumprelu)")
    norm = cfg.get("normalize_activations") or "none"
    if norm not in ("none",):
        raise SAEFormatError(f"{folder}: normalize_activations={norm!r} needs a dataset scale that is not "
                             "in the files; fold it into the weights first")
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    w_enc = tensors["W_enc"].float()
    if not cfg.get("apply_b_dec_to_input", True):  # pre = x W + b  ==  (x - b_dec) W + (b + b_dec W)
        tensors["b_enc"] = tensors["b_enc"].float() + tensors["b_dec"].float() @ w_enc
    hook = hook or hook_from_transformerlens(meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point"))
    sae_cfg = SAEConfig(arch, int(cfg["d_in"]), int(cfg["d_sae"]), k=int(k) if arch == "topk" else None,
                        hook=hook, model_name=meta.get("model_name") or cfg.get("model_name", ""),
                        dtype=_dtype_name(tensors["W_enc"]), metadata={"source": "saelens", "path": str(folder)})
    return _build(sae_cfg, tensors, str(folder))


def _load_sparsify(folder: Path, hook: str | None) -> SAE:
    cfg = json.loads((folder / CFG_FILE).read_text())
    tensors = read_safetensors(folder / WEIGHTS_FILE)
    if "W_skip" in tensors:
        raise SAEFormatError(f"{folder}: sparsify transcoders with W_skip are not supported")
    if cfg.get("activation", "topk") != "topk":
        raise SAEFormatError(f"{folder}: sparsify activation {cfg.get('activation')!r} is not supported")
    enc = tensors["encoder.weight"]
    d_sae, d_in = enc.shape
    if hook is None:
        match = re.fullmatch(r"(?:model\.)?layers\.(\d+)", folder.name)
        if not match:
            raise SAEFormatError(f"cannot map sparsify hookpoint {folder.name!r} to a hook point; pass hook=...")
        hook = f"resid.{match.group(1)}"
    sae_cfg = SAEConfig("topk", d_in, d_sae, k=int(cfg["k"]), hook=hook, dtype=_dtype_name(enc),
                        metadata={"source": "sparsify", "path": str(folder)})
    return _build(sae_cfg, {"W_enc": enc.T, "b_enc": tensors["encoder.bias"], "W_dec": tensors["W_dec"],
                            "b_dec": tensors["b_dec"]}, str(folder))


def _load_dictionary_learning(folder: Path, hook: str | None) -> SAE:
    trainer = json.loads((folder / "config.json").read_text()).get("trainer", {})
    state = torch.load(folder / "ae.pt", map_location="cpu", weights_only=True)
    cls = trainer.get("dict_class", "AutoEncoder")
    if hook is None:
        layer, sub = trainer.get("layer"), str(trainer.get("submodule_name", "resid"))
        kind = next((k for k in ("mlp", "attn", "resid") if k in sub), None)
        if layer is None or kind is None:
            raise SAEFormatError(f"{folder}: cannot tell the hook point from config.json; pass hook=...")
        hook = f"{kind}.{int(layer)}"
    if cls == "JumpReluAutoEncoder":
        tensors, arch, k = {n: state[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}, "jumprelu", None
    elif cls in ("AutoEncoder", "AutoEncoderTopK"):
        bias = state["bias"] if cls == "AutoEncoder" else state["b_dec"]
        tensors = {"W_enc": state["encoder.weight"].T, "b_enc": state["encoder.bias"],
                   "W_dec": state["decoder.weight"].T, "b_dec": bias}
        arch = "relu" if cls == "AutoEncoder" else "topk"
        k = int(trainer.get("k") or int(state.get("k", 0))) if arch == "topk" else None
    else:
        raise SAEFormatError(f"{folder}: dictionary_learning dict_class {cls!r} is not supported "
                             "(AutoEncoder, AutoEncoderTopK, JumpReluAutoEncoder)")
    d_in, d_sae = tensors["W_enc"].shape
    sae_cfg = SAEConfig(arch, d_in, d_sae, k=k, hook=hook, model_name=trainer.get("lm_name", ""),
                        dtype=_dtype_name(tensors["W_enc"]),
                        metadata={"source": "dictionary_learning", "path": str(folder)})
    return _build(sae_cfg, tensors, str(folder))


def _load_gemmascope(folder: Path, hook: str | None) -> SAE:
    if hook is None:
        raise SAEFormatError(f"{folder}: Gemma Scope params.npz does not name its hook point; pass hook=...")
    with np.load(folder / "params.npz", allow_pickle=False) as npz:
        tensors = {k: torch.from_numpy(npz[k].copy()) for k in npz.files}
    d_in, d_sae = tensors["W_enc"].shape
    sae_cfg = SAEConfig("jumprelu", d_in, d_sae, hook=hook, dtype=_dtype_name(tensors["W_enc"]),
                        metadata={"source": "gemmascope", "path": str(folder)})
    return _build(sae_cfg, tensors, str(folder))


_LOADERS = {"saelens": _load_saelens, "sparsify": _load_sparsify,
            "dictionary_learning": _load_dictionary_learning, "gemmascope": _load_gemmascope}


def load_sae(path, format: str = "auto", hook: str | None = None) -> SAE:
    """Load one SAE folder of any supported format (`format="auto"` detects it)."""
    folder = Path(path)
    if not folder.is_dir():
        raise SAEFormatError(f"SAE folder {str(folder)!r} does not exist")
    if format == "auto":
        format = detect_format(folder)
    if format not in FORMATS:
        raise ConfigError(f"unknown SAE format {format!r}; expected auto or one of {', '.join(FORMATS)}")
    if format == "native":
        sae = SAE.load(folder)
        if hook:
            sae.cfg.hook = hook
        return sae
    try:
        return _LOADERS[format](folder, hook)
    except (KeyError, ValueError, OSError, RuntimeError) as err:
        if isinstance(err, SAEFormatError):
            raise
        raise SAEFormatError(f"{folder}: not a valid {format} SAE ({type(err).__name__}: {err})") from err


def load_sae_set(path, format: str = "auto") -> SAESet:
    """Load every SAE subfolder of `path` (any supported format) keyed by its hook point."""
    folder = Path(path)
    if not folder.is_dir():
        raise SAEFormatError(f"SAE set directory {str(folder)!r} does not exist")
    saes: dict[str, SAE] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        sae = load_sae(sub, format=format)
        hook = sae.cfg.hook or sub.name
        if hook in saes:
            raise SAEFormatError(f"two SAEs in {str(folder)!r} read hook point {hook!r}")
        saes[hook] = sae
    if not saes:
        raise SAEFormatError(f"SAE set directory {str(folder)!r} has no SAE subfolders")
    return SAESet(saes)
