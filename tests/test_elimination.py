"""Greedy backward elimination (Cunningham et al. Fig. 3, the authors' `feat_ident_run`),
checked step by step against values computed here by brute force on a tiny model."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import saecircuits as sc
from saecircuits import hooks
from saecircuits.bases import Basis, linear_basis, raw_basis, sae_basis
from saecircuits.cli import main
from saecircuits.elimination import (DEFAULT_THRESHOLDS, SuffixRunner, TraceRunner, check_thresholds,
                                     compare_bases_cunningham, parse_thresholds, prepare)
from saecircuits.errors import ConfigError, SaecircuitsError
from saecircuits.splice import encode_inputs
from saecircuits.tasks import from_records, make_task
from helpers import assert_model_clean

HOOK = "resid.1"


RECORDS = [("The cat sat on the mat and", "A dog ran in the park then", " then", " and"),
           ("She opened the red door slowly", "He opened the red door slowly", " and", " then"),
           ("We went to the old market", "They came from a new city", " and", " to")]


def _sae3(directions: torch.Tensor, dead: bool = False) -> sc.SAE:
    """A ReLU SAE with 3 latents along `directions [3, 64]` (plus, with `dead`, a 4th that
    never fires). b_enc is large, so the latents are linear on this data: patching all three
    moves the clean value by its projection on their span toward the patch value."""
    d_sae = 4 if dead else 3
    sae = sc.SAE.random(sc.SAEConfig("relu", 64, d_sae, hook=HOOK), seed=0)
    with torch.no_grad():
        sae.W_enc[:, :3] = directions.T
        sae.W_dec[:3] = directions
        sae.b_enc.fill_(100.0)
        sae.b_dec.zero_()
        if dead:
            sae.b_enc[3] = -1e6
    return sae


def _runs(model, tok, task):
    """(clean inputs, clean and patch hook values, the patch run's last-position log-probs)."""
    clean, patch = encode_inputs(tok, task.clean), encode_inputs(tok, task.patch)
    hp = hooks.resolve(model, HOOK)
    with torch.no_grad():
        with model.trace(clean):
            xc = hooks.read(model, hp).save()
        with model.trace(patch):
            xp = hooks.read(model, hp).save()
            logq = F.log_softmax(model.lm_head.output[:, -1].float(), -1).save()
    return clean, xc, xp, logq


def _brute_force(model, tok, task, sae):
    """KL(edited ‖ patch) at the last position (mean over prompts) and the edit magnitude for
    every subset of patched latents, each from one whole forward through nnsight."""
    clean, xc, xp, logq = _runs(model, tok, task)
    hp = hooks.resolve(model, HOOK)
    real = clean["attention_mask"].bool()
    delta = (sae.encode(xp) - sae.encode(xc)) * real[..., None]       # [B, T, m]
    table = {}
    for r in range(sae.cfg.d_sae + 1):
        for subset in itertools.combinations(range(sae.cfg.d_sae), r):
            idx = list(subset)
            edit = delta[..., idx] @ sae.W_dec[idx] if idx else torch.zeros_like(xc)
            with torch.no_grad(), model.trace(clean):
                hooks.write(model, hp, xc + edit)
                logp = F.log_softmax(model.lm_head.output[:, -1].float(), -1).save()
            kl = (logp.exp() * (logp - logq)).sum(-1).mean()
            table[frozenset(idx)] = (float(kl), float(edit.norm(dim=-1)[real].mean()))
    return table


@pytest.fixture(scope="module")
def ioi4(tiny):
    model, tok = tiny
    return make_task(tok, "ioi", n=4, seed=5)


@pytest.fixture(scope="module")
def toy(tiny):
    """(task, top-3 directions of its clean→patch differences at the hook): prompts that differ
    in most tokens, so the tiny random model's answer distribution moves measurably."""
    model, tok = tiny
    task = from_records(tok, [{"clean_prefix": c, "patch_prefix": p, "clean_answer": a,
                               "patch_answer": b} for c, p, a, b in RECORDS])
    clean, xc, xp, _ = _runs(model, tok, task)
    diff = (xp - xc)[clean["attention_mask"].bool()]
    return task, torch.linalg.svd(diff, full_matrices=False)[2][:3]


@pytest.fixture(scope="module")
def brute(tiny, toy):
    model, tok = tiny
    task, dirs = toy
    return _brute_force(model, tok, task, _sae3(dirs))


def _thresholds(table) -> list[float]:
    """A schedule that makes the first pass reject every latent and later passes accept them
    one group at a time: t1 below every rise from the full set, then midpoints, then above all."""
    full = frozenset(range(3))
    rises = sorted(table[full - {i}][0] - table[full][0] for i in range(3))
    assert min(rises) > 1e-6, rises   # the hand-made case needs three positive rises
    every = [table[a][0] - table[b][0] for a in table for b in table if a < b]
    return [min(rises) / 2, (rises[0] + rises[1]) / 2, max(max(every), 0) * 2 + 1.0]


@pytest.mark.parametrize("batch", [1, 3])
def test_elimination_matches_brute_force_step_by_step(tiny, toy, brute, batch):
    """Every candidate test: the unit is still patched, its KL is D(P − {i}) from the
    brute-force table, the decision is D(P − {i}) − D(P) < t, P and D(P) update as the authors'
    `feat_ident_run` does; each pass visits exactly the units patched when it starts; the
    recorded points hold |P|, D(P) and the edit magnitude of P."""
    model, tok = tiny
    task, dirs = toy
    ts = _thresholds(brute)
    res = compare_bases_cunningham(model, tok, task, HOOK, [sae_basis(_sae3(dirs))], ts, seed=0,
                                   batch=batch, progress=False, keep_steps=True)
    curve = res.curves["sae"]
    full = frozenset(range(3))
    assert curve.none.kl == pytest.approx(brute[frozenset()][0], rel=1e-4, abs=1e-6)
    assert curve.all.kl == pytest.approx(brute[full][0], rel=1e-4, abs=1e-6)
    assert curve.all.edit == pytest.approx(brute[full][1], rel=1e-5)
    patched, prev = set(full), brute[full][0]
    decisions = []
    for k, t in enumerate(ts):
        steps = [s for s in curve.steps if s.pass_ == k]
        if not patched:
            assert not steps
            break
        assert sorted(s.unit for s in steps) == sorted(patched)       # one visit per patched unit
        for s in steps:
            assert s.unit in patched
            want = brute[frozenset(patched - {s.unit})][0]
            assert s.kl == pytest.approx(want, rel=1e-4, abs=1e-6)
            assert abs(want - prev - t) > 1e-5                          # no tie at this tolerance
            assert s.accepted == (want - prev < t)
            decisions.append(s.accepted)
            if s.accepted:
                patched.discard(s.unit)
                prev = want
        point = curve.points[k]
        assert point.threshold == t and point.units == len(patched)
        assert point.kl == pytest.approx(prev, rel=1e-4, abs=1e-6)
        assert point.edit == pytest.approx(brute[frozenset(patched)][1], rel=1e-5, abs=1e-6)
        assert point.patched == sorted(patched)
    assert True in decisions and False in decisions                       # both branches taken
    assert not patched and len(curve.points) == len(ts)                  # the last t removes all
    assert curve.steps[0].pass_ == 0 and not any(s.accepted for s in curve.steps if s.pass_ == 0)
    assert_model_clean(model)


def test_batched_candidates_give_the_sequential_decisions(tiny, toy, brute):
    model, tok = tiny
    task, dirs = toy
    ts = _thresholds(brute)
    runs = [compare_bases_cunningham(model, tok, task, HOOK, [sae_basis(_sae3(dirs))], ts, seed=s,
                                     batch=b, progress=False, keep_steps=True).curves["sae"]
            for s, b in ((0, 1), (0, 16), (1, 1))]
    key = lambda c: [(s.pass_, s.unit, s.accepted) for s in c.steps]
    assert key(runs[0]) == key(runs[1])
    assert [s.unit for s in runs[0].steps] != [s.unit for s in runs[2].steps]  # the seed orders
    assert runs[1].tests >= runs[0].tests                                    # speculation costs


def test_zero_edit_units_are_removed_without_a_forward(tiny, toy, brute):
    """A latent that never fires has a zero edit: un-patching it leaves D unchanged (0 < t),
    so it goes at the first threshold without a test; the others behave as without it."""
    model, tok = tiny
    task, dirs = toy
    ts = _thresholds(brute)
    four = compare_bases_cunningham(model, tok, task, HOOK, [sae_basis(_sae3(dirs, dead=True))], ts,
                                    progress=False, keep_steps=True).curves["sae"]
    three = compare_bases_cunningham(model, tok, task, HOOK, [sae_basis(_sae3(dirs))], ts,
                                     progress=False, keep_steps=True).curves["sae"]
    dead = [s for s in four.steps if s.unit == 3]
    assert len(dead) == 1 and dead[0].kl is None and dead[0].accepted and dead[0].pass_ == 0
    assert four.active == 3 and four.skipped == 1
    assert [p.units for p in four.points] == [p.units for p in three.points]
    assert [p.kl for p in four.points] == pytest.approx([p.kl for p in three.points], rel=1e-4)


def test_suffix_runner_matches_the_whole_forward(tiny, ioi4):
    model, tok = tiny
    setup = prepare(model, tok, ioi4, HOOK)
    assert isinstance(setup.runner, SuffixRunner) and setup.runner_check < 1e-4
    assert 0 < setup.start < setup.x_clean.shape[1]
    full = TraceRunner(model, setup.hp, encode_inputs(tok, ioi4.clean), setup.start)
    g = torch.Generator().manual_seed(0)
    xs = setup.x_clean[None, :, setup.start:] + torch.randn(3, *setup.x_clean[:, setup.start:].shape, generator=g)
    assert torch.allclose(setup.runner.logprobs(setup.x_clean, xs),
                          full.logprobs(setup.x_clean, xs), atol=1e-4)
    mlp = prepare(model, tok, ioi4, "mlp.1")           # not a block output: whole forwards
    assert isinstance(mlp.runner, TraceRunner) and mlp.runner_check < 1e-4
    assert_model_clean(model)


def test_resume_after_interruption_gives_the_same_curve(tiny, ioi4, tmp_path, monkeypatch):
    model, tok = tiny
    raw = raw_basis(64)
    ts = list(np.logspace(-3, 0, 6))
    fresh = compare_bases_cunningham(model, tok, ioi4, HOOK, [raw], ts, batch=4, progress=False)
    from saecircuits import elimination

    calls, real = {"n": 0}, elimination.Setup.kl

    def flaky(self, x):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(self, x)

    monkeypatch.setattr(elimination.Setup, "kl", flaky)
    monkeypatch.setattr(elimination.time, "perf_counter", lambda c=iter(range(0, 10 ** 9, 30)): next(c))
    with pytest.raises(KeyboardInterrupt):
        compare_bases_cunningham(model, tok, ioi4, HOOK, [raw], ts, batch=4, progress=False,
                                 state_dir=tmp_path)
    state = json.loads((tmp_path / "raw.json").read_text())
    assert state["tests"] > 2                                        # saved part-way
    monkeypatch.setattr(elimination.Setup, "kl", real)
    resumed = compare_bases_cunningham(model, tok, ioi4, HOOK, [raw], ts, batch=4, progress=False,
                                       state_dir=tmp_path)
    got, want = resumed.curves["raw"], fresh.curves["raw"]
    assert [p.units for p in got.points] == [p.units for p in want.points]
    assert [p.kl for p in got.points] == pytest.approx([p.kl for p in want.points], rel=1e-4)
    with pytest.raises(ConfigError, match="other settings"):
        compare_bases_cunningham(model, tok, ioi4, HOOK, [raw], ts[:-1], progress=False,
                                 state_dir=tmp_path)


def test_complete_basis_all_patched_is_the_counterfactual(tiny, toy):
    """With every raw dimension patched the clean run becomes the patch run (KL ≈ 0); with
    none it is the clean run; a threshold above every rise removes every unit."""
    model, tok = tiny
    res = compare_bases_cunningham(model, tok, toy[0], HOOK, [raw_basis(64)], [1e3], progress=False)
    c = res.curves["raw"]
    assert abs(c.all.kl) < 1e-5 and c.none.kl > 1e-2 and c.points[-1].units == 0
    table = res.table()
    assert "| raw |" in table and res.to_dict()["bases"]["raw"]["none"]["kl"] == c.none.kl
    svg = res.plot_units()
    assert svg.startswith("<svg") and svg.count("<polyline") == 1


def test_threshold_schedules():
    assert parse_thresholds("log:1e-5:1:50") == pytest.approx(list(DEFAULT_THRESHOLDS))
    assert DEFAULT_THRESHOLDS[0] == pytest.approx(1e-5) and DEFAULT_THRESHOLDS[-1] == pytest.approx(1.0)
    assert parse_thresholds("0.1,0.2") == [0.1, 0.2]
    for bad, match in (("0.2,0.1", "increasing: 0.1 follows 0.2"), ("0.1,0.1", "increasing"),
                       ("0,1", "> 0"), ("log:1:1e-3:3", "increasing"), ("log:1:0:3", "MAX > 0"), ("log:a", "log:MIN:MAX:N"),
                       ("", "empty")):
        with pytest.raises(ConfigError, match=match):
            parse_thresholds(bad)
    with pytest.raises(ConfigError, match="nan"):
        check_thresholds([float("nan")])


def test_cli_bad_inputs_fail_before_any_model_pass(tiny_dir, tmp_path, capsys, monkeypatch):
    """Non-increasing thresholds and a hook the SAE set lacks fail before the model loads; a
    task without patch prompts and PCA on fewer activations than dimensions fail before any
    forward pass."""
    model = str(tiny_dir("llama"))
    saes = tmp_path / "saes"
    sc.SAESet({HOOK: sc.SAE.random(sc.SAEConfig("topk", 64, 128, k=8, hook=HOOK))}).save(saes)
    nopatch = tmp_path / "nopatch.jsonl"
    nopatch.write_text(json.dumps({"clean_prefix": "When Mary and John went", "patch_prefix": None,
                                   "clean_answer": " Mary", "patch_answer": " John"}) + "\n")
    from saecircuits import models

    loads = {"n": 0}
    real_load = models.load_model

    def counting_load(*a, **k):
        loads["n"] += 1
        loaded = real_load(*a, **k)
        monkeypatch.setattr(type(loaded[0]), "trace", _no_pass)
        return loaded

    monkeypatch.setattr(models, "load_model", counting_load)
    base = ["compare-bases", "--protocol", "cunningham", "--model", model, "--hook", HOOK]
    cases = [
        (["--task", "ioi", "--bases", "raw", "--thresholds", "0.1,0.01"], "increasing", 0),
        (["--task", "ioi", "--saes", str(saes), "--hook", "resid.2", "--bases", "sae"], "resid.2", 0),
        (["--task", str(nopatch), "--bases", "raw"], "patch_prefix", 1),
        (["--task", "ioi", "--bases", "pca", "--fit-tokens", "32"], "more activations than components", 1),
    ]
    for extra, match, n_loads in cases:
        loads["n"] = 0
        out = tmp_path / f"out-{len(extra)}-{match[:4]}"
        assert main(base + extra + ["--out", str(out)]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert match in err and len(err.splitlines()) == 1, err
        assert loads["n"] == n_loads and not out.exists()


def _no_pass(*args, **kwargs):
    raise AssertionError("a model pass ran before the bad input was reported")


def test_cli_cunningham_writes_outputs_and_resumes(tiny_dir, toy, tmp_path, capsys):
    model = str(tiny_dir("llama"))
    saes = tmp_path / "saes"
    sc.SAESet({HOOK: _sae3(toy[1])}).save(saes)
    out = tmp_path / "out"
    args = ["compare-bases", "--json", "--protocol", "cunningham", "--model", model, "--saes",
            str(saes), "--hook", HOOK, "--task", "ioi", "--n", "3", "--bases", "sae,raw",
            "--thresholds", "log:1e-3:1:4", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["protocol"] == "cunningham" and set(summary["bases"]) == {"sae", "raw"}
    assert {"bases.json", "bases.md", "bases-units.svg", "bases-edit.svg"} <= {p.name for p in out.iterdir()}
    assert sorted(p.name for p in (out / "partial").iterdir()) == ["raw.json", "sae.json"]
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err     # finished: not again
    assert main(args + ["--overwrite"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["bases"]["raw"]["points"] == summary["bases"]["raw"]["points"]


def test_headline_text_names_the_kl_measure(tiny, toy):
    from saecircuits.bases import compare_bases, headline

    model, tok = tiny
    task, dirs = toy
    res = compare_bases(model, tok, task, HOOK, [sae_basis(_sae3(dirs)), raw_basis(64)], ns=[1, 2, 16, 64])
    text = headline(res)
    assert "top 16" in text and "KL(edited ‖ counterfactual)" in text and "RAW" in text
    raw_all = res.point("raw", "all")
    assert raw_all.kl < 0.5 * res.kl_clean          # (the first token, which differs here, stays clean)
    assert res.point("raw", 1).edit < raw_all.edit
    target = 0.25 * res.kl_clean
    n = min(p.n for p in res.curves["raw"] if p.kl <= target)
    assert f"RAW {n:,} units" in text


def test_linear_basis_from_params_round_trips(tiny):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 8, generator=g)
    b = linear_basis("toy", torch.zeros(8), w)
    x = torch.randn(5, 8, generator=g)
    assert torch.allclose(b.encode(x) @ b.dec, x, atol=1e-4)       # pinv of a square w: inverse
    with pytest.raises(SaecircuitsError, match="exactly one"):
        Basis("bad")
