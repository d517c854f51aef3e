"""circuit-tracer 0.5.0's transcoder files, read and written (facts in shared/anchors.md and
benchmarks/peers/ct_worker.py).

Per-layer transcoders (`model_kind: transcoder_set`): `config.yaml` + `layer_{l}.safetensors`:

    W_enc [d_transcoder, d_model]   f = act(x @ W_enc.T + b_enc)   act: JumpReLU (x * (x > threshold))
    W_dec [d_transcoder, d_model]   y = f @ W_dec + b_dec (+ x @ W_skip.T)       or ReLU (no threshold)
    b_enc, b_dec, activation_function.threshold (JumpReLU), W_skip [d_model, d_model] (optional)

read at `mlp.hook_in` (the MLP input after its norm: our `mlp_in.L`), written at `mlp.hook_out`
(`mlp.L`). So a circuit-tracer transcoder is our transcoder with W_enc, W_skip transposed and no
b_dec subtraction. circuit-tracer has loaders for ReLU and JumpReLU only: our TopK transcoders have
no exact circuit-tracer form (BatchTopK and JumpReLU ones do: BatchTopK runs as a JumpReLU).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..dictionaries import Dictionary, DictionaryConfig
from ..errors import ConfigError, SAEFormatError
from ..fileio import read_safetensors, write_safetensors, write_text

CONFIG = "config.yaml"
_LAYER_FILE = re.compile(r"^layer_(\d+)\.safetensors$")
THRESHOLD = "activation_function.threshold"


def is_circuit_tracer(folder: Path) -> bool:
    return (folder / CONFIG).is_file() or any(_LAYER_FILE.match(p.name) for p in folder.glob("layer_*.safetensors"))


def _config(folder: Path) -> dict:
    path = folder / CONFIG
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SAEFormatError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise SAEFormatError(f"{path} must hold a mapping (model_kind, transcoders, ...)")
    return data


def is_clt(folder: Path) -> bool:
    """A circuit-tracer cross-layer transcoder folder (W_enc_{l} / W_dec_{l} files)."""
    return (folder / "W_enc_0.safetensors").is_file() or _config(folder).get("model_kind") == "cross_layer_transcoder"


def load_clt(folder: Path):
    """A `CrossLayerTranscoder` from circuit-tracer's CLT files: W_enc_{l}.safetensors (W_enc_{l}
    [d_trans, d_model], b_enc_{l}, b_dec_{l}, threshold_{l}) and W_dec_{l}.safetensors (W_dec_{l}
    [d_trans, L - l, d_model]); JumpReLU when threshold_0 exists, else ReLU (refused: our CLTs
    run TopK or JumpReLU)."""
    from ..dictionaries.crosslayer import CLTConfig, CrossLayerTranscoder

    folder = Path(folder)
    L = 0
    while (folder / f"W_enc_{L}.safetensors").is_file():
        L += 1
    if L == 0:
        raise SAEFormatError(f"{folder}: no W_enc_0.safetensors (circuit-tracer cross-layer transcoder)")
    enc = [read_safetensors(folder / f"W_enc_{l}.safetensors") for l in range(L)]
    missing = [l for l in range(L) if not (folder / f"W_dec_{l}.safetensors").is_file()]
    if missing:
        raise SAEFormatError(f"{folder}: the cross-layer transcoder misses the decoders of layers {missing} "
                             "(W_dec_{l}.safetensors)")
    if f"threshold_0" not in enc[0]:
        raise SAEFormatError(f"{folder}: a ReLU cross-layer transcoder (no threshold_0) is not supported")
    d_sae, d_in = enc[0]["W_enc_0"].shape
    dec = [read_safetensors(folder / f"W_dec_{l}.safetensors")[f"W_dec_{l}"] for l in range(L)]
    d_out = dec[0].shape[-1]
    clt = CrossLayerTranscoder(CLTConfig(L, d_in, d_sae, d_out, activation="jumprelu", k=None,
                                         metadata={"source": "circuit_tracer", "path": str(folder)}))
    tensors = {"W_enc": torch.stack([e[f"W_enc_{l}"].T.float() for l, e in enumerate(enc)]),
               "b_enc": torch.stack([e[f"b_enc_{l}"].float() for l, e in enumerate(enc)]),
               "b_dec": torch.stack([e[f"b_dec_{l}"].float() for l, e in enumerate(enc)]),
               "threshold": torch.stack([e[f"threshold_{l}"].float() for l, e in enumerate(enc)])}
    for l, w in enumerate(dec):
        if tuple(w.shape) != (d_sae, L - l, d_out):
            raise SAEFormatError(f"{folder}: W_dec_{l} has shape {tuple(w.shape)}, expected {(d_sae, L - l, d_out)}")
        tensors[f"W_dec_{l}"] = w.permute(1, 0, 2).float()
    clt.load_tensors(tensors, str(folder))
    return clt


def save_clt(clt, folder: str | Path) -> Path:
    """Write a JumpReLU `CrossLayerTranscoder` in circuit-tracer's CLT layout (+ config.yaml)."""
    if clt.threshold is None:
        raise ConfigError("circuit-tracer reads JumpReLU cross-layer transcoders; convert with to_jumprelu first")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for l in range(clt.cfg.n_layers):
        write_safetensors(folder / f"W_enc_{l}.safetensors", {
            f"W_enc_{l}": clt.W_enc[l].detach().T.contiguous().float(), f"b_enc_{l}": clt.b_enc[l].detach().float(),
            f"b_dec_{l}": clt.b_dec[l].detach().float(), f"threshold_{l}": clt.threshold[l].detach().float()})
        write_safetensors(folder / f"W_dec_{l}.safetensors",
                          {f"W_dec_{l}": clt.W_dec[l].detach().permute(1, 0, 2).contiguous().float()})
    write_text(folder / CONFIG, "model_kind: cross_layer_transcoder\nfeature_input_hook: hook_resid_mid\n"
                                "feature_output_hook: hook_mlp_out\n")
    return folder


def load_transcoder_set(folder: Path) -> dict[str, Dictionary]:
    """`{mlp.L: transcoder}` from a circuit-tracer per-layer transcoder folder."""
    cfg = _config(folder)
    kind = cfg.get("model_kind", "transcoder_set")
    if kind != "transcoder_set":
        raise SAEFormatError(f"{folder}: circuit-tracer model_kind {kind!r} is not supported here "
                             "(per-layer transcoder sets are)")
    files = cfg.get("transcoders")
    if files is None:
        found = sorted(((int(m.group(1)), p.name) for p in folder.iterdir()
                        if (m := _LAYER_FILE.match(p.name))))
        files = [name for _, name in found]
    if not files:
        raise SAEFormatError(f"{folder}: no transcoder files (layer_{{l}}.safetensors)")
    out = {}
    for layer, name in enumerate(files):
        if not isinstance(name, str) or name.startswith("hf://"):
            raise SAEFormatError(f"{folder}: transcoder entry {name!r} is not a local file")
        path = folder / name
        if not path.is_file():
            raise SAEFormatError(f"{folder}: transcoder file {name!r} is missing")
        t = read_safetensors(path)
        missing = {"W_enc", "W_dec", "b_enc", "b_dec"} - set(t)
        if missing:
            raise SAEFormatError(f"{path}: missing tensors {sorted(missing)}")
        d_sae, d_in = t["W_enc"].shape
        arch = "jumprelu" if THRESHOLD in t else "relu"
        tensors = {"W_enc": t["W_enc"].T.float(), "W_dec": t["W_dec"].float(), "b_enc": t["b_enc"].float(),
                   "b_dec": t["b_dec"].float()}
        if arch == "jumprelu":
            tensors["threshold"] = t[THRESHOLD].float()
        if "W_skip" in t:
            tensors["W_skip"] = t["W_skip"].T.float()
        dcfg = DictionaryConfig(arch, d_in, d_sae, hook=f"mlp_in.{layer}", write_hook=f"mlp.{layer}",
                                d_out=t["W_dec"].shape[1], skip="W_skip" in t,
                                metadata={"source": "circuit_tracer", "path": str(path)})
        dic = Dictionary(dcfg)
        dic.load_tensors(tensors, str(path))
        out[f"mlp.{layer}"] = dic
    return out


def save_transcoder_set(transcoders: dict[str, Dictionary], folder: str | Path, model_name: str = "") -> Path:
    """Write `{mlp.L: transcoder}` for layers 0..n-1 as a circuit-tracer transcoder set."""
    folder = Path(folder)
    layers = {}
    for name, dic in transcoders.items():
        c = dic.cfg
        if not (dic.is_transcoder and c.hook.startswith("mlp_in.") and c.write_site.startswith("mlp.")
                and c.hook[7:] == c.write_site[4:]):
            raise ConfigError(f"circuit-tracer stores MLP transcoders (mlp_in.L -> mlp.L); {name!r} reads "
                              f"{c.hook!r} and writes {c.write_site!r}")
        if c.architecture not in ("jumprelu", "batchtopk", "relu"):
            raise ConfigError(f"circuit-tracer reads ReLU and JumpReLU transcoders only; {name!r} is "
                              f"{c.architecture} (train batchtopk or jumprelu transcoders for circuit-tracer)")
        if c.subtracts_b_dec:
            raise ConfigError(f"{name!r} subtracts b_dec from its input; circuit-tracer's transcoders do not")
        layers[int(c.hook[7:])] = dic
    if sorted(layers) != list(range(len(layers))):
        raise ConfigError(f"circuit-tracer needs transcoders at layers 0..n-1; got layers {sorted(layers)}")
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for layer in range(len(layers)):
        t = layers[layer].state_tensors()
        out = {"W_enc": t["W_enc"].T.contiguous().float(), "W_dec": t["W_dec"].float(),
               "b_enc": t["b_enc"].float(), "b_dec": t["b_dec"].float()}
        if "threshold" in t:
            out[THRESHOLD] = t["threshold"].float()
        if "W_skip" in t:
            out["W_skip"] = t["W_skip"].T.contiguous().float()
        names.append(f"layer_{layer}.safetensors")
        write_safetensors(folder / names[-1], out)
    lines = ["model_kind: transcoder_set", "feature_input_hook: mlp.hook_in",
             "feature_output_hook: mlp.hook_out"] + ([f"model_name: {model_name}"] if model_name else [])
    lines += ["transcoders:"] + [f"  - {n}" for n in names]
    write_text(folder / CONFIG, "\n".join(lines) + "\n")
    return folder
