"""Generation with steering interventions applied at every step (KV cache included).

Generation runs through nnsight: `model.generate(...)` with a `for step in tracer.iter[:]`
loop, so the edit code runs on every forward of HF's decode loop — the prompt forward
(step 0, all prompt columns) and each cached step (one new column). Each step knows its
absolute columns (`offset = prompt_len + step − seq_len`, which also holds without a KV
cache), so position masks are exact per row under left padding.

At each edited hook point: x `[batch, seq, d_in]` is read, the SAE encodes it, and
Σ (new − current) × W_dec rows is added (x + Δ); untouched features and the error term are
therefore exactly as in the unsteered forward, and Δ = 0 leaves x bit-for-bit unchanged.

Sampling uses a local `torch.Generator` (a logits processor draws the token; HF's greedy
step then picks it), so the global RNG is untouched and baseline and steered runs see the
same random stream.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .. import hooks
from ..errors import ConfigError
from ..replacement import ReplacementModel
from ..sae import SAE
from ..splice import encode_inputs
from .spec import Intervention, Resolved, check_generation_args, resolve_all

_DANGLING = r".*was never reached: the loop asked for a step the run did not make.*"


@dataclass
class SteerResult:
    """Baseline and steered generations side by side.

    baseline / steered: generated continuations (text, special tokens removed), one per prompt.
    baseline_ids / steered_ids: `[batch, steps]` generated token ids.
    tracked: token ids whose logits/probabilities were recorded at every step.
    *_logits / *_probs: `[batch, steps, n_tracked]` at each step's next-token distribution,
        each run on its own trajectory (identical contexts until the texts first differ;
        step 0 is always the same context: the prompt).
    """

    prompts: list[str]
    interventions: list[str]
    baseline: list[str] | None
    steered: list[str]
    baseline_ids: torch.Tensor | None
    steered_ids: torch.Tensor
    tracked: list[int] = field(default_factory=list)
    baseline_logits: torch.Tensor | None = None
    steered_logits: torch.Tensor | None = None
    baseline_probs: torch.Tensor | None = None
    steered_probs: torch.Tensor | None = None

    @property
    def logit_shift(self) -> torch.Tensor | None:
        """`[batch, steps, n_tracked]` steered − baseline logits (steps both runs made)."""
        return _shift(self.steered_logits, self.baseline_logits)

    @property
    def prob_shift(self) -> torch.Tensor | None:
        """`[batch, steps, n_tracked]` steered − baseline probabilities."""
        return _shift(self.steered_probs, self.baseline_probs)

    def first_divergence(self) -> list[int | None]:
        """Per prompt: first step whose token differs (None if identical or no baseline was run)."""
        if self.baseline_ids is None:
            return [None] * len(self.prompts)
        steps = min(self.baseline_ids.shape[1], self.steered_ids.shape[1])
        out: list[int | None] = []
        for base, steer in zip(self.baseline_ids, self.steered_ids):
            diff = (base[:steps] != steer[:steps]).nonzero()
            if len(diff):
                out.append(int(diff[0]))
            elif self.baseline_ids.shape[1] != self.steered_ids.shape[1]:
                out.append(steps)
            else:
                out.append(None)
        return out

    def to_dict(self) -> dict:
        rows = []
        divergence = self.first_divergence()
        for i, prompt in enumerate(self.prompts):
            row = {"prompt": prompt, "baseline": self.baseline[i] if self.baseline else None,
                   "steered": self.steered[i],
                   "first_divergence": divergence[i]}
            if self.tracked and self.prob_shift is not None:
                row["step0_prob_shift"] = {str(t): float(s) for t, s in
                                           zip(self.tracked, self.prob_shift[i, 0])}
            rows.append(row)
        return {"interventions": self.interventions, "tracked": self.tracked, "results": rows}

    def format(self) -> str:
        """Human-readable side-by-side text."""
        lines = ["interventions: " + "; ".join(self.interventions)]
        for i, (prompt, steer) in enumerate(zip(self.prompts, self.steered)):
            lines.append(f"prompt:   {prompt!r}")
            if self.baseline is not None:
                lines.append(f"baseline: {self.baseline[i]!r}")
            lines += [f"steered:  {steer!r}", ""]
        return "\n".join(lines).rstrip()


def _shift(a, b):
    if a is None or b is None:
        return None
    steps = min(a.shape[1], b.shape[1])
    return a[:, :steps] - b[:, :steps]


class _SeededSampler:
    """Logits processor: temperature + top-p sampling with a local generator.

    Returns scores that are 0 at the drawn token and −inf elsewhere, so HF's greedy
    selection takes the drawn token.
    """

    def __init__(self, seed: int, temperature: float, top_p: float, device: torch.device):
        self.generator = torch.Generator(device=device).manual_seed(int(seed))
        self.temperature, self.top_p = float(temperature), float(top_p)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logits = scores.float() / self.temperature
        if self.top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            drop = cum - sorted_logits.softmax(-1) > self.top_p  # keep the first token always
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
        choice = torch.multinomial(logits.softmax(-1), 1, generator=self.generator)
        return torch.full_like(scores, float("-inf")).scatter(-1, choice, 0.0)


class _Collect:
    """Streamer that keeps the generated token ids (HF calls put(prompt), put(step)…, end())."""

    def __init__(self):
        self.calls: list[torch.Tensor] = []

    def put(self, value: torch.Tensor) -> None:
        self.calls.append(value.detach().cpu())

    def end(self) -> None:
        pass

    def generated(self, batch: int) -> torch.Tensor:
        steps = [c.reshape(batch, -1) for c in self.calls[1:]]
        return torch.cat(steps, dim=1) if steps else torch.zeros(batch, 0, dtype=torch.long)


@dataclass
class _Group:
    hook: hooks.HookPoint
    sae: SAE | None
    items: list[Resolved]


def _groups(saes, resolved: list[Resolved]) -> list[_Group]:
    """Interventions grouped by site, in forward order (widths were checked by `resolve_all`)."""
    by_hook: dict[str, _Group] = {}
    for r in resolved:
        group = by_hook.setdefault(r.hook.name, _Group(r.hook, None, []))
        group.items.append(r)
        if r.index is not None:
            group.sae = saes[r.hook.name]
    return sorted(by_hook.values(), key=lambda g: g.hook.order)


def _current(r: Resolved, x: torch.Tensor, f: torch.Tensor | None) -> torch.Tensor:
    """`[batch, seq, n]` current feature activations (or projection on the direction)."""
    if r.index is None:
        return (x.to(r.rows.dtype) @ r.rows[0])[..., None]
    return f[..., r.index]


def _target(r: Resolved, cur: torch.Tensor) -> torch.Tensor:
    mode = r.spec.mode
    if mode == "set":
        return r.value.expand_as(cur)
    if mode == "scale":
        return cur * r.value
    if mode == "add":
        return cur + r.value
    if r.spec.ablation == "mean":
        return r.mean.expand_as(cur)
    return torch.zeros_like(cur)


def _step(model, groups: list[_Group], step: int, plen: int, prompt_mask: torch.Tensor,
          edit: bool, record_means: bool) -> None:
    """Inside the generate loop: edit (or, for the baseline, observe) every hook point."""
    for group in groups:
        x = hooks.read(model, group.hook)
        seq = x.shape[1]
        offset = plen + step - seq
        f = group.sae.encode(x) if group.sae is not None else None
        delta = None
        for r in group.items:
            needs_mean = r.spec.mode == "ablate" and r.spec.ablation == "mean"
            if record_means and needs_mean and step == 0:
                cur = _current(r, x, f)
                r.mean = cur[prompt_mask.to(cur.device)].mean(dim=0)
            if not edit:
                continue
            cols = r.columns[:, offset:offset + seq]
            if not bool(cols.any()):
                continue
            cur = _current(r, x, f)
            keep = cols[..., None]
            if r.spec.only_if_active:
                keep = keep & (cur > 0)
            diff = torch.where(keep, _target(r, cur) - cur, torch.zeros_like(cur))
            part = diff @ r.rows
            delta = part if delta is None else delta + part
        if delta is not None:
            hooks.write(model, group.hook, x + delta.to(x.dtype))


def _run(rm: ReplacementModel, tok, inputs, groups, *, edit, record_means, max_new_tokens,
         use_cache, do_sample, temperature, top_p, seed, tracked):
    """One generation -> (ids `[batch, steps]`, tracked logits and probs `[batch, steps, T]` or None)."""
    batch, plen = inputs["input_ids"].shape
    prompt_mask = inputs["attention_mask"].bool()
    model = rm.model
    head = rm.logits if tracked else None
    track = torch.tensor(tracked, dtype=torch.long)
    logged: list[torch.Tensor] = []
    collect = _Collect()
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, use_cache=use_cache,
                  streamer=collect, pad_token_id=tok.pad_token_id)
    if do_sample:
        from transformers import LogitsProcessorList

        kwargs["logits_processor"] = LogitsProcessorList(
            [_SeededSampler(seed, temperature, top_p, inputs["input_ids"].device)])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DANGLING)
        with model.generate(dict(inputs), **kwargs) as tracer:
            # a loop body that requests nothing from the model would never yield: skip it
            steps = tracer.iter[:] if (groups or head is not None) else ()
            for step in steps:
                _step(model, groups, step, plen, prompt_mask, edit, record_means)
                if head is not None:
                    last = hooks.read(model, head)[:, -1].float()
                    idx = track.to(last.device)
                    logged.append(torch.stack([last[:, idx], last.softmax(-1)[:, idx]]).cpu())
    ids = collect.generated(batch)
    if not logged:
        return ids, None, None
    both = torch.stack(logged[:ids.shape[1]], dim=2)  # [2, batch, steps, T]
    return ids, both[0], both[1]


def track_ids(tok, tokens: Sequence[int | str]) -> list[int]:
    """Token ids from ints or single-token strings (error naming a multi-token string)."""
    out = []
    vocab = len(tok)
    for t in tokens:
        if isinstance(t, int) and not isinstance(t, bool):
            if not 0 <= t < vocab:
                raise ConfigError(f"tracked token id {t} is outside the vocabulary (0..{vocab - 1})")
            out.append(t)
        elif isinstance(t, str):
            ids = tok.encode(t, add_special_tokens=False)
            if len(ids) != 1:
                raise ConfigError(f"tracked token {t!r} is {len(ids)} tokens; give a single token or its id")
            out.append(ids[0])
        else:
            raise ConfigError(f"tracked token must be an id or a string, got {t!r}")
    return out


def steer(model, saes: Mapping[str, SAE] | None, prompts: Sequence[str] | str,
          interventions: Sequence[Intervention] | Intervention, max_new_tokens: int = 20, *,
          do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
          track: Sequence[int | str] = (), use_cache: bool = True, baseline: bool = True,
          tokenizer=None) -> SteerResult:
    """Generate from `prompts` without and with `interventions`; compare.

    Args:
        saes: hook name -> SAE for every hook with feature interventions.
        prompts: one prompt or a list (batched with left padding).
        interventions: `Intervention`s, applied together at every generation step.
        max_new_tokens: tokens to generate (> 0).
        do_sample / temperature / top_p / seed: sampling with a local generator (greedy by default).
        track: tokens (ids or single-token strings) whose per-step logits and probabilities are kept.
        use_cache: HF KV cache on (one new column per step) or off (full recompute per step).
        baseline: also generate without interventions (False: steered run only; mean
            ablations then take their means from a one-step unsteered pass).
    Returns:
        SteerResult with both generations and per-step tracked logits/probabilities.
    """
    if isinstance(model, ReplacementModel):
        saes = model.saes if saes is None else saes
        tok = tokenizer if tokenizer is not None else model.tokenizer
        rm = model
    else:
        tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        rm = ReplacementModel(model, None, tok)  # the sites used are resolved once, on demand
    if tok is None:
        raise ConfigError("steer needs the model's tokenizer (pass tokenizer=...)")
    check_generation_args(max_new_tokens, temperature, top_p)
    prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
    from ..limits import check_text_length, check_tokens

    for i, text in enumerate(prompt_list):
        if isinstance(text, str):
            check_text_length(text, f"prompt {i}")
    inputs = encode_inputs(tok, prompt_list)
    check_tokens(rm.model, inputs["input_ids"].shape[1], "the longest prompt", extra=max_new_tokens)
    inputs = rm.inputs(inputs)
    resolved = resolve_all(rm, saes, interventions, inputs["attention_mask"], max_new_tokens)
    groups = _groups(saes or {}, resolved)
    tracked = track_ids(tok, track)
    opts = dict(max_new_tokens=max_new_tokens, use_cache=use_cache, do_sample=do_sample,
                temperature=temperature, top_p=top_p, seed=seed, tracked=tracked)
    needs_means = any(r.spec.mode == "ablate" and r.spec.ablation == "mean" for r in resolved)
    base_ids = base_logits = base_probs = None
    if baseline:
        base_ids, base_logits, base_probs = _run(rm, tok, inputs, groups if needs_means else [],
                                                 edit=False, record_means=needs_means, **opts)
    elif needs_means:
        _run(rm, tok, inputs, groups, edit=False, record_means=True, **{**opts, "max_new_tokens": 1})
    steer_ids, steer_logits, steer_probs = _run(rm, tok, inputs, groups, edit=True, record_means=False, **opts)
    result = SteerResult(
        prompts=prompt_list, interventions=[r.spec.describe() for r in resolved],
        baseline=None if base_ids is None else tok.batch_decode(base_ids, skip_special_tokens=True),
        steered=tok.batch_decode(steer_ids, skip_special_tokens=True),
        baseline_ids=base_ids, steered_ids=steer_ids, tracked=tracked,
        baseline_logits=base_logits, steered_logits=steer_logits,
        baseline_probs=base_probs, steered_probs=steer_probs)
    return result
