"""Generation with steering interventions applied at every step (KV cache included).

Generation runs through nnsight: `model.generate(...)` with a `for step in tracer.iter[:]`
loop, so the edit code runs on every forward of HF's decode loop — the prompt forward
(step 0, all prompt columns) and each cached step (one new column). Each step knows its
absolute columns (`offset = prompt_len + step − seq_len`, which also holds without a KV
cache), so position masks are exact per row under left padding.

At each edited hook point: x `[batch, seq, d_in]` is read, the SAE encodes it, and
Σ (new − current) × W_dec rows is added (x + Δ); untouched features and the error term are
therefore exactly as in the unsteered forward, and Δ = 0 leaves x bit-for-bit unchanged.

Sampling uses local `torch.Generator`s, one per prompt, seeded from (seed, prompt index) (a
logits processor draws the token; HF's greedy step then picks it): the global RNG is untouched,
baseline and steered runs see the same random stream, and a prompt's sample does not depend on
which chunk (or batch) it runs in.

Memory is bounded by `chunk_tokens`: prompts run in chunks of at most that many padded
prompt + new tokens (rows × (longest prompt + max_new_tokens), at least one prompt), sorted by
length when they need several chunks; the results are put back in prompt order. Chunked and
one-batch runs give the same ids and tracked values (up to float rounding of the padded shapes).
"""
from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .. import hooks
from ..errors import ConfigError
from ..replacement import ReplacementModel
from ..dictionaries import Dictionary as SAE
from ..splice import encode_inputs
from .spec import Intervention, Resolved, check_generation_args, resolve_all

_DANGLING = r".*was never reached: the loop asked for a step the run did not make.*"


@dataclass
class SteerResult:
    """Baseline and steered generations side by side.

    baseline / steered: generated continuations (text, special tokens removed), one per prompt.
    baseline_ids / steered_ids: `[batch, steps]` generated token ids; `steps` is the most any
        prompt made; a row that stopped at EOS is filled with the pad id after it.
    tracked: token ids whose logits/probabilities were recorded at every step.
    *_logits / *_probs: `[batch, steps, n_tracked]` at each step's next-token distribution,
        each run on its own trajectory (identical contexts until the texts first differ;
        step 0 is always the same context: the prompt). NaN at the steps after a row's EOS
        (the row had finished: no next-token distribution of its own).
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


def prompt_seed(seed: int, index: int) -> int:
    """Seed of prompt `index`'s sampling generator (prompt 0 uses `seed` itself)."""
    return (int(seed) + int(index) * 0x9E3779B97F4A7C15) % 2**64


class _SeededSampler:
    """Logits processor: temperature + top-p sampling, one local generator per row.

    Returns scores that are 0 at the drawn token and −inf elsewhere, so HF's greedy
    selection takes the drawn token. Row i draws from `torch.Generator().manual_seed(seeds[i])`
    once per step, so its tokens depend on its seed, not on the other rows.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float, device: torch.device):
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.temperature, self.top_p = float(temperature), float(top_p)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logits = scores.float() / self.temperature
        if self.top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            drop = cum - sorted_logits.softmax(-1) > self.top_p  # keep the first token always
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
        probs = logits.softmax(-1)
        choice = torch.cat([torch.multinomial(probs[i:i + 1], 1, generator=g)
                            for i, g in enumerate(self.generators)])
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
    read: hooks.HookPoint | None = None     # a transcoder's read site (encoded before `hook`)


def _groups(saes, resolved: list[Resolved]) -> list[_Group]:
    """Interventions grouped by site, in forward order (widths were checked by `resolve_all`)."""
    by_hook: dict[str, _Group] = {}
    for r in resolved:
        group = by_hook.setdefault(r.hook.name, _Group(r.hook, None, []))
        group.items.append(r)
        if r.index is not None:
            group.sae = saes[r.hook.name]
            group.read = r.read
    return sorted(by_hook.values(), key=lambda g: (g.read or g.hook).order)


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
          edit: bool, sums: dict | None) -> None:
    """Inside the generate loop: edit (or, for the baseline, observe) every hook point.

    sums: when given, mean-ablated activations over the prompt tokens are summed into it at
    step 0 (`id(spec)` -> [float64 sum `[n]`, token count, dtype]) across chunks."""
    for group in groups:
        x_in = hooks.read(model, group.read) if group.read is not None else None
        x = hooks.read(model, group.hook)
        seq = x.shape[1]
        offset = plen + step - seq
        f = group.sae.encode(x if x_in is None else x_in) if group.sae is not None else None
        delta = None
        for r in group.items:
            needs_mean = r.spec.mode == "ablate" and r.spec.ablation == "mean"
            if sums is not None and needs_mean and step == 0:
                cur = _current(r, x, f)
                rows = cur[prompt_mask.to(cur.device)]
                acc = sums.setdefault(id(r.spec), [0.0, 0, cur.dtype])
                acc[0] = acc[0] + rows.double().sum(dim=0)
                acc[1] += rows.shape[0]
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


def _run(rm: ReplacementModel, tok, inputs, groups, *, edit, sums, max_new_tokens,
         use_cache, do_sample, temperature, top_p, seeds, tracked):
    """One generation -> (ids `[batch, steps]`, tracked logits and probs `[batch, steps, T]` or None).

    seeds: one sampling seed per row (used with do_sample)."""
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
            [_SeededSampler(seeds, temperature, top_p, inputs["input_ids"].device)])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DANGLING)
        with model.generate(dict(inputs), **kwargs) as tracer:
            # a loop body that requests nothing from the model would never yield: skip it
            steps = tracer.iter[:] if (groups or head is not None) else ()
            for step in steps:
                _step(model, groups, step, plen, prompt_mask, edit, sums)
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


CHUNK_TOKENS = 2048  # default padded prompt + new tokens per generate batch (memory bound)


def chunk_plan(lengths: Sequence[int], max_new_tokens: int, chunk_tokens: int) -> list[list[int]]:
    """Prompt indices per generate batch.

    A chunk holds at most `chunk_tokens` padded tokens, rows × (its longest prompt +
    max_new_tokens), and at least one prompt. Prompts that fit in one chunk keep their order;
    otherwise they are grouped by length (shortest first, stable) to waste little padding.
    """
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ConfigError(f"chunk_tokens must be a positive integer, got {chunk_tokens!r}")
    lengths = [int(n) for n in lengths]
    if len(lengths) * (max(lengths, default=0) + max_new_tokens) <= chunk_tokens:
        return [list(range(len(lengths)))] if lengths else []
    chunks: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda j: lengths[j]):
        if chunks and (len(chunks[-1]) + 1) * (lengths[i] + max_new_tokens) <= chunk_tokens:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return chunks


def _take(inputs: dict, rows: list[int]) -> dict:
    """The left-padded `inputs` of `rows` with the all-pad leading columns dropped."""
    index = torch.tensor(rows, dtype=torch.long)
    mask = inputs["attention_mask"][index]
    width = int(mask.sum(dim=1).max())
    return {k: v[index][:, v.shape[1] - width:] for k, v in inputs.items()}


def _for_chunk(resolved: list[Resolved], rows: list[int], shift: int) -> list[Resolved]:
    """Interventions with their `[batch, total]` columns cut to `rows` and the chunk's padding
    (left padding: a chunk `shift` columns narrower sees the same token at column c − shift)."""
    index = torch.tensor(rows, dtype=torch.long, device=resolved[0].columns.device) if resolved else None
    return [dataclasses.replace(r, columns=r.columns[index][:, shift:]) for r in resolved]


def _eos_ids(rm: ReplacementModel, tok) -> set[int]:
    config = getattr(rm.model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = tok.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def _merge(parts: list[tuple], rows: list[list[int]], n: int, pad_id: int, eos: set[int]):
    """Per-chunk (ids, logits, probs) -> prompt-ordered `[n, steps(, T)]` tensors; ids padded
    with `pad_id`, tracked values NaN at every step after a row's EOS (or past its chunk's end)."""
    steps = max(p[0].shape[1] for p in parts)
    ids = torch.full((n, steps), pad_id, dtype=torch.long)
    tracked = parts[0][1] is not None
    if tracked:
        t = parts[0][1].shape[-1]
        logits = torch.full((n, steps, t), float("nan"))
        probs = torch.full((n, steps, t), float("nan"))
    for (c_ids, c_logits, c_probs), idx in zip(parts, rows):
        index = torch.tensor(idx, dtype=torch.long)
        ids[index, :c_ids.shape[1]] = c_ids
        if tracked:
            logits[index, :c_ids.shape[1]] = c_logits.float()
            probs[index, :c_ids.shape[1]] = c_probs.float()
    if not tracked:
        return ids, None, None
    if eos and steps > 1:
        hit = torch.isin(ids, torch.tensor(sorted(eos), dtype=torch.long))
        after = (hit.long().cumsum(dim=1) - hit.long()) > 0   # strictly after the first EOS
        logits[after] = float("nan")
        probs[after] = float("nan")
    return ids, logits, probs


def steer(model, saes: Mapping[str, SAE] | None, prompts: Sequence[str] | str,
          interventions: Sequence[Intervention] | Intervention, max_new_tokens: int = 20, *,
          do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
          track: Sequence[int | str] = (), use_cache: bool = True, baseline: bool = True,
          tokenizer=None, chunk_tokens: int = CHUNK_TOKENS, precision: str = "fp32") -> SteerResult:
    """Generate from `prompts` without and with `interventions`; compare.

    Args:
        saes: hook name -> SAE for every hook with feature interventions.
        prompts: one prompt or a list (batched with left padding).
        interventions: `Intervention`s, applied together at every generation step.
        max_new_tokens: tokens to generate (> 0).
        do_sample / temperature / top_p / seed: sampling with local generators (greedy by
            default); prompt i draws from its own generator seeded `prompt_seed(seed, i)`.
        track: tokens (ids or single-token strings) whose per-step logits and probabilities are kept.
        use_cache: HF KV cache on (one new column per step) or off (full recompute per step).
        baseline: also generate without interventions (False: steered run only; mean
            ablations then take their means from a one-step unsteered pass).
        chunk_tokens: at most this many padded prompt + new tokens per generate batch (at
            least one prompt); memory is bounded by one chunk, not by the number of prompts.
            Mean ablations still average over every prompt (all baseline chunks run first).
        precision: matmuls of the generation forwards (`saecircuits.precision`: fp32 default,
            exact; auto = bf16 where measured faster, which can change greedy tokens).
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
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
    from ..limits import check_text_length, check_tokens

    for i, text in enumerate(prompt_list):
        if isinstance(text, str):
            check_text_length(text, f"prompt {i}")
    inputs = encode_inputs(tok, prompt_list)
    width = inputs["input_ids"].shape[1]
    check_tokens(rm.model, width, "the longest prompt", extra=max_new_tokens)
    resolved = resolve_all(rm, saes, interventions, inputs["attention_mask"], max_new_tokens)
    plan = chunk_plan(inputs["attention_mask"].sum(dim=1).tolist(), max_new_tokens, chunk_tokens)
    tracked = track_ids(tok, track)
    opts = dict(max_new_tokens=max_new_tokens, use_cache=use_cache, do_sample=do_sample,
                temperature=temperature, top_p=top_p, tracked=tracked)
    from ..precision import resolve as resolve_precision

    with resolve_precision(precision, rm.device).autocast():
        return _steer_chunks(rm, tok, saes, prompt_list, inputs, width, resolved, plan, seed,
                             baseline, opts)


def _steer_chunks(rm, tok, saes, prompt_list, inputs, width, resolved, plan, seed, baseline,
                  opts) -> SteerResult:
    """The baseline and steered generations of `steer`, chunk by chunk."""

    def chunks():
        """(rows, device inputs, chunk-cut interventions, sampling seeds) per chunk."""
        for rows in plan:
            part = _take(inputs, rows)
            cut = _for_chunk(resolved, rows, width - part["input_ids"].shape[1])
            yield rows, rm.inputs(part), cut, [prompt_seed(seed, i) for i in rows]

    needs_means = any(r.spec.mode == "ablate" and r.spec.ablation == "mean" for r in resolved)
    sums: dict | None = {} if needs_means else None
    base_parts = []
    if baseline or needs_means:
        for rows, part, cut, seeds in chunks():
            groups = _groups(saes or {}, cut) if needs_means else []
            if baseline:
                base_parts.append(_run(rm, tok, part, groups, edit=False, sums=sums, seeds=seeds, **opts))
            else:
                _run(rm, tok, part, groups, edit=False, sums=sums, seeds=seeds,
                     **{**opts, "max_new_tokens": 1})
    if needs_means:
        for r in resolved:
            if r.spec.mode == "ablate" and r.spec.ablation == "mean":
                total, count, dtype = sums[id(r.spec)]
                r.mean = (total / count).to(dtype)
    steer_parts = []
    for rows, part, cut, seeds in chunks():
        steer_parts.append(_run(rm, tok, part, _groups(saes or {}, cut), edit=True, sums=None,
                                seeds=seeds, **opts))
    eos, n = _eos_ids(rm, tok), len(prompt_list)
    pad_id = tok.pad_token_id
    steer_ids, steer_logits, steer_probs = _merge(steer_parts, plan, n, pad_id, eos)
    base_ids = base_logits = base_probs = None
    if baseline:
        base_ids, base_logits, base_probs = _merge(base_parts, plan, n, pad_id, eos)
    return SteerResult(
        prompts=prompt_list, interventions=[r.spec.describe() for r in resolved],
        baseline=None if base_ids is None else tok.batch_decode(base_ids, skip_special_tokens=True),
        steered=tok.batch_decode(steer_ids, skip_special_tokens=True),
        baseline_ids=base_ids, steered_ids=steer_ids, tracked=opts["tracked"],
        baseline_logits=base_logits, steered_logits=steer_logits,
        baseline_probs=base_probs, steered_probs=steer_probs)
