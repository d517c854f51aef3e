"""`explain` runs: choose units per basis at each hook, build excerpts, score every unit,
and write results that survive interruption.

Output directory:
  run.json           the run's settings (a resumed run must match them)
  results.jsonl      one scored unit per line, appended as each finishes (the resume log)
  results.json/.csv  every unit: basis, unit, explanation, score, score_top, ...
  explanations.json  {"hook:feature": explanation} for SAE features (see `load_explanations`)
  summary.json       per basis: n, mean score, bootstrap 95% CI, median
  scores.svg         mean score per basis with CIs and each unit's score
  cache.json         the backend's answers (reused by reruns; `--cache` moves it)
  bases.safetensors  fitted PCA / ICA / neuron bases (reused by a resumed run)
"""
from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, ExportError
from ..export.explanations import load_explanations  # noqa: F401 (re-exported)
from ..fileio import write_json, write_text
from ..progress import bar as progress_bar, track
from ..dictionaries import Dictionary as SAE
from .backends import AnswerCache, ExplainerError
from .contexts import (Basis, ExcerptConfig, HookActivations, collect_hook_activations,
                       ica_basis, linear_basis, live_units, neuron_basis, pca_basis, sae_basis,
                       split_excerpts)
from .explain import ScoreConfig, UnitScore, score_unit
from . import svg

BASES = ("sae", "neurons", "pca", "ica")
WEAK_NOTE = ("the explainer is a small local model ({name}, {params:.0f}M parameters): "
             "it is a weak explainer and simulator, so low scores are expected; use a large "
             "model (--backend endpoint) for meaningful numbers")


def unit_key(hook: str, basis: str, unit: int) -> str:
    """`hook:unit` for SAE features (the dashboards' key), `hook:basis<unit>` otherwise."""
    return f"{hook}:{int(unit)}" if basis == "sae" else f"{hook}:{basis}{int(unit)}"


def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (NaN, NaN for fewer than 2 values)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


@dataclass
class ExplainConfig:
    """units: {hook: [feature, ...]} for chosen SAE features, or None with `top` units per
    basis per hook, picked by `select` ("random": uniformly among units active in at least
    `excerpts.n_top` windows, as in the papers; "frequent": most often active first)."""

    hooks: list[str]
    bases: list[str] = field(default_factory=lambda: ["sae"])
    units: dict[str, list[int]] | None = None
    top: int = 10
    select: str = "random"
    context: int = 64
    windows: int = 256
    batch_size: int = 8
    ica_components: int | None = None
    ica_iter: int = 200
    seed: int = 0
    excerpts: ExcerptConfig = field(default_factory=ExcerptConfig)
    scoring: ScoreConfig = field(default_factory=ScoreConfig)

    def validate(self) -> None:
        bad = [b for b in self.bases if b not in BASES]
        if bad or not self.bases:
            raise ConfigError(f"unknown basis {bad or self.bases}; choose from {list(BASES)}")
        if self.units is not None and self.bases != ["sae"]:
            raise ConfigError("--features picks SAE features only; use --top N to compare bases")
        if self.units is None and self.top < 1:
            raise ConfigError(f"--top must be >= 1, got {self.top}")
        if self.select not in ("random", "frequent"):
            raise ConfigError(f"select must be 'random' or 'frequent', got {self.select!r}")
        if self.excerpts.n_top < 2 or self.excerpts.n_random < 0:
            raise ConfigError("need n_top >= 2 top excerpts (half explain, half score) and n_random >= 0")


def build_bases(cfg: ExplainConfig, saes: Mapping[str, SAE], acts: HookActivations,
                store: Path | None = None) -> dict[str, Basis]:
    """The bases at `acts.hook`; fitted linear bases are kept in `store` (a safetensors file)
    and reused from it by a resumed run."""
    from ..fileio import read_safetensors, write_safetensors

    saved = read_safetensors(store) if store is not None and store.is_file() else {}
    fit = acts.flat()
    out: dict[str, Basis] = {}
    for kind in cfg.bases:
        if kind == "sae":
            out[kind] = sae_basis(saes[acts.hook])
        elif f"{acts.hook}/{kind}/w" in saved:
            out[kind] = linear_basis(kind, saved[f"{acts.hook}/{kind}/mean"],
                                     saved[f"{acts.hook}/{kind}/w"])
        elif kind == "neurons":
            out[kind] = neuron_basis(fit)
        elif kind == "pca":
            out[kind] = pca_basis(fit)
        else:
            out[kind] = ica_basis(fit, cfg.ica_components, cfg.ica_iter, cfg.seed, max_samples=4096)
        if store is not None and out[kind].params and f"{acts.hook}/{kind}/w" not in saved:
            saved |= {f"{acts.hook}/{kind}/{k}": v for k, v in out[kind].params.items()}
            write_safetensors(store, saved)
    return out


def choose_units(cfg: ExplainConfig, hook: str, kind: str, basis: Basis,
                 acts: HookActivations) -> list[int]:
    if cfg.units is not None:
        return list(cfg.units.get(hook, []))
    all_acts = basis.activations(acts.x)
    live = live_units(acts, all_acts, cfg.excerpts.n_top)
    if cfg.select == "frequent":
        freq = ((all_acts * acts.mask[..., None]) > 0).float().sum((0, 1))
        order = live[torch.argsort(freq[live], descending=True, stable=True)]
        return [int(u) for u in order[:cfg.top]]
    rng = np.random.default_rng([cfg.seed, BASES.index(kind)])
    pick = rng.permutation(live.numpy())[:cfg.top]
    return sorted(int(u) for u in pick)


def _read_log(path: Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                done[row["key"]] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut by an interruption: that unit is scored again
    return done


def _run_settings(cfg: ExplainConfig, backend, saes_dir: str) -> dict:
    d = asdict(cfg)
    return {"config": d, "backend": backend.ident, "saes": str(saes_dir)}


def run_explain(model, tok, saes: Mapping[str, SAE], texts: Sequence[str], backend,
                cfg: ExplainConfig, out: str | os.PathLike, *, saes_dir: str = "",
                cache_path: str | os.PathLike | None = None, overwrite: bool = False,
                progress: bool = True, log=print, time_budget: float | None = None) -> dict:
    """Score units and write the output directory (see the module doc). Resumes a run with
    the same settings found in `out`; a different one needs `overwrite=True`. Units are
    scored round-robin over the bases; with `time_budget` (seconds of scoring, after the
    activations and bases are ready) no new unit is started once it is spent (a rerun
    continues)."""
    import time

    cfg.validate()
    for hook in cfg.hooks:
        if hook not in saes:
            raise ConfigError(f"no SAE at hook {hook!r} (SAEs: {sorted(saes)})")
    if cfg.units is not None:
        for hook, units in cfg.units.items():
            d_sae = saes[hook].cfg.d_sae
            bad = [u for u in units if not 0 <= u < d_sae]
            if bad:
                raise ConfigError(f"feature {hook}:{bad[0]} is out of range: the SAE at {hook!r} "
                                  f"has {d_sae} features")
    out = Path(out)
    settings = _run_settings(cfg, backend, saes_dir)
    run_file, log_file = out / "run.json", out / "results.jsonl"
    if out.exists() and any(out.iterdir()):
        previous = json.loads(run_file.read_text()) if run_file.is_file() else None
        if previous is None and not overwrite:
            raise ExportError(f"output directory {str(out)!r} exists and is not an explain run; "
                              "pass --overwrite or choose another --out")
        if previous is not None and previous != settings and not overwrite:
            raise ExportError(f"output directory {str(out)!r} holds an explain run with other "
                              "settings; pass --overwrite to start again (cached answers are kept)")
        if overwrite and previous != settings:
            for stale in (log_file, out / "bases.safetensors"):
                if stale.exists():
                    stale.unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_json(run_file, settings)
    cache = AnswerCache(cache_path or out / "cache.json")
    done = _read_log(log_file)
    if getattr(backend, "weak", False):
        log("note: " + WEAK_NOTE.format(name=backend.model_name, params=backend.n_params / 1e6))

    all_acts = collect_hook_activations(model, tok, cfg.hooks, texts, cfg.context, cfg.windows,
                                        cfg.batch_size, progress)
    jobs = []
    for hook in track(cfg.hooks, "bases and units (PCA/ICA fits)", unit="hook", enabled=progress):
        acts = all_acts[hook]
        per_basis = []
        for kind, basis in build_bases(cfg, saes, acts, out / "bases.safetensors").items():
            units = choose_units(cfg, hook, kind, basis, acts)
            if len(units) < (cfg.top if cfg.units is None else 1):
                log(f"note: {hook} {kind}: only {len(units)} live units with >= "
                    f"{cfg.excerpts.n_top} active windows")
            # the chosen units' activations in one encoding pass (not one pass per unit)
            unit_acts = basis.activations(acts.x, units) if units else None
            per_basis.append([(hook, kind, unit_acts[..., j], acts, u) for j, u in enumerate(units)])
        for i in range(max((len(b) for b in per_basis), default=0)):  # round-robin over bases
            jobs += [b[i] for b in per_basis if i < len(b)]
    rows = [done[unit_key(h, k, u)] for h, k, _, _, u in jobs if unit_key(h, k, u) in done]
    todo = [j for j in jobs if unit_key(j[0], j[1], j[4]) not in done]
    if rows:
        log(f"resuming: {len(rows)} of {len(jobs)} units already scored")
    bar = progress_bar(len(jobs), "explain+simulate", initial=len(rows), unit="unit",
                       enabled=progress, leave=True)
    skipped: list[str] = []
    started = time.monotonic()
    try:
        for hook, kind, unit_acts, acts, unit in todo:
            if time_budget is not None and time.monotonic() - started > time_budget:
                log(f"time budget of {time_budget:.0f}s spent: {len(rows)} of {len(jobs)} units "
                    "scored; rerun to continue")
                break
            key = unit_key(hook, kind, unit)
            try:
                split = split_excerpts(tok, acts, unit_acts, cfg.excerpts,
                                       salt=BASES.index(kind) * 1_000_003 + unit)
            except ConfigError as err:  # a chosen feature that (almost) never fires
                skipped.append(f"{key}: {err}")
                bar.update(1)
                continue
            res = score_unit(backend, cache, key, kind, unit, split, cfg.scoring)
            row = res.row() | {"hook": hook}
            with open(log_file, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            rows.append(row)
            bar.update(1)
    finally:
        bar.close()
    result = write_outputs(out, rows, cfg, backend, cache, skipped)
    result["complete"] = len(rows) + len(skipped) >= len(jobs)
    result["scoring_s"] = round(time.monotonic() - started, 1)
    return result


def summarise(rows: Sequence[dict], seed: int = 0) -> dict[str, dict]:
    out = {}
    for kind in dict.fromkeys(r["basis"] for r in rows):
        s = [r["score"] for r in rows if r["basis"] == kind]
        st = [r["score_top"] for r in rows if r["basis"] == kind]
        lo, hi = bootstrap_ci(s, seed=seed)
        out[kind] = {"n": len(s), "mean": float(np.mean(s)), "ci95": [lo, hi],
                     "median": float(np.median(s)), "mean_top": float(np.mean(st)),
                     "constant_predictions": sum(bool(r["constant"]) for r in rows
                                                 if r["basis"] == kind)}
    return out


def _finite(x):
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, list):
        return [_finite(v) for v in x]
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    return x


def write_outputs(out: Path, rows: list[dict], cfg: ExplainConfig, backend, cache: AnswerCache,
                  skipped: list[str]) -> dict:
    order = {k: i for i, k in enumerate(BASES)}
    rows = sorted(rows, key=lambda r: (r["hook"], order.get(r["basis"], 9), r["unit"]))
    summary = summarise(rows, cfg.seed)
    cols = ["key", "hook", "basis", "unit", "score", "score_top", "n_tokens", "max_act",
            "constant", "explanation"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "results.csv", buf.getvalue())
    write_json(out / "results.json", _finite(rows))
    write_json(out / "explanations.json",
               {r["key"]: r["explanation"] for r in rows if r["basis"] == "sae"})
    note = (WEAK_NOTE.format(name=backend.model_name, params=backend.n_params / 1e6)
            if getattr(backend, "weak", False) else "")
    result = {"backend": backend.ident, "summary": summary, "n_units": len(rows),
              "skipped": skipped, "cache_entries": len(cache), "cache_hits": cache.hits,
              "note": note}
    write_json(out / "summary.json", _finite(result))
    if rows:
        names = list(summary)
        write_text(out / "scores.svg", svg.bars_with_ci(
            names, [summary[n]["mean"] for n in names],
            [summary[n]["ci95"][0] if summary[n]["n"] > 1 else summary[n]["mean"] for n in names],
            [summary[n]["ci95"][1] if summary[n]["n"] > 1 else summary[n]["mean"] for n in names],
            [[r["score"] for r in rows if r["basis"] == n] for n in names],
            f"explanation score per basis ({backend.ident})", "correlation (sim vs true)"))
    return _finite(result)
