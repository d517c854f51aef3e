"""Feature universality: match the features of two SAEs (Towards Monosemanticity; Sharkey
et al.'s MMCS) — by decoder direction and by activations on shared text.

- MMCS: for each feature of A, the max cosine similarity of its decoder row with any decoder
  row of B (needs equal d_in: seeds, sizes, layers of one model, or models of equal width).
- Activation correlation: for each feature of A, the max Pearson correlation of its
  activations with any feature of B over the same tokens (features that never fire in the
  sample have no correlation and are left out of those statistics).
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, ShapeError
from ..fileio import write_json, write_text
from ..dictionaries import Dictionary as SAE
from ..sae import SAESet
from . import svg

THRESHOLDS = (0.5, 0.7, 0.9)


def _unit_rows(w: torch.Tensor) -> torch.Tensor:
    w = w.detach().float().cpu()
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


def max_cosine(a: torch.Tensor, b: torch.Tensor, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of `a [n, d]`: max cosine with any row of `b [m, d]` and its index."""
    if a.shape[1] != b.shape[1]:
        raise ShapeError(f"decoder widths differ: {a.shape[1]} vs {b.shape[1]}; MMCS needs "
                         "SAEs on activations of the same width")
    a, b = _unit_rows(a), _unit_rows(b)
    vals, idx = [], []
    for s in range(0, len(a), chunk):
        v, i = (a[s:s + chunk] @ b.T).max(dim=1)
        vals.append(v)
        idx.append(i)
    return torch.cat(vals).clamp(-1, 1), torch.cat(idx)


def decoder_mmcs(sae_a: SAE, sae_b: SAE) -> tuple[torch.Tensor, torch.Tensor]:
    """`[d_sae_A]` max cosine of each A decoder row with B's rows, and the matching B index."""
    return max_cosine(sae_a.W_dec, sae_b.W_dec)


def max_correlation(fa: torch.Tensor, fb: torch.Tensor, chunk: int = 2048
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Activations `fa [N, n]`, `fb [N, m]` on the same tokens -> for each A column: max
    correlation with a B column, its index, and a mask of A columns that vary (alive)."""
    if fa.shape[0] != fb.shape[0]:
        raise ShapeError(f"activation samples differ in length: {fa.shape[0]} vs {fb.shape[0]}")

    def standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.double()
        x = x - x.mean(0)
        sd = x.norm(dim=0)
        return (x / sd.clamp_min(1e-12)).float(), sd > 1e-9

    za, alive_a = standardise(fa)
    zb, alive_b = standardise(fb)
    zb = zb[:, alive_b]
    b_index = torch.nonzero(alive_b).flatten()
    vals, idx = [], []
    for s in range(0, za.shape[1], chunk):
        if zb.shape[1] == 0:
            vals.append(torch.full((za[:, s:s + chunk].shape[1],), float("nan")))
            idx.append(torch.full_like(vals[-1], -1, dtype=torch.long))
            continue
        v, i = (za[:, s:s + chunk].T @ zb).max(dim=1)
        vals.append(v)
        idx.append(b_index[i])
    v = torch.cat(vals).clamp(-1, 1)
    v[~alive_a] = float("nan")
    return v, torch.cat(idx), alive_a


def paired_correlation(fa: torch.Tensor, fb: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Correlation of A column j with B column pairs[j] (NaN where either is constant)."""
    a = fa.double() - fa.double().mean(0)
    b = fb[:, pairs].double()
    b = b - b.mean(0)
    den = a.norm(dim=0) * b.norm(dim=0)
    out = (a * b).sum(0) / den.clamp_min(1e-300)
    out[den < 1e-12] = float("nan")
    return out.float()


def distribution(values: torch.Tensor, thresholds: Sequence[float] = THRESHOLDS,
                 bins: int = 40, lo: float = 0.0) -> dict:
    """Summary of a vector of similarities (NaN ignored): mean, median, quantiles, share of
    entries above each threshold, histogram over [lo, 1]."""
    v = values[~torch.isnan(values)].double().numpy()
    if len(v) == 0:
        return {"n": 0}
    counts, edges = np.histogram(np.clip(v, lo, 1.0), bins=bins, range=(lo, 1.0))
    return {"n": int(len(v)), "mean": float(v.mean()), "median": float(np.median(v)),
            "q10": float(np.quantile(v, 0.1)), "q90": float(np.quantile(v, 0.9)),
            "share_above": {str(t): float((v > t).mean()) for t in thresholds},
            "histogram": {"edges": [round(float(e), 6) for e in edges],
                          "counts": [int(c) for c in counts]}}


def random_baseline(d_in: int, n_a: int, n_b: int, seed: int = 0) -> float:
    """Mean MMCS of `n_a` random unit directions against `n_b` random ones (the chance level)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(min(n_a, 2048), d_in, generator=g)
    b = torch.randn(n_b, d_in, generator=g)
    return float(max_cosine(a, b)[0].mean())


@dataclass
class PairResult:
    """Comparison of SAE `hook_a` of set A with SAE `hook_b` of set B."""

    hook_a: str
    hook_b: str
    d_sae_a: int
    d_sae_b: int
    mmcs: torch.Tensor = field(repr=False)
    mmcs_index: torch.Tensor = field(repr=False)
    act_corr: torch.Tensor | None = field(default=None, repr=False)
    act_index: torch.Tensor | None = field(default=None, repr=False)
    act_corr_of_mmcs_match: torch.Tensor | None = field(default=None, repr=False)
    chance_mmcs: float = float("nan")

    def summary(self) -> dict:
        out = {"hook_a": self.hook_a, "hook_b": self.hook_b, "d_sae_a": self.d_sae_a,
               "d_sae_b": self.d_sae_b, "mmcs": distribution(self.mmcs, lo=-0.0),
               "chance_mmcs_mean": self.chance_mmcs}
        if self.act_corr is not None:
            out["activation_correlation"] = distribution(self.act_corr)
            out["activation_correlation_of_decoder_match"] = distribution(
                self.act_corr_of_mmcs_match)
            both = ~torch.isnan(self.act_corr)
            out["decoder_and_activation_match_agree"] = (
                float((self.act_index[both] == self.mmcs_index[both]).float().mean())
                if both.any() else None)
        return out


def compare_saes(sae_a: SAE, sae_b: SAE, fa: torch.Tensor | None = None,
                 fb: torch.Tensor | None = None, hook_a: str = "", hook_b: str = "",
                 seed: int = 0) -> PairResult:
    """Decoder MMCS (and activation correlation when the activations `fa [N, d_sae_A]`,
    `fb [N, d_sae_B]` on the same tokens are given)."""
    mmcs, index = decoder_mmcs(sae_a, sae_b)
    res = PairResult(hook_a or sae_a.cfg.hook, hook_b or sae_b.cfg.hook, sae_a.cfg.d_sae,
                     sae_b.cfg.d_sae, mmcs, index,
                     chance_mmcs=random_baseline(sae_a.cfg.d_in, sae_a.cfg.d_sae,
                                                 sae_b.cfg.d_sae, seed))
    if fa is not None and fb is not None:
        res.act_corr, res.act_index, _ = max_correlation(fa, fb)
        res.act_corr_of_mmcs_match = paired_correlation(fa, fb, index)
    return res


def load_sae_or_set(path: str | os.PathLike) -> SAESet:
    """An SAE set directory, or one SAE directory (keyed by its cfg hook)."""
    path = Path(path)
    if (path / "cfg.json").is_file():
        sae = SAE.load(path)
        return SAESet({sae.cfg.hook or path.name: sae})
    return SAESet.load(path)


def pair_hooks(a: SAESet, b: SAESet, pairs: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """`pairs` like ["resid.6:resid.10"] (or "resid.6" for the same hook in both); default:
    the hooks both sets have, else the single SAEs of two one-SAE sets."""
    out = []
    if pairs:
        for p in pairs:
            ha, _, hb = p.partition(":")
            hb = hb or ha
            for h, s, side in ((ha, a, "A"), (hb, b, "B")):
                if h not in s:
                    raise ConfigError(f"set {side} has no SAE at {h!r} (it has {sorted(s)})")
            out.append((ha, hb))
        return out
    common = [h for h in a if h in b]
    if common:
        return [(h, h) for h in common]
    if len(a) == 1 and len(b) == 1:
        return [(next(iter(a)), next(iter(b)))]
    raise ConfigError(f"the SAE sets share no hook ({sorted(a)} vs {sorted(b)}); "
                      "pass --pair HOOK_A:HOOK_B")


def write_comparison(out: Path, results: Sequence[PairResult], meta: dict) -> dict:
    """compare.json (summaries), matches_<a>__<b>.csv per pair, mmcs_<a>__<b>.svg histograms."""
    summaries = []
    for r in results:
        tag = f"{r.hook_a}__{r.hook_b}"
        s = r.summary()
        summaries.append(s)
        lines = ["feature_a,mmcs,match_b,act_corr_of_match,best_act_corr,best_act_b"]
        for j in range(r.d_sae_a):
            def fmt(t, k=j):
                if t is None:
                    return ""
                v = float(t[k])
                return "" if math.isnan(v) else f"{v:.5f}"
            lines.append(f"{j},{float(r.mmcs[j]):.5f},{int(r.mmcs_index[j])},"
                         f"{fmt(r.act_corr_of_mmcs_match)},{fmt(r.act_corr)},"
                         f"{'' if r.act_index is None else int(r.act_index[j])}")
        write_text(out / f"matches_{tag}.csv", "\n".join(lines) + "\n")
        h = s["mmcs"]["histogram"]
        write_text(out / f"mmcs_{tag}.svg", svg.histogram(
            h["edges"], h["counts"], f"MMCS {r.hook_a} (A, {r.d_sae_a}) vs {r.hook_b} "
            f"(B, {r.d_sae_b}); mean {s['mmcs']['mean']:.3f}, chance {r.chance_mmcs:.3f}",
            "max cosine similarity of decoder rows", marks=THRESHOLDS))
        if "activation_correlation" in s and s["activation_correlation"].get("n"):
            h = s["activation_correlation"]["histogram"]
            write_text(out / f"actcorr_{tag}.svg", svg.histogram(
                h["edges"], h["counts"], f"max activation correlation {r.hook_a} vs {r.hook_b}",
                "max Pearson correlation over shared tokens", marks=THRESHOLDS))
    result = meta | {"pairs": summaries}
    write_json(out / "compare.json", result)
    return result
