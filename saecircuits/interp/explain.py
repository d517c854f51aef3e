"""Explanation and simulation scoring of units (Bills et al. 2023, as used by Cunningham et al.).

For each unit: an explainer reads its top-activating excerpts (activations discretised to
0–10, normalised by the unit's largest activation in the explanation set) and writes a short
explanation; a simulator then predicts, from the explanation alone, the unit's activation on
every token of held-out excerpts (other top-activating ones and random ones); the score is
the correlation between predicted and true activations over all scoring tokens.

Simulation: a backend with next-token probabilities (`LocalBackend`) uses Bills et al.'s
"all at once" method — each token is listed as `token<TAB>unknown` and the prediction is the
expected value of the 0–10 digits at the slot; other backends are asked for a JSON list of
integers, one per token (invalid answers are retried, then an error).
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from .backends import AnswerCache, ExplainerError, Messages
from .contexts import Excerpt, ExcerptSplit

EXPLAIN_SYSTEM = (
    "We're studying neurons in a neural network. Each neuron looks for some particular thing "
    "in a short document. Look at the parts of the document the neuron activates for and "
    "summarize in a single short phrase what the neuron is looking for. Don't list examples "
    "of words.")
SIMULATE_SYSTEM = (
    "We're studying neurons in a neural network. Each neuron looks for some particular thing "
    "in a short document. Look at an explanation of what the neuron does, and try to predict "
    "its activations on each token. Activations go from 0 to 10; most activations are 0.")
PREFIX = "the main thing this neuron does is find"


@dataclass
class ScoreConfig:
    """explain_tokens: answer length cap; retries: extra tries on an unusable answer."""

    explain_tokens: int = 48
    simulate_tokens_per_token: int = 4
    retries: int = 2
    temperature: float = 0.0


def _show(token: str) -> str:
    return token.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def discretise(acts: Sequence[float], max_act: float) -> list[int]:
    """Activations -> integers 0..10 (10 = `max_act`; negatives and NaN -> 0)."""
    if not max_act > 0:
        return [0 for _ in acts]
    return [int(min(10, max(0, round(10 * a / max_act)))) if a == a else 0 for a in acts]


def explain_messages(excerpts: Sequence[Excerpt]) -> Messages:
    """The explanation prompt: each excerpt's text, then its tokens with activation > 0."""
    max_act = max((max(e.acts) for e in excerpts if e.acts), default=0.0)
    blocks = []
    for n, e in enumerate(excerpts, 1):
        levels = discretise(e.acts, max_act)
        firing = ", ".join(f"'{_show(t)}' ({v})" for t, v in zip(e.tokens, levels) if v > 0)
        blocks.append(f"Excerpt {n}: {_show(''.join(e.tokens))}\n"
                      f"Activating tokens: {firing or '(none above 0)'}")
    user = ("Activations are on a scale of 0 to 10; tokens at 0 are not listed.\n\n"
            + "\n\n".join(blocks)
            + f"\n\nComplete the sentence in a few words: \"{PREFIX} ...\"")
    return [{"role": "system", "content": EXPLAIN_SYSTEM}, {"role": "user", "content": user}]


def parse_explanation(answer: str) -> str:
    """First non-empty line, without the repeated prompt prefix, quotes and a final period."""
    lines = [ln.strip() for ln in answer.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    text = lines[0]
    low = text.lower()
    i = low.find(PREFIX)
    if i >= 0:
        text = text[i + len(PREFIX):]
    text = re.sub(r"^(is|:|-|\.\.\.|…)\s*", "", text.strip()).strip().rstrip(".").strip()
    for q in ('"', "'", "`", "*"):
        while len(text) >= 2 and text[0] == q and text[-1] == q:
            text = text[1:-1].strip().rstrip(".").strip()
        if text.endswith(q) and text.count(q) % 2 == 1:  # an unmatched closing quote
            text = text[:-1].rstrip().rstrip(".").strip()
    return text.rstrip(".").strip()[:300]


def simulate_messages(explanation: str, excerpt: Excerpt, json_answer: bool) -> Messages:
    if json_answer:
        listing = "\n".join(f"{i}\t{_show(t)}" for i, t in enumerate(excerpt.tokens))
        user = (f"Neuron explanation: {PREFIX} {explanation}.\n\n"
                f"Tokens (index<TAB>token):\n{listing}\n\n"
                f"Answer only with JSON: {{\"activations\": [...]}} holding "
                f"{len(excerpt.tokens)} integers from 0 to 10, one per token in order.")
    else:
        user = (f"Neuron explanation: {PREFIX} {explanation}.\n\n"
                f"Sequence: {_show(''.join(excerpt.tokens))}\n\n"
                "List each token with its activation, one per line as token<TAB>activation.")
    return [{"role": "system", "content": SIMULATE_SYSTEM}, {"role": "user", "content": user}]


def parse_json_activations(answer: str, n: int) -> list[float]:
    """`{"activations": [...]}` or a bare list of `n` numbers in 0..10 -> floats.
    Raises ExplainerError on anything else."""
    text = answer.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    if fence:
        text = fence.group(1).strip()
    start = min([i for i in (text.find("{"), text.find("[")) if i >= 0], default=-1)
    if start < 0:
        raise ExplainerError(f"simulator answer has no JSON: {answer[:60]!r}")
    try:
        data, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as err:
        raise ExplainerError(f"simulator answer is invalid JSON ({err.msg}): {answer[:60]!r}") from err
    values = data.get("activations") if isinstance(data, dict) else data
    if not isinstance(values, list) or len(values) != n:
        got = len(values) if isinstance(values, list) else type(values).__name__
        raise ExplainerError(f"simulator answer must list {n} activations, got {got}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ExplainerError(f"simulator answer has a non-number activation {v!r}")
        out.append(float(min(10.0, max(0.0, v))))
    return out


def _ask(backend, cache: AnswerCache, messages: Messages, max_tokens: int, cfg: ScoreConfig,
         parse, what: str, prefix: str = ""):
    """Ask (cached); `parse(answer)` may raise ExplainerError -> retried, then re-raised.
    Only answers that parse are cached."""
    key = AnswerCache.key("chat", backend.ident, messages, max_tokens, cfg.temperature, prefix)
    hit = cache.get(key)
    if hit is not None:
        return parse(hit)
    err: ExplainerError | None = None
    for _ in range(cfg.retries + 1):
        answer = backend.chat(messages, max_tokens=max_tokens, temperature=cfg.temperature,
                              **({"prefix": prefix} if prefix else {}))
        try:
            value = parse(answer)
        except ExplainerError as e:
            err = e
            continue
        cache.put(key, answer)
        return value
    raise ExplainerError(f"{what}: {err} (after {cfg.retries + 1} tries)")


def explain(backend, cache: AnswerCache, excerpts: Sequence[Excerpt], cfg: ScoreConfig) -> str:
    """The explanation text ("" when the explainer says nothing: that is its answer, scored
    like any other, not an error)."""
    # as Bills et al., the answer is started with the prefix where the backend allows it
    return _ask(backend, cache, explain_messages(excerpts), cfg.explain_tokens, cfg,
                parse_explanation, "explanation",
                prefix=PREFIX if getattr(backend, "supports_logprobs", False) else "")


def _digit_tokens(tok) -> tuple[list[int], list[float]]:
    ids, values = [], []
    for d in range(11):
        enc = tok(str(d), add_special_tokens=False)["input_ids"]
        if len(enc) == 1:
            ids.append(enc[0])
            values.append(float(d))
    if len(ids) < 2:
        raise ExplainerError("the simulator's tokenizer has no single-token digits")
    return ids, values


def simulate_logprobs(backend, cache: AnswerCache, explanation: str, excerpt: Excerpt) -> list[float]:
    """Expected 0–10 activation per token from next-token probabilities ("all at once")."""
    return simulate_logprobs_many(backend, cache, explanation, [excerpt])[0]


def _simulation_prompt(backend, explanation: str, excerpt: Excerpt) -> tuple[list[int], list[int]]:
    """Token ids of the "all at once" prompt and the slot positions (after each `token<TAB>`)."""
    tok = backend.tok
    ids = backend.prompt_ids(simulate_messages(explanation, excerpt, json_answer=False), "")
    slots = []
    for t in excerpt.tokens:
        ids += tok(_show(t) + "\t", add_special_tokens=False)["input_ids"]
        slots.append(len(ids) - 1)
        ids += tok("unknown\n", add_special_tokens=False)["input_ids"]
    return ids, slots


def simulate_logprobs_many(backend, cache: AnswerCache, explanation: str,
                           excerpts: Sequence[Excerpt]) -> list[list[float]]:
    """`simulate_logprobs` for each excerpt (cached one by one under the same keys); the
    uncached ones go to the backend together, so the prompt prefix they share (system
    prompt and explanation) is computed once."""
    keys = [AnswerCache.key("simulate-logprobs", backend.ident,
                            simulate_messages(explanation, e, json_answer=False), e.tokens)
            for e in excerpts]
    out: list[list[float] | None] = []
    for key in keys:
        hit = cache.get(key)
        out.append(None if hit is None else [float(v) for v in hit])
    todo = [i for i, p in enumerate(out) if p is None]
    if todo:
        cand, values = _digit_tokens(backend.tok)
        weights = np.asarray(values, dtype=np.float32)
        prompts = [_simulation_prompt(backend, explanation, excerpts[i]) for i in todo]
        for i, probs in zip(todo, backend.next_token_probs_many(prompts, cand)):
            pred = [round(float(v), 5) for v in probs.numpy() @ weights]
            cache.put(keys[i], pred)
            out[i] = pred
    return out  # type: ignore[return-value]


def simulate_json(backend, cache: AnswerCache, explanation: str, excerpt: Excerpt,
                  cfg: ScoreConfig) -> list[float]:
    n = len(excerpt.tokens)
    return _ask(backend, cache, simulate_messages(explanation, excerpt, json_answer=True),
                16 + cfg.simulate_tokens_per_token * n, cfg,
                lambda a: parse_json_activations(a, n), "simulation")


def correlation(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson correlation; 0.0 when either side is constant (nothing predicted/explained)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


@dataclass
class UnitScore:
    """Result for one unit. score: correlation over all scoring tokens (top + random);
    score_top: over the held-out top excerpts only; constant: the simulator predicted one
    value everywhere (score 0 by convention)."""

    key: str
    basis: str
    unit: int
    explanation: str
    score: float
    score_top: float
    n_tokens: int
    max_act: float
    constant: bool = False
    predicted: list[list[float]] = field(default_factory=list, repr=False)
    true: list[list[float]] = field(default_factory=list, repr=False)

    def row(self) -> dict:
        d = asdict(self)
        d.pop("predicted")
        d.pop("true")
        return d


def score_unit(backend, cache: AnswerCache, key: str, basis: str, unit: int,
               split: ExcerptSplit, cfg: ScoreConfig | None = None) -> UnitScore:
    """Explain `split.explain`, simulate `split.score`, correlate."""
    cfg = cfg or ScoreConfig()
    explanation = explain(backend, cache, split.explain, cfg)
    if getattr(backend, "supports_logprobs", False):
        preds = simulate_logprobs_many(backend, cache, explanation, split.score)
    else:
        preds = [simulate_json(backend, cache, explanation, e, cfg) for e in split.score]
    trues = [list(e.acts) for e in split.score]
    flat_p = [v for p in preds for v in p]
    flat_t = [v for t in trues for v in t]
    top = [i for i, e in enumerate(split.score) if e.kind == "top"]
    top_p = [v for i in top for v in preds[i]]
    top_t = [v for i in top for v in trues[i]]
    return UnitScore(key, basis, int(unit), explanation, correlation(flat_p, flat_t),
                     correlation(top_p, top_t), len(flat_t), split.max_act,
                     bool(np.std(flat_p) == 0), preds, trues)
