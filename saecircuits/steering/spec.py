"""Declarative steering interventions and their validation against a model, SAEs and prompts.

An `Intervention` edits one hook point: SAE features (an index or a list) or a direction in
the hook's activation space. For features the edit is applied as (new − current) × W_dec rows
added to the hook's value, so the SAE error term and every untouched feature stay exact:

    set     f → value                 scale   f → value · f
    add     f → f + value             ablate  f → 0  (ablation="zero")  or its mean ("mean")

For a direction d (any length-d_in vector; it is normalised) the same rules act on the
projection a = x · d̂ and the edit is (a_new − a) · d̂.

CLI spec text: `HOOK:FEATURES[=VALUE][@POSITIONS]`, e.g. `resid.12:1234=8.0`,
`resid.12:5,9=0.5@generated`, `resid.4:77=mean@0,1,-1`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .. import hooks
from ..errors import ConfigError, HookPointError, InterventionError, ShapeError
from ..hooks import HookPoint
from ..replacement import ReplacementModel
from ..dictionaries import Dictionary as SAE
from ..wrapping import model_device

MODES = ("set", "scale", "add", "ablate")
ABLATIONS = ("zero", "mean")
POSITION_KINDS = ("prompt", "generated", "all")


@dataclass(frozen=True)
class Intervention:
    """One edit at one hook point.

    hook: hook-point name (`resid.12`, `mlp.3`, a raw module path).
    feature: SAE feature index, a list of indices, or a direction tensor `[d_in]`.
    mode: set | scale | add | ablate.
    value: set → target activation; scale → factor; add → amount added to the activation
        (i.e. value × decoder row added). A float, or a tensor `[n_features]` (one per feature).
        Ignored by ablate.
    ablation: zero | mean (ablate only; mean = mean activation over the prompts' non-pad
        tokens in the unsteered baseline run).
    positions: "prompt" (non-pad prompt tokens), "generated" (tokens produced by generation,
        fed back as inputs), "all", or explicit prompt indices (per row, counted over its
        non-pad tokens; negative from the end).
    only_if_active: edit only where the feature's current activation is > 0.
    """

    hook: str
    feature: int | Sequence[int] | torch.Tensor
    mode: str = "set"
    value: float | torch.Tensor = 0.0
    ablation: str = "zero"
    positions: str | Sequence[int] = "all"
    only_if_active: bool = False

    @property
    def is_direction(self) -> bool:
        return isinstance(self.feature, torch.Tensor) and self.feature.is_floating_point()

    def describe(self) -> str:
        if self.is_direction:
            what = "direction"
        else:
            idx = _indices(self)
            what = ",".join(map(str, idx)) if len(idx) <= 8 else f"[{len(idx)} features {idx[0]}..{idx[-1]}]"
        if self.mode == "ablate":
            rule = f"ablate({self.ablation})"
        else:
            value = self.value if not isinstance(self.value, torch.Tensor) else "tensor"
            rule = f"{self.mode}={value}"
        pos = self.positions if isinstance(self.positions, str) else ",".join(map(str, self.positions))
        return f"{self.hook}:{what} {rule} @{pos}" + (" if active" if self.only_if_active else "")


def _indices(iv: Intervention) -> list[int]:
    feat = iv.feature
    if isinstance(feat, torch.Tensor):
        if feat.is_floating_point():
            raise InterventionError(f"{iv.hook}: a float tensor is a direction, not feature indices")
        return [int(i) for i in feat.flatten().tolist()]
    if isinstance(feat, bool):
        raise InterventionError(f"{iv.hook}: feature must be an int index, a list or a direction, got {feat!r}")
    if isinstance(feat, int):
        return [feat]
    if isinstance(feat, Sequence) and not isinstance(feat, str) and feat and \
            all(isinstance(i, int) and not isinstance(i, bool) for i in feat):
        return list(feat)
    raise InterventionError(f"{iv.hook}: feature must be an int index, a non-empty list of ints "
                            f"or a direction tensor, got {feat!r}")


# -- CLI text ------------------------------------------------------------------------------
def parse_spec(text: str, mode: str) -> Intervention:
    """Parse `HOOK:FEATURES[=VALUE][@POSITIONS]` for `mode` (the CLI flag it came from).

    FEATURES is `1234` or `1,2,3`; VALUE is a float (set/scale/add; required) or
    `zero`/`mean` (ablate; default zero); POSITIONS is prompt|generated|all or `0,3,-1`.
    """
    if mode not in MODES:
        raise InterventionError(f"unknown steering mode {mode!r}; expected one of {', '.join(MODES)}")
    if not isinstance(text, str) or ":" not in text:
        raise InterventionError(f"bad intervention {text!r}: expected HOOK:FEATURES[=VALUE][@POSITIONS], "
                                "e.g. resid.12:1234=8.0")
    body, at, pos_text = text.partition("@")
    positions: str | list[int] = "all"
    if at:
        positions = pos_text if pos_text in POSITION_KINDS else _ints(pos_text, text, "positions")
    body, eq, value_text = body.partition("=")
    hook, _, feat_text = body.rpartition(":")
    if not hook or not feat_text:
        raise InterventionError(f"bad intervention {text!r}: missing hook or feature index")
    features = _ints(feat_text, text, "feature indices")
    feature: int | list[int] = features[0] if len(features) == 1 else features
    if mode == "ablate":
        ablation = value_text if eq else "zero"
        return Intervention(hook, feature, "ablate", 0.0, ablation, positions)
    if not eq:
        raise InterventionError(f"bad intervention {text!r}: --{_flag(mode)} needs a value (HOOK:FEATURE=VALUE)")
    try:
        value = float(value_text)
    except ValueError:
        raise InterventionError(f"bad intervention {text!r}: value {value_text!r} is not a number") from None
    return Intervention(hook, feature, mode, value, "zero", positions)


def _flag(mode: str) -> str:
    return "clamp" if mode == "set" else mode


def _ints(text: str, spec: str, what: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise InterventionError(f"bad intervention {spec!r}: {what} {text!r} must be integers "
                                "separated by commas") from None
    return values


# -- validation ----------------------------------------------------------------------------
@dataclass
class Resolved:
    """A validated intervention bound to its hook point.

    index: `[n]` long feature indices (None for a direction).
    rows: `[n, d_in]` decoder rows, or `[1, d_in]` the unit direction.
    value: `[n]` float values in the SAE/direction dtype (unused for ablate).
    columns: `[batch, total]` bool — which absolute columns (padded prompt + generated) to edit.
    mean: `[n]` mean activations, filled from the baseline run for ablation="mean".
    read: a transcoder's read site (its features are encoded there; `hook` is its write site).
    """

    spec: Intervention
    hook: HookPoint
    index: torch.Tensor | None
    rows: torch.Tensor
    value: torch.Tensor
    columns: torch.Tensor
    mean: torch.Tensor | None = None
    read: HookPoint | None = None


def resolve_all(model, saes: Mapping[str, SAE] | None, interventions: Sequence[Intervention],
                attention_mask: torch.Tensor, max_new_tokens: int) -> list[Resolved]:
    """Validate every intervention (before anything runs) and bind it to its hook point.

    attention_mask: `[batch, prompt_len]` of the left-padded prompts.
    """
    if isinstance(interventions, Intervention):
        interventions = [interventions]
    if not isinstance(interventions, Sequence) or isinstance(interventions, (str, bytes)):
        raise InterventionError(f"interventions must be a list of Intervention, got "
                                f"{type(interventions).__name__} {str(interventions)[:60]!r}")
    saes = dict(saes.items()) if saes else {}  # plain dict: SAESet's `in` raises on misses
    out = []
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise InterventionError(f"expected an Intervention, got {iv!r}")
        out.append(_resolve(model, saes, iv, attention_mask, max_new_tokens))
    return out


def _resolve(model, saes, iv: Intervention, attention_mask, max_new_tokens) -> Resolved:
    if iv.mode not in MODES:
        raise InterventionError(f"unknown steering mode {iv.mode!r}; expected one of {', '.join(MODES)}")
    if iv.ablation not in ABLATIONS:
        raise InterventionError(f"unknown ablation {iv.ablation!r} for {iv.hook}; expected zero or mean")
    hp = model.site(iv.hook) if isinstance(model, ReplacementModel) else hooks.resolve(model, iv.hook)
    if iv.is_direction:
        direction = iv.feature.detach().flatten()
        if direction.numel() != hp.width:
            raise InterventionError(f"direction for {iv.hook} has {direction.numel()} values, "
                                    f"the hook point has width {hp.width}")
        if not torch.isfinite(direction).all() or float(direction.norm()) == 0.0:
            raise InterventionError(f"direction for {iv.hook} must be finite and non-zero")
        sae = saes.get(iv.hook)
        device = sae.device if sae is not None else _device(model)
        rows = (direction / direction.norm()).to(device=device, dtype=torch.float32)[None]
        index, n = None, 1
    else:
        if iv.hook not in saes:
            raise InterventionError(f"no SAE at hook point {iv.hook!r} for feature intervention "
                                    f"{iv.describe()}; SAEs are at {sorted(saes) or 'no hook'}")
        sae = saes[iv.hook]
        if not isinstance(sae, SAE):
            raise InterventionError(f"value for hook {iv.hook!r} is {type(sae).__name__}, not an SAE")
        try:
            read, _ = sae.check_sites(model.model if isinstance(model, ReplacementModel) else model)
        except (HookPointError, ShapeError) as err:
            raise InterventionError(str(err)) from None
        idx = _indices(iv)
        bad = [i for i in idx if not 0 <= i < sae.cfg.d_sae]
        if bad:
            raise InterventionError(f"feature index {bad[0]} at {iv.hook} is out of range: "
                                    f"the SAE has d_sae={sae.cfg.d_sae} (valid 0..{sae.cfg.d_sae - 1})")
        index = torch.tensor(idx, dtype=torch.long, device=sae.device)
        rows = sae.W_dec.detach()[index]
        n = len(idx)
    value = _value(iv, n, rows)
    columns = position_columns(iv, attention_mask, max_new_tokens)
    read = read if not iv.is_direction and sae.is_transcoder else None
    return Resolved(iv, hp, index, rows, value, columns.to(rows.device), read=read)


def _device(model) -> torch.device:
    return model.device if isinstance(model, ReplacementModel) else model_device(model)


def _value(iv: Intervention, n: int, rows: torch.Tensor) -> torch.Tensor:
    value = iv.value
    if isinstance(value, torch.Tensor):
        value = value.detach().flatten().to(device=rows.device, dtype=rows.dtype)
        if value.numel() not in (1, n):
            raise InterventionError(f"{iv.hook}: value tensor has {value.numel()} entries for {n} features")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = torch.tensor([float(value)], device=rows.device, dtype=rows.dtype)
    else:
        raise InterventionError(f"{iv.hook}: value must be a number or a tensor, got {value!r}")
    if not torch.isfinite(value).all():
        raise InterventionError(f"non-finite value {iv.value!r} in intervention {iv.describe()}")
    if iv.mode != "ablate":
        from ..limits import check_edit_magnitude

        check_edit_magnitude(float(value.abs().max()), float(rows.float().norm(dim=-1).max()),
                             iv.describe())
    if not isinstance(iv.only_if_active, bool):
        raise InterventionError(f"{iv.hook}: only_if_active must be True or False, got {iv.only_if_active!r}")
    return value.expand(n).clone()


def position_columns(iv: Intervention, attention_mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """`[batch, prompt_len + max_new_tokens]` bool mask of the absolute columns to edit."""
    batch, plen = attention_mask.shape
    prompt = torch.zeros(batch, plen + max_new_tokens, dtype=torch.bool)
    prompt[:, :plen] = attention_mask.bool().cpu()
    generated = torch.zeros_like(prompt)
    generated[:, plen:] = True
    pos = iv.positions
    if isinstance(pos, str):
        if pos not in POSITION_KINDS:
            raise InterventionError(f"unknown positions {pos!r} for {iv.hook}; expected prompt, "
                                    "generated, all or a list of prompt indices")
        return {"prompt": prompt, "generated": generated, "all": prompt | generated}[pos]
    if not isinstance(pos, Sequence) or not pos or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in pos):
        raise InterventionError(f"positions for {iv.hook} must be prompt|generated|all or a "
                                f"non-empty list of ints, got {pos!r}")
    lengths = attention_mask.sum(dim=1).tolist()
    shortest = int(min(lengths))
    bad = [i for i in pos if not -shortest <= i < shortest]
    if bad:
        raise InterventionError(f"position {bad[0]} for {iv.hook} is beyond the prompt: the shortest "
                                f"prompt has {shortest} tokens (valid {-shortest}..{shortest - 1})")
    out = torch.zeros_like(prompt)
    for row, length in enumerate(lengths):
        start = plen - int(length)
        for i in pos:
            out[row, start + (i % int(length))] = True
    return out


def check_generation_args(max_new_tokens, temperature, top_p) -> None:
    """Raise ConfigError on a bad generation setting (named in the message)."""
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens <= 0:
        raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ConfigError(f"temperature must be a finite number > 0, got {temperature!r}")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p!r}")
