"""No silent phase (issue 24): every long phase runs under a bar that ends exactly at its total.

Each test records the bars of a real run (`saecircuits.progress.record`) on the tiny model and
checks that every bar closed at its total (none overran, none stopped short) and that the
phases expected of that run each had a bar."""
from __future__ import annotations

import io
import json

import pytest
import torch

import saecircuits as sc
from saecircuits import progress
from saecircuits.cli import main

HOOKS = ["resid.0", "resid.1", "resid.2"]
TEXTS = [f"Story {i}: Mary and John went to the market, and John gave a red apple to Mary. "
         f"def f{i}(x):\n    return x * {i} + [j for j in range({i})]\n" * 3 for i in range(60)]


def random_saes(hooks=HOOKS, d_sae=48, k=8):
    return sc.SAESet({h: sc.SAE.random(sc.SAEConfig("topk", 64, d_sae, k=k, hook=h), seed=i)
                      for i, h in enumerate(hooks)})


def check_bars(bars, expected=()) -> dict[str, list[progress.Record]]:
    """Every bar ended at its total and never passed it; `expected` phases each had one."""
    assert bars, "no progress bar at all"
    by_desc: dict[str, list[progress.Record]] = {}
    for b in bars:
        by_desc.setdefault(b.desc, []).append(b)
        if b.total is None:        # a status line: no count to check
            continue
        assert b.total > 0 or b.n == 0, b
        assert b.n == b.total, f"bar {b.desc!r} ended at {b.n} of {b.total}"
        assert b.peak <= b.total, f"bar {b.desc!r} overran: {b.peak} of {b.total}"
    missing = [d for d in expected if not any(name.startswith(d) for name in by_desc)]
    assert not missing, f"phases without a bar: {missing}; bars: {sorted(by_desc)}"
    return by_desc


# -- the helper ----------------------------------------------------------------------------------
@pytest.fixture
def drawn(monkeypatch):
    """Bars are drawn (the suite's conftest sets SAECIRCUITS_PROGRESS=0)."""
    monkeypatch.setenv("SAECIRCUITS_PROGRESS", "1")


def test_record_sees_totals_counts_overruns_and_disabled_bars(drawn):
    with progress.record() as bars:
        with progress.bar(3, "shown") as b:
            b.update(2)
            b.update(1)
        with progress.bar(2, "hidden", enabled=False) as b:   # counted although not drawn
            b.update(2)
        list(progress.track(range(4), "tracked"))
        with progress.bar(2, "overrun") as b:
            b.update(3)
        with progress.status("a status"):
            pass
    got = {b.desc: b for b in bars}
    assert (got["shown"].n, got["shown"].total, got["shown"].shown) == (3, 3, True)
    assert (got["hidden"].n, got["hidden"].shown) == (2, False)
    assert got["tracked"].n == got["tracked"].total == 4
    assert got["overrun"].peak == 3 > got["overrun"].total
    assert got["a status"].total is None
    with pytest.raises(AssertionError, match="overran|ended at"):
        check_bars([got["overrun"]])


def test_a_stale_bar_is_redrawn_with_its_elapsed_time(drawn):
    sink = io.StringIO()
    with progress.bar(None, "waiting", file=sink) as b:
        b.refresh()
        drawn = len(sink.getvalue())
        b.last_print_t -= progress.HEARTBEAT + 1
        assert progress.redraw_stale() >= 1
        assert len(sink.getvalue()) > drawn and "waiting" in sink.getvalue()
        drawn = len(sink.getvalue())
        progress.redraw_stale()              # just redrawn: not stale
        assert len(sink.getvalue()) == drawn


def test_a_track_that_breaks_early_still_closes_its_bar():
    with progress.record() as bars:
        for i in progress.track(range(5), "early"):
            if i == 1:
                break
    assert [(b.desc, b.n, b.total) for b in bars] == [("early", 1, 5)]


# -- trace ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["attrib", "ig"])
def test_trace_circuit_bars_end_at_their_totals(tiny, method):
    model, tok = tiny
    with progress.record() as bars:
        sc.trace_circuit(model, tok, random_saes(), "ioi", n=5, batch_size=2, top_k=6,
                         method=method, steps=2, edge_influence=1.0)
    phases = ["mean values", "clean metric", "all nodes ablated (patch)",
              "all nodes ablated (mean)", "error nodes (exact patching)", "edges",
              "faithfulness (patch)", "completeness (patch)", "faithfulness (mean)",
              "edge faithfulness (exact)", "features alone (patch)", "patch-run metric",
              {"attrib": "attribution patching", "ig": "integrated gradients"}[method]]
    by_desc = check_bars(bars, phases)
    assert by_desc["mean values"][0].total == 3       # 5 prompts in chunks of 2


def test_edge_bar_counts_each_hooks_seed_batches_and_skipped_hooks(tiny):
    """The old total (one ceil over all downstream nodes) overran with 3 + 3 targets in seed
    batches of 2; a hook whose upstream has no kept node is skipped but still counted."""
    from saecircuits.attribution import ablation as ab
    from saecircuits.attribution.edges import compute_edges
    from saecircuits.graph import Node
    from saecircuits.tasks import make_task

    model, tok = tiny
    saes = random_saes()
    states = ab.prepare(model, saes, ab.chunks(tok, make_task(tok, "ioi", n=4, seed=0), 2), "patch")
    for kept, reference in ((HOOKS, False), (HOOKS[1:], False), (HOOKS, True)):
        nodes = [Node.feat(h, None, f) for h in kept for f in (1, 2, 3)]
        with progress.record() as bars:
            compute_edges(model, saes, states, HOOKS, nodes, seed_batch=2,
                          closed_form=not reference)
        (bar,) = check_bars(bars, ["edges"])["edges"]
        assert bar.total == len(states) * (1 + 2 + 2)   # ceil(3/2) seed batches at each later hook


def test_trace_cli_per_prompt_bars(tiny, tiny_dir, tmp_path):
    random_saes().save(tmp_path / "saes")
    with progress.record() as bars:
        rc = main(["trace", "--model", str(tiny_dir("llama")), "--device", "cpu", "--saes",
                   str(tmp_path / "saes"), "--task", "ioi", "--n", "2", "--top-k", "6",
                   "--edge-influence", "1.0", "--per-prompt", "--out", str(tmp_path / "out")])
    assert rc == 0
    by_desc = check_bars(bars, ["loading", "per-prompt traces", "edges"])
    assert by_desc["per-prompt traces"][0].total == 2
    assert len(by_desc["edges"]) == 3                   # the aggregate and each prompt


def test_evaluator_faithfulness_curve_bars(tiny):
    from saecircuits.attribution import ablation as ab
    from saecircuits.attribution.evaluate import Evaluator, faithfulness_curve
    from saecircuits.attribution.nodes import attrib_scores
    from saecircuits.tasks import make_task

    model, tok = tiny
    saes = random_saes()
    states = ab.prepare(model, saes, ab.chunks(tok, make_task(tok, "ioi", n=6, seed=0), 3), "patch")
    with progress.record() as bars:
        ev = Evaluator(model, saes, states, "mean")
        faithfulness_curve(ev, attrib_scores(states, HOOKS), sizes=(2, 5))
    check_bars(bars, ["mean values", "ablation targets (mean)", "clean metric",
                      "faithfulness curve: top 2", "faithfulness curve: top 5"])


# -- train, evaluation, KL fine-tune, bases, dashboards --------------------------------------------
def test_training_harvest_and_evaluation_bars(tiny, tmp_path):
    from trainers import TrainConfig, train_saes

    model, tok = tiny
    cfg = TrainConfig(hooks=["resid.0", "resid.2"], architecture="topk", k=4, expansion=2,
                      tokens=2016, context=32, windows_per_block=8, model_batch=3,
                      eval_tokens=124, holdout=0.1, out=str(tmp_path / "out"), checkpoint_every=4)
    with progress.record() as bars:
        train_saes(model, tok, cfg, corpus=TEXTS)
    by_desc = check_bars(bars, ["train SAEs", "harvest block 0", "evaluate SAEs"])
    assert by_desc["train SAEs"][0].total == (2016 // 124) * 124     # whole steps of 124 tokens
    assert by_desc["harvest block 0"][0].total == 3        # 8 windows in model batches of 3
    assert len([d for d in by_desc if d.startswith("harvest block")]) >= 2


def test_evaluation_counts_model_passes(tiny):
    from trainers import evaluate_saes

    model, tok = tiny
    saes = sc.SAESet({"resid.1": random_saes()["resid.1"],
                      "mlp.1": sc.SAE.random(sc.SAEConfig("topk", 64, 48, k=8, hook="mlp.1"))})
    with progress.record() as bars:
        evaluate_saes(model, tok, saes, TEXTS, n_tokens=31 * 5, context=32, batch=2)
    (bar,) = check_bars(bars, ["evaluate SAEs"])["evaluate SAEs"]
    assert bar.total == 3 * (1 + 1 + 2)   # 5 windows in 3 batches: clean, resid.1 shared, mlp.1 two


def test_kl_finetune_bar(tiny):
    from trainers.kl_finetune import KLFinetuneConfig, kl_finetune

    model, tok = tiny
    with progress.record() as bars:
        kl_finetune(model, tok, random_saes(["resid.1"]),
                    KLFinetuneConfig(tokens=3 * 2 * 32, context=32, batch=2), corpus=TEXTS)
    (bar,) = check_bars(bars, ["KL fine-tune"])["KL fine-tune"]
    assert bar.total == 3


def test_compare_bases_bars(tiny):
    from saecircuits.bases import build_bases, compare_bases, corpus_activations
    from saecircuits.tasks import make_task

    model, tok = tiny
    with progress.record() as bars:
        fit = corpus_activations(model, tok, "resid.1", n_tokens=200, corpus=TEXTS, context=32,
                                 batch=2)
        bases = build_bases(model, tok, "resid.1", ["sae", "raw", "pca", "ica"],
                            sae=random_saes()["resid.1"], fit_acts=fit, ica_iter=20)
        compare_bases(model, tok, make_task(tok, "ioi", n=4, seed=1), "resid.1", bases, ns=[1, 8])
    by_desc = check_bars(bars, ["activations at resid.1", "fitting ICA", "compare bases"])
    assert by_desc["activations at resid.1"][0].total == 200
    assert by_desc["compare bases"][0].total == 3 + 4 * 3   # clean, patch read, patch logits; n = 1, 8, all per basis


def test_dashboards_bars(tiny, tmp_path):
    from saecircuits.export.dashboards import write_dashboards

    model, tok = tiny
    features = [("resid.0", 1), ("resid.2", 5), ("resid.2", 7)]
    with progress.record() as bars:
        write_dashboards(model, tok, random_saes(), features, TEXTS, tmp_path / "d", context=32,
                         max_windows=10, batch_size=4)
    by_desc = check_bars(bars, ["feature activations", "dashboards"])
    assert by_desc["feature activations"][0].total == 10 and by_desc["dashboards"][0].total == 3


def test_quiet_and_the_environment_draw_nothing_but_still_record(drawn, monkeypatch):
    sink = io.StringIO()
    with progress.record() as bars, progress.quiet():
        with progress.bar(2, "inside", file=sink) as b:
            b.update(2)
    assert sink.getvalue() == "" and [(b.desc, b.n, b.shown) for b in bars] == [("inside", 2, False)]
    with progress.bar(1, "after", file=sink) as b:   # quiet ends with its block
        b.update(1)
    assert "after" in sink.getvalue()
    monkeypatch.setenv("SAECIRCUITS_PROGRESS", "0")
    with progress.bar(1, "off", file=sink) as b:
        b.update(1)
    assert "off" not in sink.getvalue()
