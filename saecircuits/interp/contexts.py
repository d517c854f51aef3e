"""Hook activations over a corpus, unit bases at a hook (SAE features, neurons, PCA, ICA),
and the excerpts an explainer sees (Bills et al. 2023: top-activating excerpts split into an
explanation set and a scoring set, plus random excerpts for scoring).

    acts = collect_hook_activations(model, tok, "resid.10", texts)   # x: [n, ctx, d]
    basis = sae_basis(sae)                                           # or neuron/pca/ica_basis
    unit = basis.activations(acts.x, [12])[..., 0]                   # [n, ctx]
    split = split_excerpts(tok, acts, unit, ExcerptConfig())
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import hooks
from ..errors import ConfigError
from ..models import model_device
from ..sae import SAE


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
    bar = tqdm(total=len(ids), desc=f"activations at {','.join(names)}", unit="window",
               disable=not progress)
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


@dataclass
class Basis:
    """A set of units at a hook: `encode(x [..., d]) -> [..., n_units]` (non-negative).

    kind: "sae", "neurons", "pca" or "ica". For the linear bases (neurons, PCA, ICA) a unit's
    activation is relu(sign · (x − mean) · direction): each direction is oriented once, on
    the fitting data, so that its larger tail is positive (a direction and its negative are
    the same direction; the explainer is shown the side where it fires most strongly).
    """

    kind: str
    n_units: int
    encode: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)
    params: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def activations(self, x: torch.Tensor, units: Sequence[int] | None = None,
                    chunk: int = 4096) -> torch.Tensor:
        """`x [..., d] -> [..., len(units)]` activations of the chosen units (float32)."""
        idx = None if units is None else torch.as_tensor(list(units), dtype=torch.long)
        if idx is not None and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.n_units):
            bad = [int(u) for u in idx if not 0 <= int(u) < self.n_units]
            raise ConfigError(f"{self.kind} unit(s) {bad[:5]} out of range: the basis has "
                              f"{self.n_units} units")
        flat = x.reshape(-1, x.shape[-1])
        parts = []
        with torch.no_grad():
            for start in range(0, len(flat), chunk):
                a = self.encode(flat[start:start + chunk]).float()
                parts.append(a if idx is None else a[:, idx])
        width = self.n_units if idx is None else len(idx)
        out = torch.cat(parts) if parts else torch.zeros((0, width))
        return out.reshape(*x.shape[:-1], width)


def sae_basis(sae: SAE) -> Basis:
    def encode(x: torch.Tensor) -> torch.Tensor:
        return sae.encode(x.to(sae.device, sae.dtype)).float().cpu()

    return Basis("sae", sae.cfg.d_sae, encode)


def _linear_basis(kind: str, mean: torch.Tensor, directions: torch.Tensor,
                  fit: torch.Tensor) -> Basis:
    """Units relu(sign ⊙ ((x − mean) @ directions.T)); signs oriented on `fit [N, d]`."""
    proj = (fit - mean) @ directions.T
    hi = proj.quantile(0.999, dim=0) if len(proj) <= 16_000_000 // max(1, proj.shape[1]) else proj.max(0).values
    lo = proj.quantile(0.001, dim=0) if len(proj) <= 16_000_000 // max(1, proj.shape[1]) else proj.min(0).values
    sign = torch.where(hi.abs() >= lo.abs(), 1.0, -1.0)
    return linear_basis(kind, mean, (directions * sign[:, None]).T.contiguous())


def linear_basis(kind: str, mean: torch.Tensor, w: torch.Tensor) -> Basis:
    """Units relu((x − mean) @ w), w `[d, n_units]` (already oriented); `params` holds both,
    so a fitted basis can be stored and rebuilt."""
    mean, w = mean.float(), w.float()

    def encode(x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x.float() - mean) @ w)

    return Basis(kind, w.shape[1], encode, {"mean": mean, "w": w})


def neuron_basis(fit: torch.Tensor) -> Basis:
    """The hook's own coordinates (for `resid.L`: the residual stream basis), centred."""
    fit = fit.float()
    return _linear_basis("neurons", fit.mean(0), torch.eye(fit.shape[1]), fit)


def pca_basis(fit: torch.Tensor, n_components: int | None = None) -> Basis:
    """Principal directions of `fit [N, d]`, by decreasing variance."""
    fit = fit.float()
    n = fit.shape[1] if n_components is None else int(n_components)
    if not 1 <= n <= min(fit.shape):
        raise ConfigError(f"PCA needs 1 <= n_components <= min(N, d) = {min(fit.shape)}, got {n}")
    mean = fit.mean(0)
    _, _, vt = torch.linalg.svd((fit - mean).double(), full_matrices=False)
    return _linear_basis("pca", mean, vt[:n].float(), fit)


def fast_ica(x: np.ndarray, n_components: int, max_iter: int = 200, tol: float = 1e-4,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Symmetric FastICA with the logcosh contrast (Hyvärinen 1999), in numpy.

    x: `[N, d]`. Returns (mean `[d]`, unmixing `[n_components, d]` so that
    sources = (x − mean) @ unmixing.T have unit variance, iterations used).
    """
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(0)
    xc = x - mean
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    keep = s[:n_components] > s[0] * 1e-6
    s, vt = s[:n_components][keep], vt[:n_components][keep]
    whitening = vt / s[:, None] * math.sqrt(len(x))  # [k, d]
    z = xc @ whitening.T  # [N, k], identity covariance
    k = z.shape[1]
    rng = np.random.default_rng(seed)
    w = _sym_decorrelate(rng.standard_normal((k, k)))
    it = 0
    for it in range(1, max_iter + 1):
        wx = z @ w.T  # [N, k]
        g = np.tanh(wx)
        gp = 1.0 - g ** 2
        w_new = _sym_decorrelate(g.T @ z / len(z) - gp.mean(0)[:, None] * w)
        lim = np.max(np.abs(np.abs(np.einsum("ij,ij->i", w_new, w)) - 1.0))
        w = w_new
        if lim < tol:
            break
    return mean, w @ whitening, it


def _sym_decorrelate(w: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(w @ w.T)
    return (vecs / np.sqrt(np.clip(vals, 1e-12, None))) @ vecs.T @ w


def ica_basis(fit: torch.Tensor, n_components: int | None = None, max_iter: int = 200,
              seed: int = 0, max_samples: int | None = 4096) -> Basis:
    """Independent directions of `fit [N, d]` (sklearn FastICA if installed, else `fast_ica`),
    fitted on at most `max_samples` rows drawn at random (seeded). Each unmixing row is scaled
    to unit norm: units differ only by direction."""
    fit = fit.float()
    if max_samples is not None and len(fit) > max_samples:
        rows = np.random.default_rng(seed).choice(len(fit), size=max_samples, replace=False)
        fit = fit[torch.as_tensor(np.sort(rows))]
    n = fit.shape[1] if n_components is None else int(n_components)
    if not 1 <= n <= min(fit.shape):
        raise ConfigError(f"ICA needs 1 <= n_components <= min(N, d) = {min(fit.shape)}, got {n}")
    try:
        from sklearn.decomposition import FastICA  # type: ignore

        ica = FastICA(n_components=n, whiten="unit-variance", max_iter=max_iter, random_state=seed)
        ica.fit(fit.numpy())
        mean, unmix = ica.mean_, ica.components_
    except ImportError:
        mean, unmix, _ = fast_ica(fit.numpy(), n, max_iter=max_iter, seed=seed)
    unmix = torch.as_tensor(unmix, dtype=torch.float32)
    unmix = unmix / unmix.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return _linear_basis("ica", torch.as_tensor(mean, dtype=torch.float32), unmix, fit)


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
