"""Export a real traced circuit (trace_circuit on the tiny model) and load it back."""
from __future__ import annotations

import json

import pytest

from saecircuits.attribution import trace_circuit
from saecircuits.export.dot import TOP_NODES, top_nodes
from saecircuits.export import export_graph, graph_json, load_graph, read_csv, read_node_link
from saecircuits.models import unwrap
from saecircuits.sae import SAE, SAEConfig, SAESet


@pytest.fixture(scope="module")
def traced(tiny):
    model, tok = tiny
    d = unwrap(model).config.hidden_size
    saes = SAESet({h: SAE.random(SAEConfig("topk", d, 48, k=6, hook=h), seed=i)
                   for i, h in enumerate(["resid.0", "mlp.1", "resid.2"])})
    graph, summary = trace_circuit(model, tok, saes, "ioi", n=8, top_k=20, positional=True, length="common",
                                   batch_size=8, progress=False)
    return graph, summary, saes


def test_export_of_a_traced_circuit_round_trips(tiny, traced, tmp_path):
    graph, summary, _ = traced
    assert len(graph.feature_nodes()) > 0 and graph.graph.number_of_edges() > 0
    result = export_graph(graph, tmp_path / "e", tokenizer=tiny[1])
    assert result["task"] == "ioi" and result["faithfulness"] == summary["faithfulness"]
    assert len(result["prompt_tokens"]) > 5
    assert "".join(result["prompt_tokens"]) == graph.meta["prompt"]
    assert "prompt_tokens" not in graph.meta  # the graph itself is untouched
    assert load_graph(tmp_path / "e") == graph
    assert read_node_link(tmp_path / "e" / "graph.nodelink.json") == graph
    assert read_csv(tmp_path / "e", graph.meta) == graph
    data = json.loads((tmp_path / "e" / "graph.json").read_text())
    assert data == json.loads(json.dumps(graph_json(
        graph.__class__(graph.graph, {**graph.meta, "prompt_tokens": result["prompt_tokens"]}))))
    logits = [n for n in data["nodes"] if n["feature_type"] == "logit"]
    # circuit-tracer's convention: the logit row sits one above the model's last layer
    n_layers = unwrap(tiny[0]).config.num_hidden_layers
    assert len(logits) == 1 and logits[0]["layer"] == str(n_layers + 1)
    assert all(int(n["layer"]) < n_layers for n in data["nodes"]
               if n["layer"] != "E" and not n["is_target_logit"])
    svg = (tmp_path / "e" / "graph.svg").read_text()
    assert svg.count('class="node"') == len(top_nodes(graph)) == min(len(graph), TOP_NODES + 1)
