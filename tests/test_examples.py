"""Every script in examples/ runs as a user would run it (small settings, real SmolLM2)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import subprocess_env

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

IOI_ROWS = [  # our own contrastive file: equal-length clean/patch prompts, single-token names
    ("When Mary and John went to the store, John gave a drink to", " Mary", " John"),
    ("When Anna and Paul went to the park, Paul gave a ball to", " Anna", " Paul"),
    ("When Sarah and Tom went to the beach, Tom gave a towel to", " Sarah", " Tom"),
    ("When Emma and David went to the office, David gave a letter to", " Emma", " David"),
]


def run_example(name: str, *args: str, timeout: int = 600) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=subprocess_env())
    assert proc.returncode == 0, f"{name} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_every_example_is_exercised():
    tested = {"train_saes.py", "ioi_circuit.py", "parens_circuit.py", "steering.py",
              "own_saes_and_task.py", "export_neuronpedia.py"}
    assert {p.name for p in (ROOT / "examples").glob("*.py")} == tested


def test_train_saes_example(tmp_path):
    out = tmp_path / "saes"
    stdout = run_example("train_saes.py", "--hooks", "resid.3", "--tokens", "8160",
                         "--expansion", "1", "--out", str(out))
    assert f"saved to {out}" in stdout
    metrics = json.loads((out / "metrics.json").read_text())["resid.3"]
    assert metrics["l0"] <= 32 and 0 < metrics["explained_variance"] <= 1
    assert (out / "resid.3" / "sae.safetensors").is_file()


def test_ioi_and_parens_examples(smol_saes_dir, tmp_path):
    out = run_example("ioi_circuit.py", "--saes", str(smol_saes_dir), "--n", "8", "--top-k", "20",
                      "--method", "attrib", "--out", str(tmp_path / "ioi"))
    assert "accuracy 1.00" in out and "faithfulness" in out
    assert (tmp_path / "ioi" / "graph.json").is_file() and (tmp_path / "ioi" / "index.html").is_file()
    out = run_example("parens_circuit.py", "--saes", str(smol_saes_dir), "--n", "8", "--top-k", "20",
                      "--out", str(tmp_path / "parens"))
    assert "example clean prompt" in out and "faithfulness" in out
    assert (tmp_path / "parens" / "nodes.csv").is_file()


def test_own_saes_and_task_example(smol_saes_dir, tmp_path):
    task = tmp_path / "my_task.jsonl"
    rows = []
    for prompt, io, s in IOI_ROWS:
        patch = prompt.replace(f", {s[1:]} gave", f", {io[1:]} gave")
        rows.append(json.dumps({"clean_prefix": prompt, "patch_prefix": patch,
                                "clean_answer": io, "patch_answer": s}))
    task.write_text("\n".join(rows) + "\n")
    out = run_example("own_saes_and_task.py", "--saes", str(smol_saes_dir), "--task", str(task),
                      "--top-k", "10", "--out", str(tmp_path / "mine"))
    assert "4 prompts" in out and "faithfulness" in out
    assert (tmp_path / "mine" / "featuregraph.json").is_file()


def test_steering_example(smol_saes_dir, tmp_path):
    result = tmp_path / "steer.json"
    out = run_example("steering.py", "--saes", str(smol_saes_dir), "--parens-hook", "resid.24",
                      "--ioi-hook", "resid.24", "--topic-hook", "resid.6", "--new-tokens", "6",
                      "--json", str(result))
    assert "(a) parens" in out and "(b) IOI" in out and "(c) topic" in out
    data = json.loads(result.read_text())
    assert set(data) >= {"parens", "ioi", "topic"}
    assert all(g["baseline"] and g["steered"] for g in data["topic"]["generations"])


def test_export_neuronpedia_example(smol_saes_dir, tmp_path):
    out = run_example("export_neuronpedia.py", "--saes", str(smol_saes_dir), "--n", "8",
                      "--top-k", "12", "--windows", "16", "--out", str(tmp_path / "exp"))
    graph = json.loads((tmp_path / "exp" / "graph" / "graph.json").read_text())
    assert graph["nodes"] and graph["links"] and "metadata" in graph
    assert (tmp_path / "exp" / "dashboards").is_dir() and "view it" in out
