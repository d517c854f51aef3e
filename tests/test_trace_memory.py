"""Streamed tracing (issue 15, finding 1): chunk states recomputed on demand give the same
scores, graph and summary as states held in a list, and a chunk is capped by a token budget."""
from __future__ import annotations

import pytest
import torch

import saecircuits as sc
from saecircuits.attribution import ablation as ab
from saecircuits.attribution import trace_circuit
from saecircuits.attribution.circuit import TraceConfig, chunk_rows
from saecircuits.attribution.nodes import node_scores
from saecircuits.attribution.stream import LazyState, LazyStates
from saecircuits.errors import ConfigError
from saecircuits.replacement import bind
from saecircuits.tasks import make_task

HOOKS = ["resid.0", "mlp.1", "resid.2"]


def _saes():
    return sc.SAESet({h: sc.SAE.random(sc.SAEConfig("topk", 64, 48, k=8, hook=h), seed=20 + i)
                      for i, h in enumerate(HOOKS)})


def test_chunk_rows_caps_padded_tokens():
    assert chunk_rows(TraceConfig(batch_size=32, chunk_tokens=512), 100) == 5
    assert chunk_rows(TraceConfig(batch_size=4, chunk_tokens=512), 100) == 4
    assert chunk_rows(TraceConfig(batch_size=32, chunk_tokens=50), 365) == 1  # never below 1
    for bad in (0, -3, 1.5, True):
        with pytest.raises(ConfigError, match="chunk_tokens"):
            chunk_rows(TraceConfig(chunk_tokens=bad), 10)


@pytest.mark.parametrize("method", ["attrib", "ig", "exact"])
def test_lazy_states_match_prepared_list(tiny, method):
    model, tok = tiny
    rm = bind(model, _saes())
    task = make_task(tok, "ioi", n=6, seed=1)
    chunks = ab.chunks(tok, task, 2)
    held = ab.prepare(rm, chunks, "patch", seed=3)
    lazy = LazyStates(rm, chunks, "patch", seed=3)
    a = node_scores(rm, held, HOOKS, method, positional=True, steps=2, progress=False)
    b = node_scores(rm, lazy, HOOKS, method, positional=True, steps=2, progress=False)
    for h in HOOKS:
        torch.testing.assert_close(b.feature_effect[h], a.feature_effect[h], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b.error_effect[h], a.error_effect[h], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b.feature_act[h], a.feature_act[h], atol=1e-5, rtol=1e-5)
    assert b.metric_clean == pytest.approx(a.metric_clean, abs=1e-5)
    assert any(bool(v.abs().sum() > 0) for v in b.feature_effect.values())
    # the sequence keeps only token ids and each chunk's [B] metric, never a chunk's tensors
    assert set(vars(lazy)) == {"rm", "chunks", "ablation", "means", "seed", "metrics"}
    st = lazy[1]
    assert isinstance(st, LazyState) and st._full is None and st._clean is None
    torch.testing.assert_close(st.delta_f[HOOKS[0]], held[1].delta_f[HOOKS[0]])


def test_token_budget_keeps_the_trace(tiny):
    """One prompt per chunk (chunk_tokens below two prompts) = the whole task in one chunk."""
    model, tok = tiny
    saes = _saes()
    T = ab.chunks(tok, make_task(tok, "ioi", n=4, seed=0), 4)[0].clean["input_ids"].shape[1]
    opts = dict(n=4, top_k=8, steps=2, edge_influence=1.0, progress=False, ablation="patch",
                eval_ablation="mean")
    g1, s1 = trace_circuit(model, tok, saes, "ioi", batch_size=4, **opts)
    g2, s2 = trace_circuit(model, tok, saes, "ioi", batch_size=4, chunk_tokens=T, **opts)
    for key in ("metric_clean", "accuracy_clean", "metric_all_ablated", "faithfulness",
                "completeness"):
        assert s2[key] == pytest.approx(s1[key], abs=1e-5), key
    assert s2["feature_nodes"] == s1["feature_nodes"] > 0 and s2["edges"] == s1["edges"]
    w1 = {(e["source"], e["target"]): e["weight"] for e in g1.to_dict()["edges"]}
    w2 = {(e["source"], e["target"]): e["weight"] for e in g2.to_dict()["edges"]}
    assert set(w1) == set(w2)
    for k in w1:
        assert w2[k] == pytest.approx(w1[k], abs=1e-5)
