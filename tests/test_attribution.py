"""Attribution engine: design invariants 3 and 4, edges, pruning, trace_circuit and the CLI."""
import json
import math

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
    # mean targets are per token length (issue 13): rank with the mean-ablation estimate
    mean_states = ab.prepare(model, saes, chunks, "mean", ab.dataset_means(model, saes, chunks))
    curve = faithfulness_curve(Evaluator(model, saes, states, "mean"),
                               attrib_scores(mean_states, HOOKS), sizes=(1, 5, 48 * 3))
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
    b = torch.tensor([ex[Node.coerce(n)] for n in top])  # results are keyed by Node
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


# -- issue 13: tracing that means what it says ---------------------------------------------
def _templated_ioi(tok, per=3):
    """IOI prompts from every template (mixed token lengths), with each prompt's template index."""
    from saecircuits.tasks import from_records
    from saecircuits.tasks.ioi import TEMPLATES, ioi_task

    records, template = [], []
    for t_i, t in enumerate(TEMPLATES):
        rows = ioi_task(tok, n=per, seed=t_i, templates=[t]).to_records()
        records += rows
        template += [t_i] * len(rows)
    return from_records(tok, records, name="ioi"), template


def _no_model_pass(monkeypatch):
    from saecircuits.replacement import ReplacementModel

    def boom(*a, **k):
        raise AssertionError("a model pass ran before the check")

    monkeypatch.setattr(ReplacementModel, "run", boom)
    monkeypatch.setattr(ab, "values", boom)


def test_positional_nodes_mean_one_token_per_template(tiny, monkeypatch):
    from saecircuits.tasks.ioi import OBJECTS, PLACES, single_token_names

    model, tok = tiny
    saes = random_saes(HOOKS, 64, 48)
    task, template = _templated_ioi(tok)
    lengths = ab.token_lengths(tok, task.clean)
    assert len(set(lengths)) > 1                     # mixed lengths: refused before any pass
    with monkeypatch.context() as m:
        _no_model_pass(m)
        with pytest.raises(TaskError, match="one token length"):
            trace_circuit(model, tok, saes, task, positional=True, progress=False)
    L = max(set(lengths), key=lengths.count)
    graph, summary = trace_circuit(model, tok, saes, task, positional=True, length=L, top_k=20,
                                   edge_influence=1.0, progress=False)
    assert summary["n"] == lengths.count(L)
    slots = {" " + n for n in single_token_names(tok) + OBJECTS + PLACES}   # the template's slots
    kept = [i for i, n in enumerate(lengths) if n == L]
    ids = tok([task.clean[i] for i in kept])["input_ids"]
    pos_nodes = [d for _, d in graph.nodes(data=True) if d["kind"] in ("feature", "error")]
    assert pos_nodes and all(isinstance(d["pos"], int) for d in pos_nodes)
    for d in pos_nodes:
        assert d["token"] == graph.meta["position_tokens"][d["pos"]]
        for t_i in {template[i] for i in kept}:
            toks = {tok.decode([row[d["pos"]]]) for row, i in zip(ids, kept) if template[i] == t_i}
            assert len(toks) == 1 or toks <= slots, (d, toks)   # one token, or one slot


def test_mean_targets_are_per_length_and_position(tiny):
    model, tok = tiny
    saes = random_saes(HOOKS, 64, 48)
    task, _ = _templated_ioi(tok, per=2)
    chunks = ab.chunks(tok, task, 4)
    means = ab.dataset_means(model, saes, chunks)
    lengths = ab.token_lengths(tok, task.clean)
    assert sorted(means.by_length) == sorted(set(lengths))
    vals = [ab.values(sc.attribution.circuit.check_saes(model, saes), c.clean) for c in chunks]
    h = HOOKS[1]
    L = lengths[0]
    rows = [(ci, b) for ci, c in enumerate(chunks) for b, n in enumerate(ab.lengths_of(c)) if n == L]
    T = chunks[0].valid.shape[1]
    expect = torch.stack([vals[ci][h][0][b, T - L:] for ci, b in rows]).mean(0)
    torch.testing.assert_close(means.by_length[L][h][0], expect)
    st = ab.prepare(model, saes, chunks[:1], "mean", means)[0]
    tgt = st.f[h] + st.delta_f[h]
    b = 1
    Lb = ab.lengths_of(chunks[0])[b]
    torch.testing.assert_close(tgt[b, T - Lb + 1:], means.by_length[Lb][h][0][1:])
    torch.testing.assert_close(tgt[b, T - Lb], st.f[h][b, T - Lb])   # first token keeps clean


def test_one_prompt_trace_defaults_and_early_checks(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    saes = random_saes(HOOKS, 64, 48)
    graph, summary = trace_circuit(model, tok, saes, "ioi", n=1, top_k=10, edge_influence=1.0,
                                   progress=False)
    assert summary["eval_ablation"] == "patch" and summary["n"] == 1
    assert summary["faithfulness"] is not None and torch.isfinite(torch.tensor(summary["faithfulness"]))
    assert summary["evaluation"]["mean"]["faithfulness"] is None   # the mean of one prompt is itself
    assert "F(M) = F(∅)" in summary["evaluation"]["mean"]["error"]
    assert isinstance(summary["warnings"], list) and summary["edge_faithfulness"] is not None
    assert summary["baseline_span"] == pytest.approx(
        abs(summary["metric_clean"] - summary["metric_all_ablated"]) / abs(summary["metric_clean"]))
    g2, s2 = trace_circuit(model, tok, saes, "ioi", n=1, top_k=10, edge_influence=1.0,
                           mean_from="ioi", mean_n=24, progress=False)
    assert s2["evaluation"]["mean"]["faithfulness"] is not None
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"clean_prefix": "A b c d e f g h i j k l m n o p q r s t u v",
                                 "patch_prefix": None, "clean_answer": " x", "patch_answer": " y"})
                     + "\n")
    with monkeypatch.context() as m:
        _no_model_pass(m)
        with pytest.raises(ConfigError, match="F\\(M\\) = F\\(∅\\)"):
            trace_circuit(model, tok, saes, "ioi", n=1, eval_ablation="mean", progress=False)
        with pytest.raises(TaskError, match="reference"):
            trace_circuit(model, tok, saes, "ioi", n=1, eval_ablation="mean",
                          mean_from=str(other), progress=False)
    assert_model_clean(model)


def test_error_nodes_scored_by_exact_patching(setup):
    model, _, saes, _, _, states = setup
    for method in ("attrib", "ig"):
        sc_ = node_scores(model, saes, states, HOOKS, method, steps=4, progress=False)
        errs = [Node.error(h, None) for h in HOOKS]
        ex = exact_effects(model, saes, states, errs, progress=False)
        for nd in errs:
            assert sc_.effect(nd) == pytest.approx(ex[nd], abs=1e-6)
        assert sc_.info["error_method"] == "exact"


def test_invariant9_exact_edge_ablation(setup):
    model, _, saes, _, _, states = setup
    ev = Evaluator(model, saes, states, "patch")
    est = node_scores(model, saes, states, HOOKS, "attrib", progress=False)
    nodes = circuit_by_size(est, 6, errors="all")
    order = {h: i for i, h in enumerate(HOOKS)}
    every = {(u, v) for u in nodes for v in nodes if order[u.hook] < order[v.hook]}
    every |= {(u, Node.metric()) for u in nodes}
    assert ev.edge_metric(nodes, every) == pytest.approx(ev.metric(nodes), abs=1e-4)
    assert ev.edge_metric(nodes, set()) == pytest.approx(ev.f_empty, abs=1e-4)
    assert any(nd.hook == HOOKS[0] for nd in nodes)
    cut = {(u, v) for u, v in every if u.hook != HOOKS[0]}       # remove the first hook's edges
    mid = ev.edge_metric(nodes, cut)
    assert math.isfinite(mid) and abs(mid - ev.metric(nodes)) > 1e-6
    assert_model_clean(model)


def test_trace_cli_per_prompt_and_warnings(tiny, tiny_dir, tmp_path, capsys):
    model, tok = tiny
    saes = random_saes(HOOKS, 64, 48)
    saes.save(tmp_path / "saes")
    out = tmp_path / "pp"
    base = ["trace", "--model", str(tiny_dir("llama")), "--device", "cpu", "--saes",
            str(tmp_path / "saes"), "--task", "ioi", "--top-k", "8", "--edge-influence", "1.0"]
    assert main(base + ["--n", "2", "--per-prompt", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    dist = printed["per_prompt"]["faithfulness"]
    assert dist["n"] + dist["undefined"] == 2
    assert {p.name for p in (out / "prompts").iterdir()} <= {"000", "001"}
    for p in (out / "prompts").iterdir():
        s = json.loads((p / "summary.json").read_text())
        assert s["n"] == 1 and (p / "nodes.csv").exists()
    assert main(base + ["--n", "1", "--ablation", "mean", "--out", str(tmp_path / "bad")]) == 2
    assert "F(M) = F(∅)" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(base + ["--n", "12", "--positional", "--out", str(tmp_path / "bad")]) == 2
    assert "one token length" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(base + ["--n", "1", "--mean-from", str(tmp_path / "nope.jsonl"), "--out",
                        str(tmp_path / "bad")]) == 2


@pytest.mark.slow
def test_smollm2_one_prompt_trace_with_defaults(smol, tmp_path, capsys):
    """Issue 13: `trace` on ONE real IOI prompt with every default exits 0, faithfulness defined
    (patch evaluation by default; the mean of one prompt is reported as undefined, not used)."""
    random_saes(["resid.6", "resid.16", "resid.24"], 576, 1024, model_name="SmolLM2-135M-Instruct"
                ).save(tmp_path / "saes")
    out = tmp_path / "one"
    assert main(["trace", "--saes", str(tmp_path / "saes"), "--task", "ioi", "--n", "1",
                 "--out", str(out), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["n"] == 1 and s["eval_ablation"] == "patch"
    assert math.isfinite(s["faithfulness"]) and math.isfinite(s["edge_faithfulness"])
    assert s["evaluation"]["mean"]["faithfulness"] is None and isinstance(s["warnings"], list)
    assert json.loads((out / "summary.json").read_text())["faithfulness"] == s["faithfulness"]


def _arch_saes(arch, hooks, d_in=64, d_sae=48):
    """Random SAEs of `arch` with non-zero biases and thresholds (so b_dec and θ matter)."""
    gen = torch.Generator().manual_seed(7)
    out = {}
    for i, h in enumerate(hooks):
        k = 8 if arch in ("topk", "batchtopk") else None
        sae = sc.SAE.random(sc.SAEConfig(arch, d_in, d_sae, k=k, hook=h), seed=i)
        with torch.no_grad():
            sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=gen))
            sae.b_enc.copy_(0.02 * torch.randn(d_sae, generator=gen))
            if sae.threshold is not None:
                sae.threshold.copy_(0.02 * torch.rand(d_sae, generator=gen))
        out[h] = sae
    return sc.SAESet(out)


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu", "batchtopk"])
@pytest.mark.parametrize("hooks", [HOOKS, ["resid.0", "mlp.1", "attn.2"]], ids=["resid", "mlp-attn"])
def test_closed_form_edges_equal_the_autograd_path(tiny, arch, hooks):
    """Seeds at x / gradients at the stream in closed form = seeds at f, err (issue 17), for
    every architecture, positional or not, also where a hook does not replace the stream."""
    from saecircuits.attribution import edges as E

    model, tok = tiny
    saes = _arch_saes(arch, hooks)
    assert all(E.has_closed_form(s) for s in saes.values())
    task = make_task(tok, "ioi", n=4, seed=1)
    states = ab.prepare(model, saes, ab.chunks(tok, task, 2), "patch")
    for positional in (False, True):
        scores = attrib_scores(states, hooks, positional=positional)
        kept = [n for n in scores.nodes() if scores.effect(n) != 0][:40]
        kept += [n for n in scores.nodes() if n[2] == "err"]
        assert {n[0] for n in kept} == set(hooks)
        ref = compute_edges(model, saes, states, hooks, kept, positional, seed_batch=5,
                            progress=False, closed_form=False)
        new = compute_edges(model, saes, states, hooks, kept, positional, seed_batch=7,
                            progress=False)
        assert len(ref) > 20 and set(new) <= set(ref)
        if hooks[1] == "mlp.1":     # resid.0 -> attn.2 goes around mlp.1: not cut by it
            assert any(a[0] == "resid.0" and b[0] == "attn.2" for a, b in new)
        scale = max(abs(v) for v in ref.values())
        for k, v in ref.items():
            assert new.get(k, 0.0) == pytest.approx(v, abs=1e-5 * scale, rel=1e-4), (k, v, new.get(k))
    assert_model_clean(model)


def test_bf16_edges_track_fp32_and_bad_precision(setup):
    """The opt-in bf16 edge pass (issue 17) keeps the edge weights (r ≥ 0.99 vs fp32); a bad
    precision or seed_batch is a ConfigError naming the value, before any model pass."""
    from saecircuits.attribution.circuit import trace_config

    model, _, saes, _, _, states = setup
    est = attrib_scores(states, HOOKS)
    kept = est.nodes()[:30] + [n for n in est.nodes() if n[2] == "err"]
    ref = compute_edges(model, saes, states, HOOKS, kept, progress=False)
    got = compute_edges(model, saes, states, HOOKS, kept, progress=False, precision="bf16")
    keys = sorted(ref, key=str)
    pair = torch.tensor([[ref[k] for k in keys], [got.get(k, 0.0) for k in keys]], dtype=torch.float64)
    assert len(keys) > 20 and torch.corrcoef(pair)[0, 1] >= 0.99
    # the math attention kernel (auto under bf16 on CPU) is the same function: fp32 edges agree
    flags = (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled())
    math = compute_edges(model, saes, states, HOOKS, kept, progress=False, math_attention=True)
    assert flags == (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled())
    scale = max(abs(v) for v in ref.values())
    assert set(math) == set(ref)
    for k, v in ref.items():
        assert math[k] == pytest.approx(v, abs=1e-5 * scale, rel=1e-4), k
    with pytest.raises(ConfigError, match="'fp16'"):
        compute_edges(model, saes, states, HOOKS, kept, progress=False, precision="fp16")
    with pytest.raises(ConfigError, match="seed_batch"):
        compute_edges(model, saes, states, HOOKS, kept, progress=False, seed_batch=0)
    with pytest.raises(ConfigError, match="'fp16'"):
        trace_config(edge_precision="fp16")
