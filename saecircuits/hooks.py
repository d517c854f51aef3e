"""Hook points: architecture-independent names for places in a model's forward pass.

Canonical names (design.md): `embed` (token embeddings), `resid.L` (output of decoder
block L), `mlp.L` (MLP output added to the residual stream in block L), `attn.L`
(attention output added to the residual stream in block L), `mlp_in.L` (the MLP's input, after
its norm: what a transcoder reads) and `resid_mid.L` (the residual stream between attention and
the MLP, the input of the MLP's norm: what a cross-layer transcoder reads). A raw module path such as
`model.layers.5.mlp` (output side) or `model.layers.5.post_attention_layernorm:input`
(input side) is also accepted.

Each model is probed once with a 2-token forward (plain torch hooks, removed in a
`finally`) to learn every module's width and the order in which values are produced,
so that nnsight envoys can be visited in forward order.
"""
from __future__ import annotations

import re
import weakref
from dataclasses import dataclass

import torch

from .errors import HookPointError
from .wrapping import unwrap

_CANONICAL = re.compile(r"^(resid|mlp|attn|mlp_in|resid_mid)\.(\d+)$")

# family -> (attention module name, mlp module name) where the defaults are wrong
_FAMILY_SUBMODULES = {
    "gemma2": ("post_attention_layernorm", "post_feedforward_layernorm"),
    "gemma3": ("post_attention_layernorm", "post_feedforward_layernorm"),
    "gemma3_text": ("post_attention_layernorm", "post_feedforward_layernorm"),
}
_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")
# the norm in front of the MLP (its input is resid_mid): Gemma's post_attention_layernorm is the
# attention output's own norm, so its pre_feedforward_layernorm comes first
_MLP_NORM_NAMES = ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2")


@dataclass(frozen=True)
class HookPoint:
    """A resolved hook point.

    name: the name the user gave (canonical or raw path).
    module_path: dotted path of the module, relative to the HF model.
    side: "output" or "input" of that module (first element if it is a tuple).
    width: size of the last dimension (d_in of an SAE placed here).
    order: position of this value in the forward pass (smaller is earlier).
    layer: decoder-block index (-1 for `embed`, None for raw paths outside a block).
    """

    name: str
    module_path: str
    side: str
    width: int
    order: int
    layer: int | None


@dataclass
class _Layout:
    embed: str
    layers: str
    n_layers: int
    attn: str | None
    mlp: str | None
    mlp_norm: str | None = None     # None where the MLP reads no separate residual (parallel blocks)


@dataclass
class _Probe:
    order: dict[tuple[str, str], int]
    width: dict[tuple[str, str], int]


_PROBES: "weakref.WeakKeyDictionary[torch.nn.Module, _Probe]" = weakref.WeakKeyDictionary()
_LAYOUTS: "weakref.WeakKeyDictionary[torch.nn.Module, _Layout]" = weakref.WeakKeyDictionary()


def _first_tensor(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def _layout(hf: torch.nn.Module) -> _Layout:
    if hf in _LAYOUTS:
        return _LAYOUTS[hf]
    names = {module: name for name, module in hf.named_modules()}
    n_layers = getattr(hf.config, "num_hidden_layers", None) or getattr(hf.config, "n_layer", None)
    layers = [name for name, m in hf.named_modules()
              if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers]
    if not layers:
        raise HookPointError(f"cannot find the decoder layers of {type(hf).__name__}; "
                             "use raw module paths as hook points")
    embed = names.get(hf.get_input_embeddings())
    block = hf.get_submodule(layers[0])[0]
    family = getattr(hf.config, "model_type", "")
    attn, mlp = _FAMILY_SUBMODULES.get(family, (None, None))
    if attn is None:
        attn = next((n for n in _ATTN_NAMES if hasattr(block, n)), None)
        mlp = next((n for n in _MLP_NAMES if hasattr(block, n)), None)
    parallel = bool(getattr(hf.config, "use_parallel_residual", False))
    mlp_norm = None if parallel else next((n for n in _MLP_NORM_NAMES if hasattr(block, n)), None)
    layout = _Layout(embed=embed, layers=layers[0], n_layers=n_layers, attn=attn, mlp=mlp,
                     mlp_norm=mlp_norm)
    _LAYOUTS[hf] = layout
    return layout


def _probe(hf: torch.nn.Module) -> _Probe:
    """Run a 2-token forward recording each module's input/output order and width."""
    if hf in _PROBES:
        return _PROBES[hf]
    order: dict[tuple[str, str], int] = {}
    width: dict[tuple[str, str], int] = {}
    handles = []

    def pre_hook(name):
        def hook(module, args):
            t = _first_tensor(args)
            if (name, "input") not in order:
                order[(name, "input")] = len(order)
                if t is not None:
                    width[(name, "input")] = t.shape[-1]
        return hook

    def post_hook(name):
        def hook(module, args, output):
            t = _first_tensor(output)
            if (name, "output") not in order:
                order[(name, "output")] = len(order)
                if t is not None:
                    width[(name, "output")] = t.shape[-1]
        return hook

    try:
        for name, module in hf.named_modules():
            if name:
                handles.append(module.register_forward_pre_hook(pre_hook(name)))
                handles.append(module.register_forward_hook(post_hook(name)))
        device = next(hf.parameters()).device
        with torch.no_grad():
            hf(input_ids=torch.ones(1, 2, dtype=torch.long, device=device))
    finally:
        for handle in handles:
            handle.remove()
    probe = _Probe(order=order, width=width)
    _PROBES[hf] = probe
    return probe


def probe_model(model) -> None:
    """Probe `model` now (done by `load_model`). Must not run inside a trace: call it first
    when wrapping a model yourself."""
    _layout(unwrap(model))
    _probe(unwrap(model))


def n_layers(model) -> int:
    """Number of decoder blocks."""
    return _layout(unwrap(model)).n_layers


def canonical_names(model) -> list[str]:
    """All canonical hook-point names of the model, in forward order."""
    lay = _layout(unwrap(model))
    names = ["embed"]
    for layer in range(lay.n_layers):
        names += [f"attn.{layer}"] if lay.attn else []
        names += [f"resid_mid.{layer}"] if lay.mlp_norm else []
        names += [f"mlp_in.{layer}", f"mlp.{layer}"] if lay.mlp else []
        names.append(f"resid.{layer}")
    return [n for n in names if n == "embed" or _try(model, n)]


def _try(model, name: str) -> bool:
    try:
        resolve(model, name)
        return True
    except HookPointError:
        return False


def _module_of(model, name: str) -> tuple[str, str, int | None]:
    """Map a hook name to (module path, side, layer)."""
    hf = unwrap(model)
    lay = _layout(hf)
    if name == "embed":
        return lay.embed, "output", -1
    match = _CANONICAL.match(name)
    if match:
        kind, layer = match.group(1), int(match.group(2))
        if layer >= lay.n_layers:
            raise HookPointError(_unknown(model, name, f"the model has {lay.n_layers} layers"))
        block = f"{lay.layers}.{layer}"
        sub = {"resid": None, "attn": lay.attn, "mlp": lay.mlp, "mlp_in": lay.mlp,
               "resid_mid": lay.mlp_norm}[kind]
        if kind != "resid" and sub is None:
            why = ("its blocks run attention and the MLP in parallel (no residual between them)"
                   if kind == "resid_mid" and lay.mlp else f"no {kind} module in {type(hf).__name__}")
            raise HookPointError(_unknown(model, name, why))
        side = "input" if kind in ("mlp_in", "resid_mid") else "output"
        return (block if sub is None else f"{block}.{sub}"), side, layer
    path, _, side = name.partition(":")
    side = side or "output"
    if side not in ("input", "output"):
        raise HookPointError(f"hook point {name!r}: side must be ':input' or ':output'")
    path = path.removeprefix("model._module.")
    try:
        hf.get_submodule(path)
    except AttributeError:
        raise HookPointError(_unknown(model, name, "no such module")) from None
    prefix = f"{lay.layers}."
    layer = int(path[len(prefix):].split(".")[0]) if path.startswith(prefix) else None
    return path, side, layer


def _unknown(model, name: str, why: str) -> str:
    lay = _layout(unwrap(model))
    last = lay.n_layers - 1
    kinds = ", ".join(k for k, ok in (("attn", lay.attn), ("mlp", lay.mlp), ("mlp_in", lay.mlp),
                                      ("resid_mid", lay.mlp_norm)) if ok)
    return (f"unknown hook point {name!r} ({why}). Valid names: embed, resid.0..resid.{last}"
            + (f", {{{kinds}}}.0..{last}" if kinds else "")
            + ", or a module path such as 'model.layers.0.mlp' (append ':input' for the input side)")


def resolve(model, name: str) -> HookPoint:
    """Resolve a hook-point name (canonical or raw module path) on `model`."""
    if not isinstance(name, str) or not name:
        raise HookPointError(f"hook point must be a non-empty string, got {name!r}")
    path, side, layer = _module_of(model, name)
    probe = _probe(unwrap(model))
    key = (path, side)
    if key not in probe.order or key not in probe.width:
        raise HookPointError(_unknown(model, name, f"module {path!r} produces no tensor {side}"))
    return HookPoint(name=name, module_path=path, side=side, width=probe.width[key],
                     order=probe.order[key], layer=layer)


def hook_points(model) -> list[HookPoint]:
    """Every canonical hook point of the model with its width, in forward order."""
    return [resolve(model, n) for n in canonical_names(model)]


def envoy(model, hook: HookPoint):
    """The nnsight envoy of the hook point's module."""
    node = model
    for part in hook.module_path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def read(model, hook: HookPoint) -> torch.Tensor:
    """Inside a trace: the hook point's current value `[batch, pos, width]`."""
    value = envoy(model, hook).output if hook.side == "output" else envoy(model, hook).input
    return value[0] if isinstance(value, tuple) else value


def write(model, hook: HookPoint, new: torch.Tensor) -> None:
    """Inside a trace, right after `read`: replace the hook point's value with `new`."""
    env = envoy(model, hook)
    if hook.side == "output":
        old = env.output
        env.output = (new,) + tuple(old[1:]) if isinstance(old, tuple) else new
    else:
        env.input = new


def sort_by_forward_order(model, names) -> list[HookPoint]:
    """Resolve names and sort them in forward order (duplicates are an error)."""
    resolved = [resolve(model, n) for n in names]
    seen: dict[tuple[str, str], str] = {}
    for hp in resolved:
        key = (hp.module_path, hp.side)
        if key in seen:
            raise HookPointError(f"hook points {seen[key]!r} and {hp.name!r} are the same place")
        seen[key] = hp.name
    return sorted(resolved, key=lambda hp: hp.order)
