"""Cunningham et al. (2023) Fig. 3 by the authors' protocol: greedy backward elimination
(`compare-bases --protocol cunningham`; HoagyC/sparse_coding `ioi_feature_ident.py`,
`feat_ident_run`).

For a contrastive task (clean prompts, counterfactual "patch" prompts of the same length) and a
basis at a hook (`saecircuits.bases.Basis`: coefficients `c = encode(x)`, decoder rows `dec`):

1. Start with EVERY unit patched: at every real position the clean run's hook value becomes
   `x = x_clean + Σ_{j∈P} (c_patch,j − c_clean,j) dec_j` (an SAE keeps its clean
   reconstruction error; for a complete basis P = all gives the counterfactual's value).
2. For each threshold t of an increasing schedule (default the authors' 50 values
   `logspace(-5, 0, 50)`), visit the still-patched units in a random order (seeded; a fresh
   permutation per threshold) and un-patch unit i if that raises the divergence by less than
   t: `D(P − {i}) − D(P) < t` → P ← P − {i}, D(P) ← D(P − {i}).
3. After each threshold record |P|, D(P) and the edit magnitude of P.

D(P) = KL(edited ‖ counterfactual) of the next-token distribution at the last position, the
mean over prompts (the authors' `F.kl_div(log_softmax(patch), log_softmax(edited),
log_target=True, reduction="batchmean")`); the edit magnitude is the mean over the prompts'
real positions of ‖x − x_clean‖₂. Also recorded: nothing patched (the clean run) and every
unit patched. Deviation from the authors' script: it records the edit magnitude of the LAST
candidate tested at a threshold (accepted or not); here it is that of the accepted set P.

Cost: one partial forward per candidate test, batched. Units whose clean and counterfactual
coefficients are equal at every position (e.g. SAE features silent in both runs) change
nothing when un-patched (`D − D = 0 < t`), so they are removed without a forward — the same
decision the authors' code takes with one. A batch of candidates is evaluated against the
current P and consumed in visiting order up to the first acceptance (later results in the
batch were computed against a stale P and are re-evaluated), so the decisions are those of
the sequential algorithm. For a `resid.L` hook only the blocks after L run, and only on the
positions from the first one where any clean and patch prompt differ (the earlier positions'
keys and values are the clean run's, cached once); other hooks run the whole model.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import hooks
from .bases import (Basis, check_bases, color_of, kl_headline, kl_to, line_chart, logits_with,
                    patch_inputs, read_hook)
from .errors import ConfigError
from .tasks.base import Task
from .wrapping import model_name_of, unwrap

DEFAULT_THRESHOLDS = tuple(float(t) for t in np.logspace(-5, 0, 50))
KEEP_UNIT_LISTS = 512  # a point lists its patched units when there are at most this many


def check_thresholds(thresholds: Sequence[float]) -> list[float]:
    """A non-empty, strictly increasing schedule of finite positive thresholds."""
    try:
        ts = [float(t) for t in thresholds]
    except (TypeError, ValueError):
        raise ConfigError(f"thresholds must be numbers, got {thresholds!r}") from None
    if not ts:
        raise ConfigError("the threshold schedule is empty")
    for t in ts:
        if not math.isfinite(t) or t <= 0:
            raise ConfigError(f"thresholds must be finite and > 0, got {t!r}")
    for a, b in zip(ts, ts[1:]):
        if not b > a:
            raise ConfigError(f"the threshold schedule must be increasing: {b:g} follows {a:g}")
    return ts


def parse_thresholds(text: str) -> list[float]:
    """`log:MIN:MAX:N` (N log-spaced values, e.g. the default log:1e-5:1:50) or `a,b,c`."""
    text = text.strip()
    bad = ConfigError(f"--thresholds must be log:MIN:MAX:N (MIN, MAX > 0) or comma-separated "
                      f"numbers, got {text!r}")
    try:
        if text.startswith("log:"):
            lo, hi, n = (float(v) for v in text[4:].split(":"))
            if n < 1 or n != int(n) or lo <= 0 or hi <= 0:
                raise bad
            values = list(np.logspace(math.log10(lo), math.log10(hi), int(n)))
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise bad from None
    return check_thresholds(values)


# -- running the model from the hook on --------------------------------------------------------
class TraceRunner:
    """Last-position log-probs of the clean prompts with the hook value edited (any hook):
    a whole forward through nnsight per batch of edits."""

    def __init__(self, model, hp, clean: dict, start: int):
        self.model, self.hp, self.clean, self.start = model, hp, clean, start
        self.kind = "full forward"

    def logprobs(self, x_clean: torch.Tensor, x_suffix: torch.Tensor) -> torch.Tensor:
        """x_clean `[B, T, d]`; x_suffix `[n, B, S, d]` (positions start..T-1) -> `[n, B, V]`."""
        n, B = x_suffix.shape[:2]
        x = x_clean.unsqueeze(0).repeat(n, 1, 1, 1)
        x[:, :, self.start:] = x_suffix
        inputs = {k: v.repeat(n, 1) for k, v in self.clean.items()}
        logits = logits_with(self.model, self.hp, inputs, x.reshape(n * B, *x.shape[2:]))
        return F.log_softmax(logits[:, -1].float(), -1).reshape(n, B, -1).cpu()


class SuffixRunner:
    """The same for a block-output hook (`resid.L`): only blocks L+1.. run, only on positions
    start..T-1; the keys/values of positions < start are the clean run's (edits are zero there),
    computed once."""

    def __init__(self, model, hp, clean: dict, start: int):
        from trainers.suffix import block_output_is_tuple

        self.model, self.hp, self.start = model, hp, start
        self.hf = unwrap(model)
        self.ids, self.mask = clean["input_ids"], clean["attention_mask"]
        self.as_tuple = block_output_is_tuple(model)
        params = inspect.signature(self.hf.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.kind = "suffix forward"
        if start > 0:
            with torch.no_grad():
                out = self.hf(input_ids=self.ids[:, :start], attention_mask=self.mask[:, :start],
                              use_cache=True)
            cache = getattr(out, "cache", None) or out.past_key_values
            self.prefix = [(layer.keys, layer.values) for layer in cache.layers]

    def _cache(self, n: int):
        from transformers.cache_utils import DynamicCache

        rep = [(k.repeat_interleave(n, 0), v.repeat_interleave(n, 0)) for k, v in
               self.prefix[self.hp.layer + 1:]]
        first = rep[0]  # blocks 0..L never run: any tensors of the prefix length do
        return DynamicCache([first] * (self.hp.layer + 1) + rep, config=self.hf.config)

    def logprobs(self, x_clean: torch.Tensor, x_suffix: torch.Tensor) -> torch.Tensor:
        from trainers.suffix import block_output_replaced

        n, B, S, d = x_suffix.shape
        device = self.ids.device
        resid = x_suffix.transpose(0, 1).reshape(B * n, S, d).to(device)   # row b·n + j
        kwargs = {"input_ids": self.ids[:, self.start:].repeat_interleave(n, 0),
                  "attention_mask": self.mask.repeat_interleave(n, 0), "logits_to_keep": 1}
        if self.prefix is not None:
            kwargs[self.cache_arg] = self._cache(n)
            kwargs["use_cache"] = True
        else:
            kwargs["use_cache"] = False
        with torch.no_grad(), block_output_replaced(self.model, self.hp.layer, resid, self.as_tuple) as hf:
            logits = hf(**kwargs).logits[:, -1].float()
        return F.log_softmax(logits, -1).reshape(B, n, -1).transpose(0, 1).cpu()


def _is_block_output(model, hp) -> bool:
    from .hooks import _layout

    hf = unwrap(model)
    return (hp.layer is not None and hp.layer >= 0 and hp.side == "output"
            and hp.module_path == f"{_layout(hf).layers}.{hp.layer}")


# -- set-up shared by every basis --------------------------------------------------------------
@dataclass
class Setup:
    """Clean/patch hook values `[B, T, d]`, real positions `[B, T]`, the first position where
    any prompt's clean and patch values differ, the counterfactual's last-position log-probs
    `[B, V]`, and the runner."""

    task: Task
    hp: object
    x_clean: torch.Tensor
    x_patch: torch.Tensor
    real: torch.Tensor
    start: int
    logq: torch.Tensor
    runner: object
    runner_check: float

    def kl(self, x_suffix: torch.Tensor) -> torch.Tensor:
        """`[n]` D for edited suffixes `x_suffix [n, B, S, d]`."""
        logp = self.runner.logprobs(self.x_clean, x_suffix)
        return kl_to(logp, self.logq.unsqueeze(0)).mean(1).float()


def prepare(model, tok, task: Task, hook: str, full_forward: bool = False,
            tolerance: float = 1e-3) -> Setup:
    """Clean/patch runs and the runner; the runner's unedited output is checked against the
    clean run (suffix runner first, whole forward if it disagrees by more than `tolerance`)."""
    hp = hooks.resolve(model, hook)
    clean, patch = patch_inputs(model, tok, task)
    x_clean, x_patch = read_hook(model, hp, clean).cpu(), read_hook(model, hp, patch).cpu()
    real = clean["attention_mask"].cpu().bool()
    differs = ((x_clean - x_patch).abs().amax(-1) > 0) & real
    cols = differs.any(0).nonzero()
    start = int(cols[0]) if len(cols) else x_clean.shape[1] - 1
    logits_c = logits_with(model, hp, clean)[:, -1].float().cpu()
    logq = F.log_softmax(logits_with(model, hp, patch)[:, -1].float().cpu(), -1)
    want = F.log_softmax(logits_c, -1)
    runner, check = None, float("inf")
    if _is_block_output(model, hp) and not full_forward:
        try:
            runner = SuffixRunner(model, hp, clean, start)
            check = float((runner.logprobs(x_clean, x_clean[None, :, start:])[0] - want).abs().max())
        except Exception:  # noqa: BLE001 — an architecture the suffix run does not fit: fall back
            runner = None
        if runner is not None and not check <= tolerance:
            runner = None
    if runner is None:
        runner = TraceRunner(model, hp, clean, start)
        check = float((runner.logprobs(x_clean, x_clean[None, :, start:])[0] - want).abs().max())
    return Setup(task, hp, x_clean, x_patch, real, start, logq, runner, check)


# -- one basis ---------------------------------------------------------------------------------
@dataclass
class Step:
    """One candidate test: at threshold index `pass_`, un-patching `unit` gave KL `kl`
    (None: the unit's edit is zero, decided without a forward)."""

    pass_: int
    unit: int
    kl: float | None
    accepted: bool


@dataclass
class Point:
    """The state after a threshold (threshold None: a reference state)."""

    threshold: float | None
    units: int
    kl: float
    edit: float
    patched: list[int] | None = None


@dataclass
class EliminationCurve:
    """One basis: `none` (clean run), `all` (every unit patched), `points` (after each threshold)."""

    basis: str
    size: int
    active: int
    none: Point
    all: Point
    points: list[Point]
    tests: int = 0
    skipped: int = 0
    reused: int = 0
    seconds: float = 0.0
    info: dict = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)

    def curve(self) -> list[Point]:
        """All, then one point per threshold (units falling, KL rising)."""
        return [self.all, *self.points]

    def to_dict(self) -> dict:
        return {"basis": self.basis, "size": self.size, "active_units": self.active,
                "none": vars(self.none), "all": vars(self.all),
                "points": [vars(p) for p in self.points], "tests": self.tests,
                "skipped_zero_edit": self.skipped, "reused": self.reused,
                "seconds": round(self.seconds, 1), "info": self.info}

    @classmethod
    def from_dict(cls, d: dict) -> "EliminationCurve":
        return cls(d["basis"], d["size"], d["active_units"], Point(**d["none"]), Point(**d["all"]),
                   [Point(**p) for p in d["points"]], d["tests"], d["skipped_zero_edit"],
                   d.get("reused", 0), d["seconds"], d.get("info", {}))


def _fingerprint(setup: Setup, basis: Basis, thresholds: Sequence[float], seed: int, model) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"model": model_name_of(model), "hook": setup.hp.name, "basis": basis.name,
                         "size": basis.size, "thresholds": list(thresholds), "seed": seed,
                         "clean": setup.task.clean, "patch": setup.task.patch,
                         "answers": setup.task.clean_ids.tolist()}).encode())
    h.update(basis.dec.contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def _state_key(patched, active: list[bool]) -> str:
    """Identifies the patched units that change the edit (D depends on nothing else)."""
    units = np.asarray(sorted(u for u in patched if active[u]), dtype=np.int64)
    return hashlib.blake2b(units.tobytes(), digest_size=16).hexdigest()


class _Eliminator:
    """Greedy backward elimination of one basis; resumable through `state_path`."""

    def __init__(self, setup: Setup, basis: Basis, thresholds: list[float], seed: int, batch: int,
                 state_path: Path | None, fingerprint: str, keep_steps: bool):
        self.setup, self.basis, self.thresholds = setup, basis, thresholds
        self.seed, self.batch, self.state_path = seed, batch, state_path
        self.fingerprint, self.keep_steps = fingerprint, keep_steps
        s = setup.start
        real = setup.real[:, s:, None].float()
        with torch.no_grad():
            self.delta = ((basis.encode(setup.x_patch[:, s:]) - basis.encode(setup.x_clean[:, s:]))
                          * real)                                        # [B, S, m]
        self.dec = basis.dec.float().cpu()                               # [m, d]
        self.active = (self.delta != 0).flatten(0, 1).any(0)             # [m]
        self.xs = setup.x_clean[:, s:]                                   # [B, S, d]
        self.n_real = int(setup.real.sum())
        self.steps: list[Step] = []
        self.memo: dict[tuple[str, int], float] = {}  # (patched set, unit) -> D(P − {unit})

    def edit_of(self, units: Sequence[int]) -> torch.Tensor:
        """`[B, S, d]` edit with `units` patched."""
        idx = torch.as_tensor(sorted(units), dtype=torch.long)
        if idx.numel() == 0:
            return torch.zeros_like(self.xs)
        return self.delta[..., idx] @ self.dec[idx]

    def magnitude(self, edit: torch.Tensor) -> float:
        """Mean ‖edit‖ over all real positions of the prompts (zero before `start`)."""
        return float(edit.double().norm(dim=-1)[self.setup.real[:, self.setup.start:]].sum()) / self.n_real

    def kls(self, edits: list[torch.Tensor]) -> list[float]:
        return self.setup.kl(torch.stack([self.xs + e for e in edits])).tolist()

    def _order(self, pass_index: int, patched: list[int]) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + pass_index)
        ordered = sorted(patched)
        return [ordered[i] for i in torch.randperm(len(ordered), generator=g).tolist()]

    def _save(self, state: dict) -> None:
        if self.state_path is not None:
            from .fileio import write_json

            write_json(self.state_path, state, indent=None)

    def _load(self) -> dict | None:
        if self.state_path is None or not self.state_path.is_file():
            return None
        state = json.loads(self.state_path.read_text())
        if state.get("fingerprint") != self.fingerprint:
            raise ConfigError(f"{str(self.state_path)!r} holds a partial run with other settings "
                              "(task, hook, basis, thresholds or seed); pass --overwrite or use "
                              "another --out")
        return state

    def run(self, bar_passes=None, progress: bool = True) -> EliminationCurve:
        began = time.perf_counter()
        m = self.basis.size
        state = self._load()
        if state is None:
            all_units = list(range(m))
            edit_all = self.edit_of(all_units)
            kl_none, kl_all = self.kls([torch.zeros_like(self.xs), edit_all])
            state = {"fingerprint": self.fingerprint, "none": vars(Point(None, 0, kl_none, 0.0)),
                     "all": vars(Point(None, m, kl_all, self.magnitude(edit_all),
                                       all_units if m <= KEEP_UNIT_LISTS else None)),
                     "pass": 0, "pos": 0, "order": None, "patched": all_units, "prev": kl_all,
                     "points": [], "tests": 2, "skipped": 0, "reused": 0, "seconds": 0.0,
                     "rate": 0.1}
            self._save(state)
        patched = set(state["patched"])
        prev = state["prev"]
        active = self.active.tolist()
        edit = self.edit_of(patched)
        key = _state_key(patched, active)
        if bar_passes is not None:
            bar_passes.update(state["pass"])
        last_save = time.perf_counter()
        for k in range(state["pass"], len(self.thresholds)):
            t = self.thresholds[k]
            if not patched:
                if bar_passes is not None:
                    bar_passes.update(len(self.thresholds) - k)
                break
            if state["order"] is None:
                state.update(order=self._order(k, list(patched)), pos=0)
            order, pos = state["order"], state["pos"]
            tested = accepted = 0
            inner = tqdm(total=len(order), initial=pos, desc=f"{self.basis.name} t={t:.2g}",
                         unit="unit", leave=False, disable=not progress, position=1)
            while pos < len(order):
                if not active[order[pos]]:  # zero edit: D(P − {i}) = D(P), accepted (0 < t)
                    patched.discard(order[pos])
                    state["skipped"] += 1
                    if self.keep_steps:
                        self.steps.append(Step(k, order[pos], None, True))
                    pos += 1
                    inner.update(1)
                    continue
                rate = (accepted + 4 * state["rate"]) / (tested + 4)
                want = max(1, min(self.batch, round(1.0 / max(rate, 1e-9))))
                kls, cands, j = {}, [], pos
                while j < len(order) and len(cands) < want:
                    u = order[j]
                    if active[u] and (key, u) in self.memo:  # same P as an earlier test: same D
                        kls[u] = self.memo[key, u]
                    elif active[u]:
                        cands.append(u)
                    j += 1
                if cands:
                    new_edits = [edit - self.delta[..., u:u + 1] @ self.dec[u:u + 1] for u in cands]
                    kls.update(zip(cands, self.kls(new_edits)))
                    self.memo.update({(key, u): kls[u] for u in cands})
                    state["tests"] += len(cands)
                while pos < len(order):
                    u = order[pos]
                    if not active[u]:
                        patched.discard(u)
                        state["skipped"] += 1
                        if self.keep_steps:
                            self.steps.append(Step(k, u, None, True))
                        pos += 1
                        inner.update(1)
                        continue
                    if u not in kls:
                        break
                    tested += 1
                    state["reused"] += u not in cands
                    ok = kls[u] - prev < t
                    if self.keep_steps:
                        self.steps.append(Step(k, u, kls[u], ok))
                    pos += 1
                    inner.update(1)
                    if ok:
                        accepted += 1
                        patched.discard(u)
                        prev = kls[u]
                        edit = self.edit_of(patched)
                        key = _state_key(patched, active)
                        break
                state.update(pos=pos, patched=sorted(patched), prev=prev)
                if time.perf_counter() - last_save > 20:
                    state["seconds"] += time.perf_counter() - last_save
                    last_save = time.perf_counter()
                    self._save(state)
                inner.set_postfix_str(f"patched {len(patched):,} KL {prev:.3f}")
            inner.close()
            state["rate"] = (accepted + 1) / (tested + 2) if tested else state["rate"]
            state["points"].append(vars(Point(t, len(patched), prev, self.magnitude(edit),
                                              sorted(patched) if len(patched) <= KEEP_UNIT_LISTS else None)))
            state.update(order=None, pos=0, patched=sorted(patched), prev=prev)
            state["pass"] = k + 1
            state["seconds"] += time.perf_counter() - last_save
            last_save = time.perf_counter()
            self._save(state)
            if bar_passes is not None:
                bar_passes.update(1)
                bar_passes.set_postfix_str(f"{self.basis.name}: {len(patched):,} units, KL {prev:.3f}")
        state["seconds"] += time.perf_counter() - last_save
        return EliminationCurve(self.basis.name, m, int(self.active.sum()), Point(**state["none"]),
                                Point(**state["all"]), [Point(**p) for p in state["points"]],
                                state["tests"], state["skipped"], state["reused"], state["seconds"],
                                {**self.basis.info, "runner": self.setup.runner.kind,
                                 "wall_seconds_this_call": round(time.perf_counter() - began, 1)},
                                self.steps)


# -- the comparison ----------------------------------------------------------------------------
@dataclass
class CunninghamComparison:
    """Greedy-elimination curves per basis at one hook."""

    task: str
    hook: str
    n_prompts: int
    thresholds: list[float]
    seed: int
    curves: dict[str, EliminationCurve]
    info: dict = field(default_factory=dict)

    @property
    def kl_clean(self) -> float:
        return next(iter(self.curves.values())).none.kl

    def kl_points(self) -> dict[str, list[tuple[int, float, float]]]:
        return {b: [(p.units, p.kl, p.edit) for p in c.curve()] for b, c in self.curves.items()}

    def to_dict(self) -> dict:
        return {"protocol": "cunningham", "task": self.task, "hook": self.hook,
                "n_prompts": self.n_prompts, "thresholds": self.thresholds, "seed": self.seed,
                "kl_clean": self.kl_clean, "bases": {b: c.to_dict() for b, c in self.curves.items()},
                "info": self.info}

    def table(self, kls: Sequence[float] = (2.0, 1.0, 0.5)) -> str:
        """Markdown: per basis, units and edit magnitude needed to reach each KL, plus the
        reference states."""
        from .bases import units_to_reach

        head = ["basis", "units", "KL none / all", "edit all"] + [f"KL ≤ {k:g}: units / edit" for k in kls]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for b, c in self.curves.items():
            cells = [b, f"{c.size:,} ({c.active:,} active)", f"{c.none.kl:.3f} / {c.all.kl:.3f}",
                     f"{c.all.edit:.2f}"]
            for k in kls:
                n, e = units_to_reach([(p.units, p.kl, p.edit) for p in c.curve()], k)
                cells.append("not reached" if n is None else f"{n:,} / {e:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot_units(self) -> str:
        series = {b: [(max(p.units, 1), p.kl) for p in c.curve() if p.units > 0]
                  for b, c in self.curves.items()}
        return line_chart(series, f"{self.task} @ {self.hook}: greedy elimination (Cunningham et al. Fig. 3)",
                          "units patched (log scale)", "KL(edited ‖ counterfactual) at the answer",
                          logx=True, colors={b: color_of(b, i) for i, b in enumerate(self.curves)})

    def plot_edit(self) -> str:
        series = {b: [(p.edit, p.kl) for p in c.curve()] for b, c in self.curves.items()}
        return line_chart(series, f"{self.task} @ {self.hook}: KL vs edit magnitude",
                          "edit magnitude (mean ‖x_edited − x_clean‖₂)",
                          "KL(edited ‖ counterfactual) at the answer",
                          colors={b: color_of(b, i) for i, b in enumerate(self.curves)})

    def markdown(self) -> str:
        return (f"# Basis comparison (greedy elimination): {self.task} at {self.hook}\n\n"
                f"{self.n_prompts} prompts; KL(clean ‖ counterfactual) at the answer "
                f"{self.kl_clean:.3f}; {len(self.thresholds)} thresholds "
                f"{self.thresholds[0]:g}..{self.thresholds[-1]:g}, seed {self.seed}. Every unit starts "
                "patched from the counterfactual at every position (an SAE keeps its clean error "
                "term); units are un-patched greedily while KL rises by less than the threshold.\n\n"
                f"{self.table()}\n\n{kl_headline(self.kl_points(), self.kl_clean)}\n")


def compare_bases_cunningham(model, tok, task: Task, hook: str, bases: Sequence[Basis],
                             thresholds: Sequence[float] = DEFAULT_THRESHOLDS, seed: int = 0,
                             batch: int = 16, state_dir=None, progress: bool = True,
                             keep_steps: bool = False, setup: Setup | None = None,
                             full_forward: bool = False) -> CunninghamComparison:
    """Greedy backward elimination for every basis (module docstring). `state_dir`: partial
    results per basis (`<name>.json`), resumed when present (same settings only)."""
    thresholds = check_thresholds(thresholds)
    if not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch must be a positive integer, got {batch!r}")
    hp = check_bases(model, hook, bases)
    setup = setup or prepare(model, tok, task, hook, full_forward=full_forward)
    folder = None if state_dir is None else Path(state_dir)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    curves = {}
    bar = tqdm(total=len(bases) * len(thresholds), desc="greedy elimination", unit="threshold",
               disable=not progress, position=0)
    try:
        for b in bases:
            fp = _fingerprint(setup, b, thresholds, seed, model)
            el = _Eliminator(setup, b, thresholds, seed, batch,
                             None if folder is None else folder / f"{b.name}.json", fp, keep_steps)
            curves[b.name] = el.run(bar, progress)
    finally:
        bar.close()
    info = {"runner": setup.runner.kind, "runner_check_max_abs_logprob": setup.runner_check,
            "first_patched_position": setup.start, "positions": int(setup.x_clean.shape[1]),
            "batch": batch}
    return CunninghamComparison(task.name, hp.name, len(task), thresholds, seed, curves, info)


def write_outputs(result: CunninghamComparison, folder) -> dict[str, str]:
    """bases.json, bases.md, bases-units.svg (KL vs units) and bases-edit.svg (KL vs edit)."""
    from .fileio import write_json, write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"json": folder / "bases.json", "table": folder / "bases.md",
             "plot_units": folder / "bases-units.svg", "plot_edit": folder / "bases-edit.svg"}
    write_json(files["json"], result.to_dict())
    write_text(files["table"], result.markdown())
    write_text(files["plot_units"], result.plot_units())
    write_text(files["plot_edit"], result.plot_edit())
    return {k: str(v) for k, v in files.items()}
