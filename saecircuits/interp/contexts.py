"""Hook activations over a corpus and the excerpts an explainer sees (Bills et al. 2023:
top-activating excerpts split into an explanation set and a scoring set, plus random excerpts
for scoring). The unit bases (SAE features, neurons, PCA, ICA) are `saecircuits.bases`.

    acts = collect_hook_activations(model, tok, "resid.10", texts)   # x: [n, ctx, d]
    basis = sae_basis(sae)              # saecircuits.bases: or neuron_basis / pca_basis / ica_basis
    unit = basis.activations(acts.x, [12])[..., 0]                   # [n, ctx]
    split = split_excerpts(tok, acts, unit, ExcerptConfig())
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .. import hooks
from ..bases import Basis, ica_basis, linear_basis, neuron_basis, pca_basis, sae_basis  # noqa: F401
from ..errors import ConfigError
from ..models import model_device
from ..progress import bar as progress_bar


@dataclass
class HookActivations:
    """Raw activations at one hook point: ids/mask `[n, ctx]`, x `[n, ctx, d]` (float32).
    mask is False at padding and at position 0 (an attention sink, left out as in training)."""

    hook: str
    ids: torch.Tensor
    mask: torch.Tensor
    x: torch.Tensor

    def flat(self) -> torch.Tensor:
        """The unmasked activation vectors `[N, d]`."""
        return self.x[self.mask]


def collect_hook_activations(model, tok, hook: str | Sequence[str], texts: Sequence[str],
                             context: int = 64, max_windows: int | None = 256,
                             batch_size: int = 8, progress: bool = True, precision: str = "auto"
                             ) -> HookActivations | dict[str, HookActivations]:
    """One pass over `texts` (token windows of `context`), reading the hook point(s) and
    stopping after the deepest. A list of hooks gives a dict keyed by hook. precision: the
    forwards' matmuls (`saecircuits.precision`); activations are returned in fp32."""
    from ..precision import resolve as resolve_precision
    from ..export.dashboards import windows_of

    names = [hook] if isinstance(hook, str) else list(dict.fromkeys(hook))
    points = hooks.sort_by_forward_order(model, names)
    ids, mask = windows_of(tok, texts, context, max_windows)
    device = model_device(model)
    prec = resolve_precision(precision, device)
    xs = {hp.name: torch.zeros((*ids.shape, hp.width), dtype=torch.float32) for hp in points}
    bar = progress_bar(len(ids), f"activations at {','.join(names)}", unit="window",
                       enabled=progress, leave=True)
    try:
        for start in range(0, len(ids), batch_size):
            batch = {"input_ids": ids[start:start + batch_size].to(device),
                     "attention_mask": mask[start:start + batch_size].long().to(device)}
            got: dict[str, torch.Tensor] = {}
            with torch.no_grad(), prec.autocast(), model.trace(batch) as tracer:
                for hp in points:
                    got[hp.name] = hooks.read(model, hp).detach().save()
                tracer.stop()
            for name, value in got.items():
                xs[name][start:start + batch_size] = value.float().cpu()
            bar.update(len(batch["input_ids"]))
    finally:
        bar.close()
    keep = mask.clone()
    keep[:, 0] = False
    out = {name: HookActivations(name, ids, keep, x) for name, x in xs.items()}
    return out[names[0]] if isinstance(hook, str) else out


# -- excerpts ---------------------------------------------------------------------------
@dataclass
class Excerpt:
    """A run of tokens with one unit's true activations; kind "top" or "random"."""

    tokens: list[str]
    acts: list[float]
    kind: str
    window: int
    start: int


@dataclass
class ExcerptConfig:
    """n_top top-activating windows alternate between the explanation set and the scoring
    set (ranks 1, 3, 5, … explain; 2, 4, 6, … score); n_random random windows (never top
    ones) are added to the scoring set. Excerpts are `left` tokens before the window's max
    and `right` after it (random ones: `left + right + 1` tokens from a random start)."""

    n_top: int = 10
    n_random: int = 5
    left: int = 24
    right: int = 8
    seed: int = 0


@dataclass
class ExcerptSplit:
    explain: list[Excerpt]
    score: list[Excerpt]
    max_act: float


def _decode(tok, ids: Sequence[int]) -> list[str]:
    return tok.batch_decode([[int(i)] for i in ids])


def split_excerpts(tok, acts: HookActivations, unit: torch.Tensor, cfg: ExcerptConfig,
                   salt: int = 0) -> ExcerptSplit:
    """Explanation / scoring excerpts of one unit with activations `unit [n, ctx]`.
    Raises ConfigError if the unit is active in fewer than 2 windows (nothing to score)."""
    unit = torch.where(acts.mask, unit.float(), torch.zeros(()))
    per_window = unit.max(dim=1)
    order = torch.argsort(per_window.values, descending=True, stable=True)
    active = order[per_window.values[order] > 0][:cfg.n_top]
    if len(active) < 2:
        raise ConfigError(f"unit is active in {len(active)} window(s) of the corpus; "
                          "need at least 2 (choose live units or a larger corpus)")
    lengths = acts.mask.sum(1) + 1  # valid tokens per window (position 0 included)

    def excerpt(w: int, centre: int | None, kind: str, rng) -> Excerpt:
        valid = int(lengths[w])
        span = cfg.left + cfg.right + 1
        if centre is None:
            start = int(rng.integers(1, max(2, valid - span + 1)))
        else:
            start = max(1, centre - cfg.left)
        end = min(valid, start + span)
        return Excerpt(_decode(tok, acts.ids[w, start:end].tolist()),
                       [round(float(v), 5) for v in unit[w, start:end]], kind, w, start)

    rng = np.random.default_rng([cfg.seed, salt])
    top = [excerpt(int(w), int(per_window.indices[w]), "top", rng) for w in active]
    others = np.setdiff1d(np.arange(len(unit)), active.numpy())
    pick = rng.choice(others, size=min(cfg.n_random, len(others)), replace=False) if len(others) else []
    rand = [excerpt(int(w), None, "random", rng) for w in pick]
    return ExcerptSplit(top[0::2], top[1::2] + rand, float(per_window.values[active[0]]))


def live_units(acts: HookActivations, unit_acts: torch.Tensor, min_windows: int = 2) -> torch.Tensor:
    """Indices of units active in at least `min_windows` windows; unit_acts `[n, ctx, U]`."""
    masked = unit_acts * acts.mask[..., None]
    return torch.nonzero(((masked > 0).any(dim=1)).sum(0) >= min_windows).flatten()
