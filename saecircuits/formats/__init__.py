"""Read dictionaries saved by this library or by others into the `Dictionary` family.

Formats (facts in shared/anchors.md):
- `native`: cfg.json + sae.safetensors (this library).
- `saelens`: cfg.json + sae_weights.safetensors (v6 nested or pre-v6 flat config).
- `sparsify`: cfg.json + sae.safetensors with encoder.weight [d_sae, d_in].
- `dictionary_learning`: ae.pt (state dict, loaded with weights_only=True) + config.json.
- `gemmascope`: params.npz (JumpReLU); a released tree `layer_L/width_W/average_l0_N/params.npz`
  names its hook point (`resid.L`, or `mlp.L` / `attn.L` when a folder name ends in -mlp / -att).

`load_dictionary(path, format="auto", hook=None)` (alias `load_sae`) returns one dictionary;
`load_dictionaries(path, format, variant, hooks, hook)` a `{name: dictionary}` dict from a
directory of such folders (or one folder, or a Gemma Scope tree; `variant` picks among several
SAEs of one hook, e.g. "average_l0_41"); `saecircuits.SAESet.load` wraps it. Loaded weights are converted so that our
`encode`/`decode` equal the peer's own (checked against outputs of the peers' own code in
tests/fixtures/peers): a b_dec the peer does not subtract before encoding is folded into b_enc
(SAELens `apply_b_dec_to_input=False`, Gemma Scope, dictionary_learning JumpReLU), SAELens
`rescale_acts_by_decoder_norm` is folded into W_enc/b_enc/W_dec. Sparsify transcoders are refused
unless `transcoder=True` is passed (then encode/decode equal sparsify's; the input hook differs
from the output hook, recorded in cfg.metadata).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from ..dictionaries import CFG_FILE, WEIGHTS_FILE, Dictionary, DictionaryConfig
from ..errors import ConfigError, SAEFormatError
from ..fileio import read_safetensors

FORMATS = ("native", "saelens", "sparsify", "dictionary_learning", "gemmascope", "circuit_tracer")
_TL_HOOK = re.compile(r"^blocks\.(\d+)\.hook_(resid_post|mlp_out|attn_out|resid_pre)$")


def detect_format(folder: Path) -> str:
    """Guess the format of an SAE folder from its file names and config keys."""
    from .circuit_tracer import is_circuit_tracer

    if is_circuit_tracer(folder):
        return "circuit_tracer"
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


def _build(cfg: DictionaryConfig, tensors: dict[str, torch.Tensor], source: str) -> Dictionary:
    dic = Dictionary(cfg)
    dic.load_tensors({n: t for n, t in tensors.items() if n in dic.tensor_names()}, source)
    return dic


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


_SAELENS_ARCH = {"standard": "relu", "relu": "relu", "topk": "topk", "jumprelu": "jumprelu"}


def _load_saelens(folder: Path, hook: str | None) -> Dictionary:
    cfg = json.loads((folder / CFG_FILE).read_text())
    tensors = read_safetensors(folder / "sae_weights.safetensors")
    meta = cfg.get("metadata") or {}
    name = cfg.get("architecture") or cfg.get("activation_fn_str") or "standard"
    arch = _SAELENS_ARCH.get(name)
    if arch is None:
        raise SAEFormatError(f"{folder}: SAELens architecture {name!r} is not supported "
                             "(supported: standard, topk, jumprelu; batchtopk saves as jumprelu)")
    norm = cfg.get("normalize_activations") or "none"
    if norm not in ("none",):
        raise SAEFormatError(f"{folder}: normalize_activations={norm!r} needs a dataset scale that is not "
                             "in the files; fold it into the weights first")
    if (cfg.get("reshape_activations") or "none") != "none":
        raise SAEFormatError(f"{folder}: reshape_activations={cfg['reshape_activations']!r} (per-head hook_z "
                             "SAEs) is not supported")
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    if arch == "jumprelu" and meta.get("saecircuits_architecture") == "batchtopk":
        arch, k = "batchtopk", meta.get("saecircuits_k")  # written by saecircuits: same encode as jumprelu
    dtype = _dtype_name(tensors["W_enc"])
    tensors = {n: t.float() for n, t in tensors.items()}
    if not cfg.get("apply_b_dec_to_input", True):
        _fold_b_dec_into_b_enc(tensors)
    if cfg.get("rescale_acts_by_decoder_norm"):
        if arch != "topk":
            raise SAEFormatError(f"{folder}: rescale_acts_by_decoder_norm with architecture {name!r} "
                                 "is not supported")
        # SAELens: pre = (...) * |W_dec_i|, x̂ = (f / |W_dec_i|) W_dec + b_dec  -> fold the norms in
        norms = tensors["W_dec"].double().norm(dim=1)
        tensors["W_enc"] = (tensors["W_enc"].double() * norms).float()
        tensors["b_enc"] = (tensors["b_enc"].double() * norms).float()
        tensors["W_dec"] = (tensors["W_dec"].double() / norms[:, None]).float()
    tl_hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    hook = hook or meta.get("saecircuits_hook") or hook_from_transformerlens(tl_hook)
    sae_cfg = DictionaryConfig(arch, int(cfg["d_in"]), int(cfg["d_sae"]), k=int(k) if arch in ("topk", "batchtopk") else None,
                        hook=hook, model_name=meta.get("model_name") or cfg.get("model_name", "") or "",
                        dtype=dtype, metadata={"source": "saelens", "path": str(folder), "saelens_hook_name": tl_hook,
                                  "saelens_architecture": name})
    return _build(sae_cfg, tensors, str(folder))


_SPARSIFY_HOOK = re.compile(r"^(?:model\.)?layers\.(\d+)(?:\.(mlp|self_attn))?$")


def sparsify_hook(name: str) -> str | None:
    """sparsify hookpoint -> hook point: `layers.3` -> resid.3, `layers.3.mlp` -> mlp.3 (None if unknown)."""
    match = _SPARSIFY_HOOK.match(name)
    if not match:
        return None
    return {None: "resid", "mlp": "mlp", "self_attn": "attn"}[match.group(2)] + f".{match.group(1)}"


def _header_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def _load_sparsify(folder: Path, hook: str | None) -> Dictionary:
    """A sparsify SAE, or transcoder (`transcode=True`: reads the MLP input `mlp_in.L`, writes the
    MLP output `mlp.L`; sparsify encodes `x @ W_enc + b_enc` for them, no b_dec subtraction)."""
    cfg = json.loads((folder / CFG_FILE).read_text())
    tensors = read_safetensors(folder / WEIGHTS_FILE)
    if "W_skip" in tensors or cfg.get("skip_connection"):
        raise SAEFormatError(f"{folder}: sparsify skip transcoders (W_skip) are not supported")
    if cfg.get("activation", "topk") != "topk":
        raise SAEFormatError(f"{folder}: sparsify activation {cfg.get('activation')!r} is not supported")
    enc = tensors["encoder.weight"]
    d_sae, d_in = enc.shape
    ours = _header_metadata(folder / WEIGHTS_FILE).get("saecircuits_hook") or cfg.get("saecircuits_hook")
    site = hook or ours or sparsify_hook(folder.name)
    if site is None:
        raise SAEFormatError(f"cannot map sparsify hookpoint {folder.name!r} to a hook point; pass hook=...")
    out = {"W_enc": enc.T.float(), "b_enc": tensors["encoder.bias"].float(), "W_dec": tensors["W_dec"].float(),
           "b_dec": tensors["b_dec"].float()}
    meta = {"source": "sparsify", "path": str(folder), "sparsify_hookpoint": folder.name}
    read, write = site, None
    if cfg.get("transcode"):
        if not site.startswith("mlp."):
            raise SAEFormatError(f"{folder}: a sparsify transcoder at {folder.name!r} ({site}) is not an MLP "
                                 "transcoder (layers.L.mlp); only those are supported")
        read, write = f"mlp_in.{site.split('.')[1]}", site
    dic_cfg = DictionaryConfig("topk", d_in, d_sae, k=int(cfg["k"]), hook=read, write_hook=write,
                               d_out=out["W_dec"].shape[1], dtype=_dtype_name(enc), metadata=meta)
    return _build(dic_cfg, out, str(folder))


def _load_dictionary_learning(folder: Path, hook: str | None) -> Dictionary:
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
        _fold_b_dec_into_b_enc(tensors)  # JumpReluAutoEncoder.encode: x @ W_enc + b_enc
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
    sae_cfg = DictionaryConfig(arch, d_in, d_sae, k=k, hook=hook, model_name=trainer.get("lm_name", ""),
                        dtype=_dtype_name(tensors["W_enc"]),
                        metadata={"source": "dictionary_learning", "path": str(folder)})
    return _build(sae_cfg, tensors, str(folder))


def _fold_b_dec_into_b_enc(tensors: dict[str, torch.Tensor]) -> None:
    """For a source whose encoder is `x W_enc + b_enc` (no b_dec subtraction):
    pre = x W + b == (x - b_dec) W + (b + b_dec W), so set b_enc <- b_enc + b_dec W_enc (float64)."""
    w = tensors["W_enc"]
    folded = tensors["b_enc"].double() + tensors["b_dec"].double() @ w.double()
    tensors["b_enc"] = folded.to(w.dtype)


_GS_LAYER = re.compile(r"^layer_(\d+)$")
_GS_KIND = re.compile(r"-(res|mlp|att)(?:-|$)")


def gemmascope_hook(folder: Path) -> str | None:
    """`.../gemma-scope-2b-pt-mlp/layer_5/width_16k/average_l0_41` -> `mlp.5` (None if no layer_L)."""
    parts = folder.resolve().parts
    layer = next((int(m.group(1)) for p in reversed(parts) if (m := _GS_LAYER.match(p))), None)
    if layer is None:
        return None
    kind = next((m.group(1) for p in reversed(parts) if (m := _GS_KIND.search(p))), "res")
    return {"res": "resid", "mlp": "mlp", "att": "attn"}[kind] + f".{layer}"


def _load_gemmascope(folder: Path, hook: str | None) -> Dictionary:
    hook = hook or gemmascope_hook(folder)
    if hook is None:
        raise SAEFormatError(f"{folder}: Gemma Scope params.npz outside a layer_L/... tree does not name its "
                             "hook point; pass hook=...")
    with np.load(folder / "params.npz", allow_pickle=False) as npz:
        tensors = {k: torch.from_numpy(npz[k].copy()) for k in npz.files}
    _fold_b_dec_into_b_enc(tensors)  # Gemma Scope encodes x @ W_enc + b_enc
    d_in, d_sae = tensors["W_enc"].shape
    sae_cfg = DictionaryConfig("jumprelu", d_in, d_sae, hook=hook, dtype=_dtype_name(tensors["W_enc"]),
                        metadata={"source": "gemmascope", "path": str(folder)})
    return _build(sae_cfg, tensors, str(folder))


_LOADERS = {"saelens": _load_saelens, "sparsify": _load_sparsify,
            "dictionary_learning": _load_dictionary_learning, "gemmascope": _load_gemmascope}


def dictionary_name(dic: Dictionary) -> str:
    """A dictionary's name in a set: an SAE's hook point, a transcoder's write site."""
    return dic.cfg.write_site if dic.is_transcoder else dic.cfg.hook


def load_dictionary(path, format: str = "auto", hook: str | None = None) -> Dictionary:
    """Load one dictionary folder of any supported format (`format="auto"` detects it).

    hook: the (read) hook point, for files that do not name one (it overrides what they say).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise SAEFormatError(f"dictionary folder {str(folder)!r} does not exist")
    if format == "auto":
        format = detect_format(folder)
    if format not in FORMATS:
        raise ConfigError(f"unknown SAE format {format!r}; expected auto or one of {', '.join(FORMATS)}")
    if format == "circuit_tracer":
        raise SAEFormatError(f"{str(folder)!r} is a circuit-tracer transcoder set: load it as a set "
                             "(SAESet.load / --saes)")
    if format == "native":
        dic = Dictionary.load(folder)
        if hook:
            dic.cfg.hook = hook
        return dic
    try:
        return _LOADERS[format](folder, hook)
    except (KeyError, ValueError, OSError, RuntimeError) as err:
        if isinstance(err, SAEFormatError):
            raise
        raise SAEFormatError(f"{folder}: not a valid {format} SAE ({type(err).__name__}: {err})") from err


load_sae = load_dictionary


def _is_sae_folder(folder: Path) -> bool:
    try:
        detect_format(folder)
    except SAEFormatError as err:
        if "holds no SAE files" in str(err):
            return False
        raise
    return True


# a training run's side sets inside its SAE set's folder: transcoders trained beside the SAEs
# (`TrainConfig.transcoders`) and the other k / width combinations of one run (`--k 32,128`).
# Loaded by pointing at them (or, for variants, with `variant=`), never mixed into the main set.
TRANSCODERS_DIR = "transcoders"
VARIANTS_DIR = "variants"


def find_sae_folders(root: Path, max_depth: int = 4, top: bool = True,
                     side_sets: bool = False) -> list[Path]:
    """Dictionary folders at or under `root` (not descending into one, nor, unless `side_sets`,
    into a run's `transcoders/` or `variants/` beside its own SAEs), sorted."""
    if _is_sae_folder(root):
        return [root]
    found: list[Path] = []
    if max_depth > 0:
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if (top and not side_sets and sub.name in (TRANSCODERS_DIR, VARIANTS_DIR)
                    and _has_other_folders(root, sub)):
                continue
            found += find_sae_folders(sub, max_depth - 1, top=False)
    return found


def _has_other_folders(root: Path, skip: Path) -> bool:
    """Whether `root` holds dictionary folders outside `skip` (then `skip` is a side set)."""
    return any(_is_sae_folder(p) for p in root.iterdir() if p.is_dir() and p != skip
               and not p.name.startswith("."))


def _pick_variant(hook: str, folders: list[Path], root: Path, variant: str | None) -> Path:
    if len(folders) == 1:
        return folders[0]
    names = [str(f.relative_to(root)) for f in folders]
    if variant is None:
        raise SAEFormatError(f"{str(root)!r} has {len(folders)} SAEs for hook point {hook!r} ({', '.join(names)}); "
                             "choose one with variant= / --variant (e.g. 'average_l0_41')")
    picked = [f for f, n in zip(folders, names) if variant in Path(n).parts or n == variant]
    if len(picked) != 1:
        raise SAEFormatError(f"variant {variant!r} matches {len(picked)} of the SAEs for {hook!r} "
                             f"({', '.join(names)}); it must match exactly one")
    return picked[0]


def load_dictionaries(path, format: str = "auto", variant: str | None = None,
                      hooks: list[str] | None = None, hook: str | None = None) -> dict[str, Dictionary]:
    """Load a set of any supported format: `{name: dictionary}` (`dictionary_name`).

    `path` may be one folder, a directory of folders (native set, SAELens folders, a sparsify
    run) or a tree (Gemma Scope `layer_L/width_W/average_l0_N`). `variant` picks one SAE where a
    hook point has several (a path component such as "average_l0_41" or a relative path);
    `hooks` keeps only those names; `hook` names the hook point of a single folder whose files
    do not.
    """
    root = Path(path)
    if not root.is_dir():
        raise SAEFormatError(f"SAE set directory {str(root)!r} does not exist")
    if format != "auto" and format not in FORMATS:
        raise ConfigError(f"unknown SAE format {format!r}; expected auto or one of {', '.join(FORMATS)}")
    from .circuit_tracer import is_circuit_tracer, load_transcoder_set

    if format == "circuit_tracer" or (format == "auto" and is_circuit_tracer(root)):
        found = load_transcoder_set(root)          # one folder holds the whole set
        missing = [h for h in (hooks or []) if h not in found]
        if missing:
            raise SAEFormatError(f"circuit-tracer set {str(root)!r} has no transcoder for {missing}")
        return {h: found[h] for h in (hooks or found)}
    folders = find_sae_folders(root, side_sets=variant is not None)
    if not folders:
        raise SAEFormatError(f"{str(root)!r} holds no SAE folders of a known format ({', '.join(FORMATS)})")
    if hook is not None and len(folders) > 1:
        raise ConfigError(f"hook={hook!r} names the hook point of a single SAE folder, but "
                          f"{str(root)!r} holds {len(folders)}")
    by_name: dict[str, list[Path]] = {}
    loaded: dict[Path, Dictionary] = {}
    for folder in folders:
        fmt = detect_format(folder) if format == "auto" else format
        name = gemmascope_hook(folder) if fmt == "gemmascope" and hook is None else None
        if name is None:
            dic = load_dictionary(folder, format=fmt, hook=hook)
            loaded[folder] = dic
            name = dictionary_name(dic) or folder.name
            if fmt == "native" and folder != root and not dic.is_transcoder and dic.cfg.hook \
                    and dic.cfg.hook != folder.name:
                raise SAEFormatError(f"{str(folder / CFG_FILE)!r} says hook {dic.cfg.hook!r} but lies "
                                     f"in directory {folder.name!r}")
        by_name.setdefault(name, []).append(folder)
    wanted = hooks or sorted(by_name)
    missing = [h for h in wanted if h not in by_name]
    if missing:
        raise SAEFormatError(f"SAE set {str(root)!r} has no SAE for {missing}; it has {sorted(by_name)}")
    out: dict[str, Dictionary] = {}
    for name in wanted:
        folder = _pick_variant(name, by_name[name], root, variant)
        dic = loaded.get(folder) or load_dictionary(folder, format=format, hook=hook or name)
        if not dic.is_transcoder:
            dic.cfg.hook = name
        out[name] = dic
    return out
