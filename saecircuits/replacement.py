"""`ReplacementModel`: one language model bound to its dictionaries (anchor: circuit-tracer's
`NNSightReplacementModel`, nnsight's `Envoy`).

It holds the nnsight model, the tokenizer and the SAEs by hook point, and works out once
what every caller used to work out again:

    sites      each hook point resolved and width-checked once, in forward order
    devices    each SAE moved to its site's device; inputs go to the input embeddings' device
               (both right under `device_map="auto"`)
    logits     the output-embedding module, found generically (`get_output_embeddings`, so
               Llama's `lm_head` and GPT-NeoX's `embed_out` alike): the one place it is located
    lens       one logit lens, the final norm's weight applied (graph labels and dashboards)

    rm = ReplacementModel(model, saes, tok)
    logits, acts = rm.run(inputs, grad=True)            # trace + splice + logits
    metric(logits).backward()                            # acts["resid.1"].features.grad

An edit is `edit(site: HookPoint, features, error) -> (features, error) | None`, called at each
dictionary's write site before decoding. A dictionary reads at one site and writes at another
(an SAE: the same hook; a transcoder: `mlp_in.L -> mlp.L`): `points` are the write sites, in
forward order, named like the dictionaries; `reads[name]` their read sites. The error term is
always at the write site: `error = y − decode(f, x)` with `y` the site's true value.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import nnsight
import torch

from . import hooks
from .errors import ConfigError, HookPointError, ShapeError
from .hooks import HookPoint
from .dictionaries import Dictionary
from .wrapping import model_device, model_name_of, module_device, unwrap

Edit = Callable[[HookPoint, torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor] | None"]


@dataclass
class Spliced:
    """What one spliced hook point exposes.

    features: `[batch, pos, d_sae]` activations as used downstream (after any edit).
    error: `[batch, pos, d_out]` y − ŷ of the *unedited* run at the write site, detached (a leaf).
    hook: the resolved write site.
    """

    hook: HookPoint
    features: torch.Tensor
    error: torch.Tensor


def plan(model, saes: Mapping[str, Dictionary]) -> list[HookPoint]:
    """The dictionaries' write sites in forward order, each named like its dictionary, after
    resolving every site and checking widths (`Dictionary.check_sites`)."""
    return [w for _, w in plan_sites(model, saes)]


def plan_sites(model, saes: Mapping[str, Dictionary]) -> list[tuple[HookPoint, HookPoint]]:
    """(read site, write site) per dictionary, in forward order of the write sites; the write
    site carries the dictionary's name. Refuses dictionaries whose read/write spans overlap (the
    splice runs in one forward pass: a read must come before its write and after every earlier
    write)."""
    if not isinstance(saes, Mapping) or not saes:
        raise ConfigError("splice needs at least one SAE or transcoder (a non-empty SAESet or dict)")
    pairs = []
    for name, dic in saes.items():
        if not isinstance(dic, Dictionary):
            raise ConfigError(f"value for {name!r} is {type(dic).__name__}, not a dictionary")
        read, write = dic.check_sites(model)
        pairs.append((dataclasses.replace(read, name=read.name), dataclasses.replace(write, name=name)))
    pairs.sort(key=lambda rw: rw[1].order)
    seen: dict[tuple[str, str], str] = {}
    last_write = -1
    for read, write in pairs:
        key = (write.module_path, write.side)
        if key in seen:
            raise HookPointError(f"dictionaries {seen[key]!r} and {write.name!r} write the same place")
        seen[key] = write.name
        if read.order > write.order or read.order < last_write:
            raise ConfigError(f"the dictionary {write.name!r} reads {read.name!r}, which the forward "
                              "pass does not reach between the previous dictionary's write and its own "
                              "write; splice such dictionaries separately")
        last_write = write.order
    return pairs


def splice_points(model, saes: Mapping[str, Dictionary], points: Sequence[HookPoint],
                  edit: Edit | None = None, track_grad: bool = False,
                  reads: Mapping[str, HookPoint] | None = None) -> dict[str, Spliced]:
    """Inside a trace: at each write site (forward order) y -> decode(encode(x)) + error, where x
    is the read site's value (the same as y for an SAE). See `ReplacementModel.splice`."""
    out: dict[str, Spliced] = {}
    for hp in points:
        dic = saes[hp.name]
        read = (reads or {}).get(hp.name)
        x = hooks.read(model, read) if read is not None and read.order != hp.order else None
        y = hooks.read(model, hp)
        if x is None:
            x = y
        if track_grad and not x.requires_grad:
            x = x.detach().requires_grad_(True)
            if read is None or read.order == hp.order:
                y = x
        features = dic.encode(x)
        y_hat = dic.decode(features, x, dtype=y.dtype)
        error = (y - y_hat).detach()
        # ŷ + error can differ from y in the last bit; the (exact, Sterbenz) residual of
        # that sum makes an unedited splice return y bit for bit.
        rounding = (y.detach() - (y_hat.detach() + error)).detach()
        if track_grad:
            error.requires_grad_(True)
        if edit is not None:
            edited = edit(hp, features, error)
            if edited is not None:
                features, error = edited
                y_hat = dic.decode(features, x, dtype=y.dtype)
        if track_grad and features.requires_grad:
            features.retain_grad()
        hooks.write(model, hp, y_hat + error + rounding)
        out[hp.name] = Spliced(hook=hp, features=features, error=error)
    return nnsight.save(out)


def logits_site(model) -> HookPoint:
    """The hook point of the logits: the output of the model's output-embedding module."""
    hf = unwrap(model)
    head = hf.get_output_embeddings()
    if head is None:
        raise HookPointError(f"model {model_name_of(model)!r} has no output embedding")
    path = next(name for name, module in hf.named_modules() if module is head)
    return hooks.resolve(model, path)


def unembedding(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(unembedding weight `[vocab, d]`, its bias or None) of the output-embedding module."""
    head = unwrap(model).get_output_embeddings()
    if head is None:
        raise ConfigError(f"model {model_name_of(model)!r} has no output embedding")
    return head.weight, getattr(head, "bias", None)


def final_norm(model) -> tuple[torch.Tensor | None, bool]:
    """(elementwise weight of the final norm or None, whether the norm centres its input)."""
    hf = unwrap(model)
    base = getattr(hf, hf.base_model_prefix, hf) if getattr(hf, "base_model_prefix", "") else hf
    for name in ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f"):
        norm = getattr(base, name, None)
        if isinstance(norm, torch.nn.Module):
            weight = getattr(norm, "weight", None)
            centres = isinstance(norm, torch.nn.LayerNorm)
            if weight is None:
                return None, centres
            weight = weight.detach()
            if "gemma" in type(norm).__name__.lower():  # Gemma RMSNorm scales by (1 + w)
                weight = 1.0 + weight
            return weight, centres
    return None, False


def logit_lens(model, rows: torch.Tensor) -> torch.Tensor:
    """Direct effect of residual directions `rows [n, d]` on the logits: `[n, vocab]` (float, CPU).

    Each row (centred if the final norm is a LayerNorm) ⊙ final-norm weight, times the
    unembedding; the norm's positive scale factor is left out.
    """
    head = unwrap(model).get_output_embeddings()
    if head is None:
        raise ConfigError(f"model {model_name_of(model)!r} has no output embedding")
    w_u = head.weight.detach()
    rows = rows.detach().to(w_u)
    weight, centres = final_norm(model)
    if centres:
        rows = rows - rows.mean(dim=-1, keepdim=True)
    if weight is not None:
        rows = rows * weight.to(w_u)
    return (rows @ w_u.T).float().cpu()


class ReplacementModel:
    """A model with dictionaries spliced at resolved sites (see the module docstring).

    Args:
        model: an nnsight `TransformersModel` (from `load_model`).
        saes: hook name -> SAE (may be empty for a bare model).
        tokenizer: defaults to `model.tokenizer`.
        place: move each SAE to its site's device (in place).
    """

    def __init__(self, model, saes: Mapping[str, Dictionary] | None = None, tokenizer=None, *,
                 place: bool = True):
        if isinstance(model, ReplacementModel):
            raise ConfigError("model is already a ReplacementModel")
        self.model = model
        self.tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        self.saes: dict[str, Dictionary] = dict(saes or {})
        pairs = plan_sites(model, self.saes) if self.saes else []
        self.points: list[HookPoint] = [w for _, w in pairs]           # write sites, named
        self.reads: dict[str, HookPoint] = {w.name: r for r, w in pairs}
        self.sites: dict[str, HookPoint] = {hp.name: hp for hp in self.points}
        self.logits: HookPoint = logits_site(model)
        self.device: torch.device = model_device(model)
        if place:
            for hp in self.points:
                sae, dev = self.saes[hp.name], module_device(model, hp.module_path)
                if sae.device.type == "meta":
                    raise ShapeError(f"SAE at {hp.name!r} is on the meta device (it has no "
                                     "weights); load or initialise them first")
                if sae.device != dev:
                    sae.to(dev)

    # -- facts -------------------------------------------------------------------------
    @property
    def hooks(self) -> list[str]:
        """Hook names of the dictionaries, in forward order."""
        return [hp.name for hp in self.points]

    @property
    def name(self) -> str:
        return model_name_of(self.model)

    @property
    def hf(self) -> torch.nn.Module:
        return unwrap(self.model)

    def site(self, name: str) -> HookPoint:
        """The resolved site of a hook name (dictionary sites, else resolved now and kept)."""
        if name not in self.sites:
            self.sites[name] = hooks.resolve(self.model, name)
        return self.sites[name]

    def inputs(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Token tensors moved to the input embeddings' device."""
        return {k: v.to(self.device) for k, v in inputs.items()}

    # -- inside a trace ----------------------------------------------------------------
    def splice(self, edit: Edit | None = None, grad: bool = False,
               only: Sequence[str] | None = None) -> dict[str, Spliced]:
        """Inside `self.model.trace(...)`: splice every dictionary (or those in `only`)."""
        points = self.points if only is None else [hp for hp in self.points if hp.name in only]
        return splice_points(self.model, self.saes, points, edit=edit, track_grad=grad,
                             reads=self.reads)

    def read(self, site: HookPoint) -> torch.Tensor:
        return hooks.read(self.model, site)

    def read_logits(self) -> torch.Tensor:
        """Inside a trace, after every splice: the logits `[batch, pos, vocab]`."""
        return hooks.read(self.model, self.logits)

    # -- whole runs --------------------------------------------------------------------
    def run(self, inputs, edit: Edit | None = None, grad: bool = False, last: bool = False,
            splice: bool = True) -> tuple[torch.Tensor, dict[str, Spliced]]:
        """One forward: trace + splice (+ `edit`) + logits.

        Args:
            inputs: `input_ids`/`attention_mask` dict (moved to the model's input device).
            grad: keep the autograd graph (features differentiable, error terms leaves).
            last: return only the last position's logits `[batch, vocab]`.
            splice: False runs the bare model.
        Returns:
            (logits `[batch, pos, vocab]` or `[batch, vocab]`, hook -> Spliced).
        """
        with torch.set_grad_enabled(grad), self.model.trace(self.inputs(inputs)):
            acts = self.splice(edit, grad) if splice and self.points else nnsight.save({})
            logits = self.read_logits()
            logits = (logits[:, -1] if last else logits).save()
        return logits, acts

    # -- logit lens --------------------------------------------------------------------
    def lens(self, hook: str, indices: Sequence[int]) -> torch.Tensor:
        """`[len(indices), vocab]` direct logit effect of features' decoder rows (final norm applied)."""
        sae = self.saes[hook]
        idx = torch.as_tensor(list(indices), dtype=torch.long, device=sae.W_dec.device)
        return logit_lens(self.model, sae.W_dec.detach()[idx])

    def __repr__(self) -> str:
        return f"ReplacementModel({self.name!r}, sites={self.hooks})"


def bind(model, saes: Mapping[str, Dictionary] | None = None, tokenizer=None) -> ReplacementModel:
    """`model` if it is already bound, else a new `ReplacementModel(model, saes, tokenizer)`."""
    if isinstance(model, ReplacementModel):
        return model
    return ReplacementModel(model, saes, tokenizer)
