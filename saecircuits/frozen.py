"""The frozen replacement model: attention patterns and norm scales frozen, MLPs replaced by
transcoders, so that the model is linear in the residual stream (circuit-tracer's local
replacement model, Ameisen et al. 2025).

Inside `freeze(rm, inputs)` one forward runs with values exactly those of the real model, but
gradients see a linear map:

    attention   a registered transformers attention implementation computes the pattern with the
                model's own eager attention without gradients, then `pattern @ v`: gradients flow
                only through v and the output projection (circuit-tracer detaches the pattern)
    norms       every RMSNorm / LayerNorm (in the blocks and the final norm) passes gradients as
                x·g·r with its scale r = 1/rms(x) (1/std(x), centred, for LayerNorm) held at the
                prompt's value
    MLPs        each MLP output is replaced for gradients by the transcoder's skip term x·W_skip
                (if any): features (constants here: they are nodes) and the error term
                y − ŷ (a constant) carry no gradient; the value is the true MLP output
    leaves      a zero tensor added at the token embeddings and at every MLP output collects the
                gradient reaching each write site: edges from features (a·W_dec·g), error nodes
                (err·g) and tokens (emb·g)

Plain torch hooks (removed in a `finally`), not nnsight envoys: the freezing reaches inside
modules (the attention function, the norms' scales), which nnsight's envoys do not expose
portably; design.md's departure for this pass.
"""
from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch

from . import hooks
from .dictionaries import Dictionary
from .errors import ConfigError
from .wrapping import unwrap

FROZEN = "saecircuits_frozen"


def _frozen_attention(module, query, key, value, attention_mask, *args, **kwargs):
    """Attention with its pattern a constant: the model's own eager attention computes the pattern
    (its scaling, mask, soft-capping) without gradients, then output = pattern @ v is the only
    differentiable part (a plain matmul, so batched backward passes vectorise)."""
    eager = importlib.import_module(type(module).__module__).eager_attention_forward
    with torch.no_grad():
        _, weights = eager(module, query, key, value, attention_mask, *args, **kwargs)
    if weights is None:
        raise ConfigError(f"{type(module).__name__}'s eager attention returns no pattern; it cannot "
                          "be frozen")
    rep = query.shape[1] // value.shape[1]
    v = value.repeat_interleave(rep, dim=1) if rep > 1 else value       # grouped-query heads
    out = torch.matmul(weights[..., : v.shape[-2]].to(v.dtype), v).transpose(1, 2).contiguous()
    return out, weights


def _register() -> None:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    if FROZEN not in AttentionInterface._global_mapping:
        AttentionInterface.register(FROZEN, _frozen_attention)
    if FROZEN not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(FROZEN, ALL_MASK_ATTENTION_FUNCTIONS["eager"])


def _configs(hf) -> list:
    """The model's config and its sub-configs that carry an attention implementation."""
    out, seen = [], set()
    for module in hf.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and id(cfg) not in seen and hasattr(cfg, "_attn_implementation"):
            seen.add(id(cfg))
            out.append(cfg)
    return out


@contextlib.contextmanager
def _frozen_attention_impl(hf) -> Iterator[None]:
    _register()
    configs = _configs(hf)
    before = [c._attn_implementation for c in configs]
    try:
        for c in configs:
            c._attn_implementation = FROZEN
        yield
    finally:
        for c, impl in zip(configs, before):
            c._attn_implementation = impl


def _norm_kind(module: torch.nn.Module) -> str | None:
    if isinstance(module, torch.nn.LayerNorm):
        return "layer"
    if type(module).__name__.endswith("RMSNorm"):
        return "rms"
    return None


def _norm_eps(module) -> float:
    for name in ("variance_epsilon", "eps", "epsilon"):
        value = getattr(module, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    raise ConfigError(f"cannot freeze {type(module).__name__}: it exposes no epsilon")


def _rms_gain(module, width: int, eps: float, like: torch.Tensor) -> torch.Tensor:
    """The elementwise gain g of an RMSNorm out = x·g/rms(x) (Llama: w, Gemma: 1 + w), read off
    the module itself: out(1) = g/sqrt(1 + eps)."""
    with torch.no_grad():
        ones = torch.ones(width, dtype=like.dtype, device=like.device)
        return module(ones).float() * (1.0 + eps) ** 0.5


def _freeze_norm(kind: str, eps: float, gain: torch.Tensor | None):
    def hook(module, args, out):
        x = args[0]
        xf = x.float()
        delta = (x - x.detach()).float()            # 0 in value, the identity for gradients
        if kind == "rms":
            r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
            lin = delta * (r * gain)
        else:
            r = torch.rsqrt(xf.var(-1, keepdim=True, unbiased=False) + eps)
            lin = (delta - delta.mean(-1, keepdim=True)) * r
            if module.weight is not None:
                lin = lin * module.weight.float()
        return out.detach() + lin.to(out.dtype)

    return hook


@dataclass
class FrozenPass:
    """What one frozen forward leaves for the backward passes (batch 1).

    leaves: write site -> `[1, T, d]` zero leaf added there ("embed", and each transcoder's
    name); mlp_in: transcoder name -> `[1, T, d_in]` its input (feature targets seed here);
    features / errors: name -> `[T, d_sae]` activations and `[T, d]` error vectors (detached);
    final: `[1, T, d]` the final norm's output (logit targets seed here); logits `[T, vocab]`;
    embeddings `[T, d]` the token embeddings.
    """

    leaves: dict[str, torch.Tensor] = field(default_factory=dict)
    mlp_in: dict[str, torch.Tensor] = field(default_factory=dict)
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    errors: dict[str, torch.Tensor] = field(default_factory=dict)
    final: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None



def freeze_norms(hf) -> list:
    """Forward hooks that freeze every normalisation's denominator in `hf` (the caller removes
    the returned handles)."""
    handles = []
    try:
        for module in hf.modules():
            kind = _norm_kind(module)
            if kind is None:
                continue
            eps = _norm_eps(module)
            gain = None
            if kind == "rms":
                width = getattr(module, "weight", None)
                width = width.shape[-1] if width is not None else hf.config.hidden_size
                gain = _rms_gain(module, width, eps, next(hf.parameters()))
            handles.append(module.register_forward_hook(_freeze_norm(kind, eps, gain)))
    except BaseException:
        for h in handles:       # nothing left on the model after an error
            h.remove()
        raise
    return handles

def final_norm_module(hf) -> torch.nn.Module:
    base = getattr(hf, hf.base_model_prefix, hf) if getattr(hf, "base_model_prefix", "") else hf
    for name in ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f"):
        module = getattr(base, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise ConfigError(f"cannot find the final norm of {type(hf).__name__}")


def frozen_forward(model, transcoders: Mapping[str, Dictionary], input_ids: torch.Tensor,
                   error_only: tuple[str, ...] = ()) -> FrozenPass:
    """One frozen forward of `input_ids [1, T]` (see the module doc) with every transcoder's MLP
    replaced; the returned tensors keep the graph for `torch.autograd.grad`. `error_only`: MLP
    write sites (`mlp.L`) without a transcoder, whose whole output becomes an error node."""
    hf = unwrap(model)
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ConfigError(f"a frozen forward takes one prompt [1, T], got shape {tuple(input_ids.shape)}")
    device = next(hf.parameters()).device
    input_ids = input_ids.to(device)
    T = input_ids.shape[1]
    out = FrozenPass()
    handles = []
    sites = {name: dic.check_sites(model) for name, dic in transcoders.items()}
    for name, (read, write) in sites.items():
        if not transcoders[name].is_transcoder or write.module_path != read.module_path:
            raise ConfigError(f"{name!r} is not an MLP transcoder (mlp_in.L -> mlp.L): the frozen "
                              "replacement model replaces MLPs")

    def embed_hook(module, args, value):
        leaf = torch.zeros((1, T, value.shape[-1]), dtype=value.dtype, device=value.device,
                           requires_grad=True)
        out.leaves["embed"] = leaf
        out.embeddings = value.detach()[0]
        return value + leaf

    def mlp_hook(name: str):
        dic = transcoders.get(name)

        def hook(module, args, value):
            x = args[0]
            out.mlp_in[name] = x
            if dic is None:             # no transcoder: the whole MLP output is the error node
                out.errors[name] = value.detach()[0]
                leaf = torch.zeros_like(value, requires_grad=True)
                out.leaves[name] = leaf
                return value.detach() + leaf
            with torch.no_grad():
                f = dic.encode(x.detach())
                y_hat = dic.decode(f, x.detach(), dtype=value.dtype)
            out.features[name] = f[0].detach()
            out.errors[name] = (value.detach() - y_hat)[0]
            leaf = torch.zeros_like(value, requires_grad=True)
            out.leaves[name] = leaf
            new = value.detach() + leaf
            if dic.W_skip is not None:
                skip = x @ dic.W_skip.to(x.dtype)
                new = new + (skip - skip.detach())
            return new

        return hook

    def final_hook(module, args, value):
        out.final = value
        return value

    try:
        handles.append(hf.get_input_embeddings().register_forward_hook(embed_hook))
        handles += freeze_norms(hf)
        for name, (read, write) in sites.items():
            handles.append(hf.get_submodule(write.module_path).register_forward_hook(mlp_hook(name)))
        for name in error_only:
            path = hooks.resolve(model, name).module_path
            handles.append(hf.get_submodule(path).register_forward_hook(mlp_hook(name)))
        # after the norm's own freezing hook: registered later, runs later
        handles.append(final_norm_module(hf).register_forward_hook(final_hook))
        with _frozen_attention_impl(hf), torch.enable_grad():
            logits = hf(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits
        out.logits = logits[0].detach()
    finally:
        for handle in handles:
            handle.remove()
    return out


def layer_of(model, name: str) -> int:
    """Decoder-block index of a site name."""
    layer = hooks.resolve(model, name).layer
    if layer is None:
        raise ConfigError(f"site {name!r} is not inside a decoder block")
    return layer


def frozen_forward_clt(model, clt, input_ids: torch.Tensor) -> FrozenPass:
    """`frozen_forward` with a cross-layer transcoder: features of layer l are read at the input
    of the MLP's norm (`resid_mid.l`, `mlp_in[name]` holds it, with its graph, for the seeds);
    each MLP output l is replaced for gradients by nothing (features and errors are constants;
    a CLT has no skip term) plus its leaf; errors are y_l − Σ_{s<=l} f_s W_dec[s][l−s] − b_dec[l]."""
    hf = unwrap(model)
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ConfigError(f"a frozen forward takes one prompt [1, T], got shape {tuple(input_ids.shape)}")
    device = next(hf.parameters()).device
    input_ids = input_ids.to(device)
    T = input_ids.shape[1]
    pairs = clt.check_sites(model)
    out = FrozenPass()
    feats: dict[int, torch.Tensor] = {}
    handles = []

    def embed_hook(module, args, value):
        leaf = torch.zeros((1, T, value.shape[-1]), dtype=value.dtype, device=value.device,
                           requires_grad=True)
        out.leaves["embed"] = leaf
        out.embeddings = value.detach()[0]
        return value + leaf

    def read_hook(layer: int):
        def hook(module, args):
            x = args[0]
            out.mlp_in[f"mlp.{layer}"] = x
            with torch.no_grad():
                feats[layer] = clt.encode(layer, x.detach())
            out.features[f"mlp.{layer}"] = feats[layer][0].detach()
        return hook

    def write_hook(layer: int):
        def hook(module, args, value):
            with torch.no_grad():
                y_hat = clt.decode(layer, feats).to(value.dtype)
            out.errors[f"mlp.{layer}"] = (value.detach() - y_hat)[0]
            leaf = torch.zeros_like(value, requires_grad=True)
            out.leaves[f"mlp.{layer}"] = leaf
            return value.detach() + leaf
        return hook

    def final_hook(module, args, value):
        out.final = value
        return value

    try:
        handles.append(hf.get_input_embeddings().register_forward_hook(embed_hook))
        handles += freeze_norms(hf)
        for layer, (read, write) in enumerate(pairs):
            handles.append(hf.get_submodule(read.module_path).register_forward_pre_hook(read_hook(layer)))
            handles.append(hf.get_submodule(write.module_path).register_forward_hook(write_hook(layer)))
        handles.append(final_norm_module(hf).register_forward_hook(final_hook))
        with _frozen_attention_impl(hf), torch.enable_grad():
            logits = hf(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits
        out.logits = logits[0].detach()
    finally:
        for handle in handles:
            handle.remove()
    return out
