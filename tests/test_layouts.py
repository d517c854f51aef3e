"""Non-bottleneck layouts: SAEs on attention and MLP outputs, trained in one harvesting pass
together with a residual SAE and traced in any mix (feature-circuits layout)."""
from __future__ import annotations

import json

from saecircuits.attribution import trace_circuit
from saecircuits.sae import SAESet
from trainers import TrainConfig, train_saes
from helpers import assert_model_clean

TEXTS = [f"Note {i}: Anna met Paul at the station; Paul handed a ticket to Anna. x = {i} * 3\n" * 4
         for i in range(60)]


def test_attn_mlp_resid_one_pass_and_trace(tiny, tmp_path):
    model, tok = tiny
    hooks = ["attn.1", "mlp.1", "resid.1", "mlp.2"]
    cfg = TrainConfig(hooks=hooks, k=8, expansion=2, tokens=4 * 31 * 6, context=32,
                      corpus=TEXTS, eval_tokens=0, out=str(tmp_path / "saes"), progress=False,
                      windows_per_block=8)
    saes = train_saes(model, tok, cfg)
    assert sorted(saes) == sorted(hooks)
    meta = json.loads((tmp_path / "saes" / "train_config.json").read_text())
    assert meta["hooks"] == hooks
    loaded = SAESet.load(tmp_path / "saes", model=model)
    graph, summary = trace_circuit(model, tok, loaded, "ioi", n=4, top_k=10, progress=False)
    assert summary["hooks"] == ["attn.1", "mlp.1", "resid.1", "mlp.2"]   # forward order
    kinds = {d["hook"] for _, d in graph.graph.nodes(data=True) if d["kind"] in ("feature", "error")}
    assert kinds <= set(hooks) and summary["error_nodes"] >= 1
    assert_model_clean(model)
