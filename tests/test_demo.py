"""`saecircuits demo` end to end on SmolLM2 (small settings), as a user runs it."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from saecircuits.models import cache_dir
from helpers import subprocess_env

pytestmark = pytest.mark.slow


def test_demo_end_to_end(smol, tmp_path):
    cache = tmp_path / "cache"  # fresh SAE cache; reuse the converted model and tokenized corpus
    cache.mkdir()
    for shared in ("models", "corpus"):
        if (cache_dir() / shared).is_dir():
            (cache / shared).symlink_to(cache_dir() / shared)
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "saecircuits", "demo", "--quick", "--tokens", "8160", "--n", "4",
           "--top-k", "10", "--hooks", "resid.4,resid.23", "--expansion", "2", "--out", str(out), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True,  # bounded by its flags, not a clock
                          env=subprocess_env(SAECIRCUITS_CACHE=str(cache)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # --json: stdout is the summary only

    for task in ("ioi", "parens"):
        circuit = summary["circuits"][task]
        assert math.isfinite(circuit["faithfulness"])
        assert circuit["top_features"], task
        for name in ("graph.json", "nodes.csv", "edges.csv", "graph.svg", "index.html"):
            assert (out / task / name).is_file(), (task, name)
    assert any((out / "dashboards").iterdir())
    # transcoders from the same harvest: one replacement graph per held-out prompt, exported
    tc = summary["transcoders"]
    assert tc is not None and 0 < tc["ev_median"] <= 1 and math.isfinite(tc["ce_loss_score"])
    for task in ("ioi", "parens"):
        rg = summary["replacement_graphs"][task]
        assert 0 <= rg["replacement_score"] <= rg["completeness_score"] <= 1, rg
        assert rg["linearity_error"] < 1e-3 and rg["strongest_path"], rg
        assert rg["features"] <= 1024                       # --quick caps the feature rows
        for name in ("graph.json", "nodes.csv", "index.html"):
            assert (out / f"graph-{task}" / name).is_file(), (task, name)
    steering = summary["steering"]
    assert steering["feature"].split(":")[0] in ("resid.4", "resid.23")
    # the feature is chosen by measured P(')') among circuit and gradient-ranked candidates
    cands = steering["candidates"]
    assert {c["source"] for c in cands} <= {"circuit", "gradient"} and cands
    assert steering["feature"] == max(cands, key=lambda c: c["p_close"])["feature"]
    assert steering["features"][0] == steering["feature"]  # alone, or the first of the best together
    assert steering["results"] and all(r["baseline"] and r["steered"] for r in steering["results"])
    assert math.isfinite(steering["mean_prob_shift"])
    assert "saecircuits serve" in proc.stderr  # the how-to-open line (stdout carries only JSON)
    trained = list((cache / "saes").iterdir())
    assert len(trained) == 1 and (trained[0] / "resid.23" / "sae.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".demo.")]  # no temp dirs left
