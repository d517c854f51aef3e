"""Cross-layer transcoder (Ameisen et al. 2025, "Circuit Tracing"): one encoder per layer reading
the residual stream between attention and the MLP (`resid_mid.l`), decoders from layer l to every
MLP output l' >= l (`mlp.l'`):

    f_l   = act(x_l W_enc[l] + b_enc[l])                         [..., d_sae] per layer
    ŷ_l'  = Σ_{l <= l'} f_l W_dec[l][l' − l] + b_dec[l']        [..., d_out]

Weights: W_enc [L, d_in, d_sae], b_enc [L, d_sae], b_dec [L, d_out], W_dec[l] [L − l, d_sae, d_out]
(one tensor per source layer), threshold [L, d_sae] for JumpReLU. Training uses TopK per layer
(`kernels.sparse_topk`, sparse gradients) and `to_jumprelu` then sets per-layer thresholds so the
expected L0 stays about k (crosslayer-coding's recommendation: TopK/BatchTopK, then JumpReLU).

Native folder: `cfg.json` (`CLTConfig`) + `clt.safetensors` (W_enc, b_enc, b_dec, [threshold],
W_dec_{l}). circuit-tracer's layout is written by `formats.circuit_tracer.save_clt`.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import hooks
from ..errors import ConfigError, HookPointError, SAEFormatError, ShapeError
from ..fileio import parse_json, read_safetensors, read_text, write_json, write_safetensors
from .base import DTYPES
from .kernels import sparse_topk

CLT_FILE, CFG_FILE = "clt.safetensors", "cfg.json"
ACTIVATIONS = ("topk", "jumprelu")


@dataclass
class CLTConfig:
    """n_layers: layers 0..n_layers−1 (every MLP); d_in / d_out: residual and MLP-output widths;
    d_sae: latents per layer; activation: topk (k per layer) or jumprelu (thresholds);
    normalization_scales: per layer (in, out) training scales, folded into the weights."""

    n_layers: int
    d_in: int
    d_sae: int
    d_out: int
    activation: str = "topk"
    k: int | None = 16
    model_name: str = ""
    dtype: str = "float32"
    metadata: dict[str, Any] = field(default_factory=dict)
    kind: str = "cross_layer_transcoder"

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_in", "d_sae", "d_out"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"cross-layer transcoder {name} must be a positive integer, got {value!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"cross-layer transcoder activation must be one of {ACTIVATIONS}, got "
                              f"{self.activation!r}")
        if self.activation == "topk" and (not isinstance(self.k, int) or not 0 < self.k <= self.d_sae):
            raise ConfigError(f"cross-layer transcoder k must be in 1..{self.d_sae}, got {self.k!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}")


class CrossLayerTranscoder(nn.Module):
    """See the module doc. `read_sites` / `write_sites`: `resid_mid.l` / `mlp.l`."""

    def __init__(self, cfg: CLTConfig, device=None):
        super().__init__()
        self.cfg = cfg
        kw = {"device": device, "dtype": DTYPES[cfg.dtype]}
        L, d_in, d, d_out = cfg.n_layers, cfg.d_in, cfg.d_sae, cfg.d_out
        self.W_enc = nn.Parameter(torch.zeros(L, d_in, d, **kw))
        self.b_enc = nn.Parameter(torch.zeros(L, d, **kw))
        self.b_dec = nn.Parameter(torch.zeros(L, d_out, **kw))
        self.W_dec = nn.ParameterList([nn.Parameter(torch.zeros(L - l, d, d_out, **kw)) for l in range(L)])
        if cfg.activation == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(L, d, **kw))
        else:
            self.register_parameter("threshold", None)

    # -- sites ---------------------------------------------------------------------------------
    @property
    def read_sites(self) -> list[str]:
        return [f"resid_mid.{l}" for l in range(self.cfg.n_layers)]

    @property
    def write_sites(self) -> list[str]:
        return [f"mlp.{l}" for l in range(self.cfg.n_layers)]

    is_transcoder = True

    def check_sites(self, model) -> list[tuple[hooks.HookPoint, hooks.HookPoint]]:
        """(read, write) per layer, resolved and width-checked on `model`."""
        if hooks.n_layers(model) != self.cfg.n_layers:
            raise ShapeError(f"the cross-layer transcoder has {self.cfg.n_layers} layers, the model "
                             f"{hooks.n_layers(model)}")
        out = []
        for read, write in zip(self.read_sites, self.write_sites):
            try:
                r, w = hooks.resolve(model, read), hooks.resolve(model, write)
            except HookPointError as err:
                raise HookPointError(f"the cross-layer transcoder needs {read!r} and {write!r}: {err}") from None
            if (r.width, w.width) != (self.cfg.d_in, self.cfg.d_out):
                raise ShapeError(f"the cross-layer transcoder reads width {self.cfg.d_in} and writes "
                                 f"{self.cfg.d_out}; the model's {read} / {write} are {r.width} / {w.width}")
            out.append((r, w))
        return out

    # -- forward -------------------------------------------------------------------------------
    def encode_pre(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.cfg.d_in:
            raise ShapeError(f"layer {layer} expects width {self.cfg.d_in}, got shape {tuple(x.shape)}")
        return x.to(self.W_enc.dtype) @ self.W_enc[layer] + self.b_enc[layer]

    def activate(self, layer: int, pre: torch.Tensor) -> torch.Tensor:
        if self.threshold is not None:
            return pre * (pre > self.threshold[layer]).to(pre.dtype)
        values, indices = pre.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))

    def encode(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self.activate(layer, self.encode_pre(layer, x))

    def decode(self, layer: int, features: dict[int, torch.Tensor]) -> torch.Tensor:
        """ŷ at output layer `layer` from `features[l]` `[..., d_sae]` of layers l <= layer."""
        out = self.b_dec[layer]
        for l, f in features.items():
            if l <= layer:
                out = out + f.to(self.W_enc.dtype) @ self.W_dec[l][layer - l]
        return out

    # -- persistence -----------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {"W_enc": self.W_enc.detach(), "b_enc": self.b_enc.detach(), "b_dec": self.b_dec.detach()}
        out.update({f"W_dec_{l}": w.detach() for l, w in enumerate(self.W_dec)})
        if self.threshold is not None:
            out["threshold"] = self.threshold.detach()
        return out

    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_safetensors(folder / CLT_FILE, {k: v.contiguous() for k, v in self.state_tensors().items()})
        write_json(folder / CFG_FILE, dataclasses.asdict(self.cfg))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, device=None) -> "CrossLayerTranscoder":
        folder = Path(folder)
        data = parse_json(read_text(folder / CFG_FILE, "cross-layer transcoder config", SAEFormatError),
                          str(folder / CFG_FILE), SAEFormatError)
        if not isinstance(data, dict) or data.get("kind") != "cross_layer_transcoder":
            raise SAEFormatError(f"{folder / CFG_FILE} is not a cross-layer transcoder config")
        try:
            cfg = CLTConfig(**data)
        except (TypeError, ConfigError) as err:
            raise SAEFormatError(f"{folder / CFG_FILE}: {err}") from None
        clt = cls(cfg)
        clt.load_tensors(read_safetensors(folder / CLT_FILE), str(folder / CLT_FILE))
        return clt.to(device) if device is not None else clt

    def load_tensors(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        own = self.state_tensors()
        missing, extra = set(own) - set(tensors), set(tensors) - set(own)
        if missing or extra:
            decoders = sorted(n for n in missing if n.startswith("W_dec_"))
            raise SAEFormatError(f"{source}: missing tensors {sorted(missing)}"
                                 + (f" (decoders of layers {[int(n[6:]) for n in decoders]})" if decoders else "")
                                 + f", unexpected {sorted(extra)}")
        with torch.no_grad():
            for name, ref in own.items():
                value = tensors[name]
                if tuple(value.shape) != tuple(ref.shape):
                    raise SAEFormatError(f"{source}: {name} has shape {tuple(value.shape)}, expected {tuple(ref.shape)}")
                if not torch.isfinite(value).all():
                    raise SAEFormatError(f"{source}: {name} contains NaN or inf values")
                ref.copy_(value.to(ref.dtype))

    # -- training helpers --------------------------------------------------------------------------
    def init_parameters(self, seed: int) -> None:
        """Unit-norm encoder columns; decoder rows with norm 1/sqrt(L) so early sums stay O(1)."""
        gen = torch.Generator().manual_seed(seed)
        L = self.cfg.n_layers
        with torch.no_grad():
            w = torch.randn(L, self.cfg.d_sae, self.cfg.d_in, generator=gen)
            self.W_enc.copy_((w / w.norm(dim=-1, keepdim=True)).transpose(1, 2))
            for l, dec in enumerate(self.W_dec):
                d = torch.randn(dec.shape, generator=gen)
                dec.copy_(d / d.norm(dim=-1, keepdim=True) / math.sqrt(L))

    def loss(self, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """Σ_l' FVU(y_l', ŷ_l') with TopK per layer (sparse gradients); `xs` / `ys`: per layer
        normalised `[B, d]` inputs and MLP outputs. Returns (loss, stats)."""
        L = self.cfg.n_layers
        picks = [sparse_topk(self.W_enc[l].T, self.b_enc[l], xs[l], self.cfg.k) for l in range(L)]
        total, fvus = 0.0, []
        for out in range(L):
            y_hat = self.b_dec[out].expand_as(ys[out])
            for l in range(out + 1):
                vals, idx = picks[l]
                y_hat = y_hat + nn.functional.embedding_bag(idx, self.W_dec[l][out - l], per_sample_weights=vals,
                                                            mode="sum")
            y = ys[out]
            fvu = (y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum().clamp_min(1e-12)
            total = total + fvu
            fvus.append(float(fvu.detach()))
        l0 = sum(float((v > 0).sum()) for v, _ in picks) / (L * xs[0].shape[0])
        return total / L, {"fvu": sum(fvus) / L, "fvu_per_layer": fvus, "l0": l0}

    @torch.no_grad()
    def to_jumprelu(self, xs: list[torch.Tensor]) -> None:
        """Switch inference to JumpReLU: per layer one threshold θ_l = the mean k-th largest
        pre-activation over `xs[l]` tokens, so the expected L0 stays about k."""
        L = self.cfg.n_layers
        thr = torch.stack([self.encode_pre(l, xs[l]).topk(self.cfg.k, dim=-1).values[:, -1].clamp_min(0).mean()
                           for l in range(L)])
        self.threshold = nn.Parameter(thr[:, None].expand(L, self.cfg.d_sae).clone().to(self.W_enc.dtype))
        self.cfg.activation = "jumprelu"

    @torch.no_grad()
    def fold_scales(self, scale_in: list[float], scale_out: list[float]) -> None:
        """Act on raw activations after training on x_l·s_in[l] -> y_l·s_out[l]."""
        for l in range(self.cfg.n_layers):
            self.W_enc[l].mul_(scale_in[l])
            self.b_dec[l].div_(scale_out[l])
            for src in range(l + 1):
                self.W_dec[src][l - src].div_(scale_out[l])
        self.cfg.metadata["normalization_scales"] = {"in": list(scale_in), "out": list(scale_out)}
