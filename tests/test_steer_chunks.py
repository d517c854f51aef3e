"""Steering in chunks of at most `chunk_tokens` padded tokens: same results as one batch."""
from __future__ import annotations

import argparse

import pytest
import torch

from saecircuits import SAE, SAEConfig, SAESet
from saecircuits.errors import ConfigError
from saecircuits.steering import Intervention, steer
from saecircuits.steering.generate import CHUNK_TOKENS, _merge, chunk_plan
from tests.helpers import assert_model_clean

# ragged lengths (left padding differs per chunk) and out of length order
PROMPTS = ["Once upon a time, in a land far away, there lived", "Hi", "The cat sat on the",
           "A B C D E F G H I J K L M N", "Yes", "Rivers flow into the"]
TRACK = [")", " the", "."]
NEW = 5


@pytest.fixture(scope="module")
def saes():
    out = {}
    for seed, hook in enumerate(("resid.0", "resid.2")):
        sae = SAE.random(SAEConfig("topk", 64, 256, k=8, hook=hook), seed=seed + 1)
        with torch.no_grad():
            sae.W_dec.mul_(30.0)
        out[hook] = sae
    return SAESet(out)


def _ivs():
    return [Intervention("resid.0", 7, "set", 40.0, positions=[0, -1]),
            Intervention("resid.2", [5, 9], "add", 15.0, positions="generated"),
            Intervention("resid.2", [1, 2, 3], "ablate", ablation="mean", positions="prompt")]


def _same(a, b):
    assert torch.equal(a.steered_ids, b.steered_ids) and a.steered == b.steered
    assert torch.equal(a.baseline_ids, b.baseline_ids) and a.baseline == b.baseline
    for name in ("steered_logits", "baseline_logits", "steered_probs", "baseline_probs"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=1e-4, rtol=1e-4,
                                   equal_nan=True)


def test_chunk_plan_bounds_padded_tokens():
    lengths = [11, 1, 5, 14, 1, 5]
    assert chunk_plan(lengths, 5, 10_000) == [[0, 1, 2, 3, 4, 5]]   # fits: prompt order kept
    for budget in (1, 12, 20, 40, 60):
        plan = chunk_plan(lengths, 5, budget)
        assert sorted(i for c in plan for i in c) == list(range(6))
        for chunk in plan:
            assert len(chunk) == 1 or len(chunk) * (max(lengths[i] for i in chunk) + 5) <= budget
    assert len(chunk_plan(lengths, 5, 1)) == 6
    assert len(chunk_plan(lengths, 5, 40)) < 6
    for bad in (0, -3, 1.5, True, "8"):
        with pytest.raises(ConfigError, match="chunk_tokens"):
            chunk_plan(lengths, 5, bad)


@pytest.mark.parametrize("use_cache", [True, False])
def test_chunked_equals_one_batch_greedy(tiny, saes, use_cache):
    model, tok = tiny
    one = steer(model, saes, PROMPTS, _ivs(), NEW, tokenizer=tok, track=TRACK, use_cache=use_cache)
    assert not torch.allclose(one.steered_logits, one.baseline_logits)   # the edits do act
    lengths = tok(PROMPTS, return_tensors="pt", padding=True)["attention_mask"].sum(1).tolist()
    assert len(set(lengths)) > 3
    for budget in ((1, 40) if not use_cache else (1, 25, 40, 70)):
        assert len(chunk_plan(lengths, NEW, budget)) > 1
        chunked = steer(model, saes, PROMPTS, _ivs(), NEW, tokenizer=tok, track=TRACK,
                        use_cache=use_cache, chunk_tokens=budget)
        _same(chunked, one)
    assert_model_clean(model)


def test_mean_ablation_averages_over_every_prompt(tiny, saes):
    """Without a baseline run the means still come from all prompts, not from one chunk."""
    model, tok = tiny
    iv = [Intervention("resid.2", [1, 2, 3], "ablate", ablation="mean")]
    one = steer(model, saes, PROMPTS, iv, 3, tokenizer=tok, track=TRACK, baseline=False)
    chunked = steer(model, saes, PROMPTS, iv, 3, tokenizer=tok, track=TRACK, baseline=False,
                    chunk_tokens=1)
    assert torch.equal(one.steered_ids, chunked.steered_ids)
    torch.testing.assert_close(one.steered_logits, chunked.steered_logits, atol=1e-4, rtol=1e-4)
    # control: means over the first prompt only differ
    alone = steer(model, saes, PROMPTS[:1], iv, 3, tokenizer=tok, track=TRACK, baseline=False)
    assert not torch.allclose(alone.steered_logits[0], one.steered_logits[0])


def test_sampling_is_chunk_invariant_and_per_prompt(tiny, saes):
    model, tok = tiny
    kw = dict(tokenizer=tok, track=TRACK, do_sample=True, seed=3, temperature=1.5, top_p=0.9)
    one = steer(model, saes, PROMPTS, _ivs(), 3, **kw)
    _same(steer(model, saes, PROMPTS, _ivs(), 3, chunk_tokens=40, **kw), one)
    first = steer(model, saes, PROMPTS[:1], _ivs()[:2], 3, **kw)   # prompt 0 alone: same seed
    assert torch.equal(first.baseline_ids[0], one.baseline_ids[0])   # (the baseline has no edits)
    other = steer(model, saes, PROMPTS, _ivs(), 3, **{**kw, "seed": 4})
    assert not torch.equal(other.steered_ids, one.steered_ids)


def test_eos_stop_pads_ids_and_marks_finished_steps(tiny, saes):
    """A row stopped at EOS: pad ids after it and NaN tracked values, chunked or not."""
    model, tok = tiny
    probe = steer(model, saes, PROMPTS, [], NEW, tokenizer=tok, track=TRACK)
    stop = int(probe.steered_ids[2, 1])          # prompt 2's second token becomes the EOS
    config = model.generation_config
    old = config.eos_token_id
    config.eos_token_id = stop
    try:
        one = steer(model, saes, PROMPTS, _ivs()[:1], NEW, tokenizer=tok, track=TRACK)
        chunked = steer(model, saes, PROMPTS, _ivs()[:1], NEW, tokenizer=tok, track=TRACK,
                        chunk_tokens=1)
    finally:
        config.eos_token_id = old
    _same(chunked, one)
    row = one.baseline_ids[2]
    assert int(row[1]) == stop and (row[2:] == tok.pad_token_id).all()
    assert one.baseline_logits[2, :2].isfinite().all() and one.baseline_logits[2, 2:].isnan().all()
    assert one.baseline_logits.shape[1] == NEW       # other rows went on


def test_merge_pads_short_chunks():
    ids_a = torch.tensor([[5, 9]])                     # chunk that stopped after 2 steps (EOS 9)
    ids_b = torch.tensor([[4, 4, 4], [6, 7, 8]])
    vals = lambda b, s: torch.arange(b * s * 2, dtype=torch.float).reshape(b, s, 2)
    parts = [(ids_a, vals(1, 2), vals(1, 2)), (ids_b, vals(2, 3), vals(2, 3))]
    ids, logits, probs = _merge(parts, [[1], [2, 0]], 3, pad_id=0, eos={9})
    assert ids.tolist() == [[6, 7, 8], [5, 9, 0], [4, 4, 4]]
    assert logits[1, 2].isnan().all() and torch.equal(logits[1, :2], vals(1, 2)[0])
    assert torch.equal(probs[0], vals(2, 3)[1])


def test_bad_chunk_tokens_rejected_and_model_clean(tiny, saes):
    model, tok = tiny
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match=f"chunk_tokens.*{bad!r}"):
            steer(model, saes, PROMPTS, _ivs(), NEW, tokenizer=tok, chunk_tokens=bad)
    with pytest.raises(ConfigError, match="seed"):
        steer(model, saes, PROMPTS, _ivs(), NEW, tokenizer=tok, seed=1.5)
    assert_model_clean(model)


@pytest.mark.parametrize("command", ["steer", "trace"])
def test_cli_chunk_tokens_validated_with_default_in_help(command, capsys):
    from saecircuits import cli

    argv = {"steer": ["steer", "--saes", "s", "--prompt", "p"],
            "trace": ["trace", "--saes", "s", "--task", "ioi", "--out", "o"]}[command]
    for bad in ("0", "-4", "x"):
        assert cli.main(argv + ["--chunk-tokens", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"'{bad}'" in err and "--chunk-tokens" in err, err
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if "--chunk-tokens" in a.option_strings)
    from saecircuits.attribution import TraceConfig

    assert action.default == (CHUNK_TOKENS if command == "steer" else TraceConfig().chunk_tokens)


def test_trace_cli_passes_chunk_tokens_to_the_trace_config():
    from saecircuits import cli
    from saecircuits.attribution.circuit import trace_config
    from saecircuits.commands import trace

    args = cli.build_parser().parse_args(["trace", "--saes", "s", "--task", "ioi", "--out", "o",
                                          "--chunk-tokens", "300"])
    assert trace_config(None, **trace._options(args)).chunk_tokens == 300
