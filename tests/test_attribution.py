"""Attribution engine: design invariants 3 and 4, edges, pruning, trace_circuit and the CLI."""
import json

import pytest
import torch

import saecircuits as sc
from saecircuits.attribution import ablation as ab
from saecircuits.attribution import trace_circuit
from saecircuits.attribution.edges import compute_edges
from saecircuits.attribution.evaluate import Evaluator, agreement, circuit_by_size, faithfulness_curve
from saecircuits.attribution.nodes import attrib_scores, exact_effects, ig_scores, node_scores
from saecircuits.cli import main
from saecircuits.errors import ConfigError, GraphError, TaskError
from saecircuits.graph import Node
from saecircuits.tasks import make_task
from helpers import assert_model_clean

HOOKS = ["resid.0", "resid.1", "resid.2"]


def random_saes(hooks, d_in, d_sae, model_name=""):
    return sc.SAESet({h: sc.SAE.random(sc.SAEConfig("topk", d_in, d_sae, k=8, hook=h,
                                                    model_name=model_name), seed=i)
                      for i, h in enumerate(hooks)})


@pytest.fixture(scope="module")
def setup(tiny):
    model, tok = tiny
    saes = random_saes(HOOKS, 64, 48)
    task = make_task(tok, "ioi", n=6, seed=0)
    chunks = ab.chunks(tok, task, 3)
    states = ab.prepare(model, saes, chunks, "patch")
    return model, tok, saes, task, chunks, states


def patch_metric(model, saes, chunks):
    return float(torch.cat([ab.run_metric(model, saes, c, inputs=c.patch) for c in chunks]).mean())


def test_invariant3_attribution_is_exact_patching_to_first_order(setup):
    model, _, saes, _, _, states = setup
    est = attrib_scores(states, HOOKS, positional=True)
    top = est.nodes()[:12]
    alpha = 1e-3
    ex = exact_effects(model, saes, states, top, alpha=alpha, progress=False)
    a = torch.tensor([est.effect(n) for n in top]) * alpha
    b = torch.tensor([ex[n] for n in top])
    assert a.abs().max() > 0
    torch.testing.assert_close(b, a, atol=2e-3 * a.abs().max().item(), rtol=0.05)
    assert_model_clean(model)


def test_invariant3_integrated_gradients_complete(setup):
    model, _, saes, _, chunks, states = setup
    ig = ig_scores(model, saes, states, HOOKS, steps=10, progress=False)
    change = patch_metric(model, saes, chunks) - ig.metric_clean
    assert abs(change) > 1e-3
    for h in HOOKS:              # residual hooks: patching a whole hook = the patch run
        assert abs(ig.total(h) - change) <= 0.05 * abs(change), (h, ig.total(h), change)


def test_invariant4_patch_everything_and_nothing(setup):
    model, _, saes, _, chunks, states = setup
    ev = Evaluator(model, saes, states, "patch")
    assert ev.f_empty == pytest.approx(patch_metric(model, saes, chunks), abs=1e-4)
    every = attrib_scores(states, HOOKS).nodes()
    every += [(h, None, i) for h in HOOKS for i in range(48)]
    assert ev.metric(every) == pytest.approx(ev.f_model, abs=1e-4)
    assert ev.faithfulness(every) == pytest.approx(1.0, abs=1e-4)
    assert ev.completeness(every) == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(GraphError, match="circuit is empty"):
        ev.faithfulness([])
    curve = faithfulness_curve(Evaluator(model, saes, states, "mean"), attrib_scores(states, HOOKS),
                               sizes=(1, 5, 48 * 3))
    assert [c["features"] for c in curve][:2] == [1, 5]
    assert curve[-1]["faithfulness"] == pytest.approx(1.0, abs=0.01)   # zero-effect features ablated
    scores = attrib_scores(states, HOOKS)
    kept = circuit_by_size(scores, 2, errors="all")
    assert [n for n in kept if n[2] == "err"] == [n for n in scores.nodes() if n[2] == "err"]
    assert len(circuit_by_size(scores, 2, errors=False)) == 2
    with pytest.raises(ConfigError, match="sometimes"):
        circuit_by_size(scores, 2, errors="sometimes")


def test_edges_split_each_upstream_effect_over_the_next_hook(setup):
    model, _, saes, _, _, states = setup
    est = attrib_scores(states, HOOKS)
    ups = [n for n in est.nodes() if n[0] == "resid.0"][:5]
    downs = [("resid.1", None, i) for i in range(48)] + [("resid.1", None, "err")]
    edges = compute_edges(model, saes, states, HOOKS, ups + downs, seed_batch=16, progress=False)
    for u in ups:   # chain rule: Σ_d ∂m/∂d · ∂d/∂u · Δu = ∂m/∂u · Δu (all paths pass resid.1)
        total = sum(w for (a, b), w in edges.items() if a == u)
        assert total == pytest.approx(est.effect(u), rel=1e-3, abs=1e-6)
    last = [n for n in est.nodes() if n[0] == "resid.2"][:4]
    edges = compute_edges(model, saes, states, HOOKS, last, progress=False)
    for n in last:
        assert edges.get((n, Node.metric()), 0.0) == pytest.approx(est.effect(n), rel=1e-4, abs=1e-7)


def test_agreement_and_methods(setup):
    model, _, saes, _, _, states = setup
    ig = node_scores(model, saes, states, HOOKS, "ig", steps=4, progress=False)
    exact = node_scores(model, saes, states, HOOKS, "exact", exact_candidates=8, progress=False)
    nodes = [n for n in exact.nodes() if exact.effect(n) != 0][:8]
    rep = agreement(ig, {n: exact.effect(n) for n in nodes})
    assert rep["n"] == len(nodes) and -1 <= rep["pearson_r"] <= 1 and 0 <= rep["sign_agreement"] <= 1
    with pytest.raises(ConfigError, match="method 'bogus'"):
        node_scores(model, saes, states, HOOKS, "bogus")


def test_trace_circuit_and_cli(tiny, tiny_dir, tmp_path, capsys):
    model, tok = tiny
    saes = random_saes(HOOKS, 64, 48)
    graph, summary = trace_circuit(model, tok, saes, "ioi", n=4, top_k=10, batch_size=4,
                                   edge_influence=1.0, progress=False)
    feats = [d for _, d in graph.nodes(data=True) if d["kind"] == "feature"]
    assert 0 < len(feats) <= 10 and "metric" in graph
    assert all(d["label"].startswith("↑") for d in feats)
    assert summary["feature_nodes"] == len(feats) and summary["edges"] == graph.graph.number_of_edges()
    assert -10 < summary["faithfulness"] < 10
    graph.save(tmp_path / "g")
    assert sc.attribution.FeatureGraph.load(tmp_path / "g") == graph
    saes.save(tmp_path / "saes")
    out = tmp_path / "out"
    rc = main(["trace", "--model", str(tiny_dir("llama")), "--device", "cpu", "--saes",
               str(tmp_path / "saes"), "--task", "sva", "--n", "4", "--ablation", "mean",
               "--influence", "0.9", "--edge-influence", "1.0", "--out", str(out), "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)   # with --json stdout is only the JSON summary
    assert printed["task"] == "sva"
    assert {p.name for p in out.iterdir()} >= {"summary.json", "nodes.csv", "edges.csv",
                                               "featuregraph.json"}
    s = json.loads((out / "summary.json").read_text())
    assert s["task"] == "sva" and s["ablation"] == "mean" and s["feature_nodes"] + s["error_nodes"] > 0
    assert main(["trace", "--model", str(tiny_dir("llama")), "--device", "cpu", "--saes",
                 str(tmp_path / "saes"), "--task", "ioi", "--top-k", "0", "--out",
                 str(tmp_path / "bad")]) == 2 and not (tmp_path / "bad").exists()
    assert_model_clean(model)


def test_bad_inputs(tiny, tmp_path):
    model, tok = tiny
    saes = random_saes(HOOKS, 64, 48)
    with pytest.raises(ConfigError, match="trained on 'gpt2'"):
        trace_circuit(model, tok, random_saes(HOOKS, 64, 48, model_name="gpt2"), "ioi", n=2)
    with pytest.raises(ConfigError, match="d_in=32"):
        trace_circuit(model, tok, random_saes(HOOKS, 32, 48), "ioi", n=2)
    with pytest.raises(GraphError, match="keeps no node"):
        trace_circuit(model, tok, saes, "ioi", n=2, node_threshold=1e9, progress=False)
    nopatch = make_task(tok, "ioi", n=2)
    nopatch.patch = None
    with pytest.raises(TaskError, match="no patch prompts"):
        trace_circuit(model, tok, saes, nopatch, ablation="patch")
    with pytest.raises(ConfigError, match="ablation 'swap'"):
        trace_circuit(model, tok, saes, "ioi", n=2, ablation="swap")
    assert_model_clean(model)


@pytest.fixture(scope="module")
def smol_set(request, smol):
    """The trainers' small SmolLM2 SAEs when the fixture exists, else random ones."""
    try:
        return request.getfixturevalue("smol_saes")
    except pytest.FixtureLookupError:
        return random_saes(["resid.6", "resid.16", "resid.24"], 576, 1024)


@pytest.mark.slow
def test_smollm2_ioi_invariants_and_attribution(smol, smol_set):
    model, tok = smol
    hooks = ab.ordered_hooks(model, smol_set)
    task = make_task(tok, "ioi", n=4, seed=5)
    chunks = ab.chunks(tok, task, 4)
    states = ab.prepare(model, smol_set, chunks, "patch")
    assert float(states[0].metric.mean()) > 2          # SmolLM2 prefers the indirect object
    ev = Evaluator(model, smol_set, states, "patch")    # invariant 4 on real text
    assert ev.f_empty == pytest.approx(patch_metric(model, smol_set, chunks), abs=1e-3)
    assert ev.f_empty < 0
    every = [(h, None, i) for h in hooks for i in range(smol_set[h].cfg.d_sae)]
    every += [(h, None, "err") for h in hooks]
    assert ev.metric(every) == pytest.approx(ev.f_model, abs=1e-3)
    est = attrib_scores(states, hooks)                  # invariant 3 (first order) on real text
    top = [n for n in est.nodes() if n[2] != "err"][:6] + [(hooks[-1], None, "err")]
    alpha = 1e-3
    ex = exact_effects(model, smol_set, states, top, alpha=alpha, progress=False)
    a = torch.tensor([est.effect(n) for n in top]) * alpha
    b = torch.tensor([ex[n] for n in top])
    torch.testing.assert_close(b, a, atol=0.05 * a.abs().max().item(), rtol=0.1)
    assert_model_clean(model)


def test_pruning_rules_on_a_hand_built_graph():
    from saecircuits.attribution import FeatureGraph, prune_edges, prune_nodes, remove_dangling

    g = FeatureGraph()
    effects = {"a/*/1": 5.0, "a/*/2": -3.0, "a/*/err": 1.5, "b/*/3": 1.0, "b/*/4": 0.5}
    for nid, e in effects.items():
        hook, _, feat = nid.split("/")
        g.add_node(nid, kind="error" if feat == "err" else "feature", hook=hook, effect=e)
    g.add_node("metric", kind="metric")
    for u, v, w in [("a/*/1", "b/*/3", 4.0), ("a/*/2", "b/*/3", -0.05), ("b/*/3", "metric", 1.0),
                    ("a/*/err", "metric", 1.5), ("b/*/4", "metric", 0.5)]:
        g.add_edge(u, v, w)
    ids = lambda graph: {n for n, d in graph.nodes(data=True) if d["kind"] != "metric"}
    assert ids(prune_nodes(g, top_k=2)) == {"a/*/1", "a/*/2"}
    assert ids(prune_nodes(g, top_k=3)) == {"a/*/1", "a/*/2", "a/*/err", "b/*/3"}
    assert ids(prune_nodes(g, threshold=1.2)) == {"a/*/1", "a/*/2", "a/*/err"}
    assert ids(prune_nodes(g, influence=0.7)) == {"a/*/1", "a/*/2"}      # 8 of 11 >= 7.7
    assert "metric" in prune_nodes(g, top_k=1)
    thin = prune_edges(g, edge_influence=0.99)
    assert ("a/*/2", "b/*/3") not in thin.edges and ("a/*/1", "b/*/3") in thin.edges
    assert ids(remove_dangling(thin)) == {"a/*/1", "a/*/err", "b/*/3", "b/*/4"}
    with pytest.raises(GraphError, match="keeps no node"):
        prune_nodes(g, threshold=100.0)
    with pytest.raises(ConfigError, match="exactly one"):
        prune_nodes(g, top_k=2, threshold=1.0)
    with pytest.raises(ConfigError, match="influence must be a share"):
        prune_nodes(g, influence=1.5)
