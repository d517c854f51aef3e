"""scripts/gpu_check.py runs end to end on CPU (the lead engineer runs it on a GPU)."""
import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_check_smoke_on_cpu(capsys):
    gc = _load()
    rc = gc.main(["--device", "cpu", "--tokens", "2000", "--docs", "120", "--eval-tokens", "300",
                  "--eval-docs", "12", "--skip-own"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "gpu_check: PASS" in out and "FAIL" not in out
    assert "same SAEs: trace node effects" in out and "same SAEs: eval resid.1" in out


def test_gpu_check_compare_flags_a_difference():
    gc = _load()
    a = {"eval resid.0 explained_variance": 0.5, "trace metric_clean": 1.0,
         "trace faithfulness": 0.9, "trace effects": {"resid.0/*/1": 0.3},
         "trace edges": {"resid.0/*/1->metric": 0.3}, "steer feature": "resid.0:1",
         "steer ids": [[1, 2]], "steer logits": [1.0, 2.0]}
    b = dict(a, **{"trace effects": {"resid.0/*/1": 0.31}, "steer ids": [[1, 3]]})
    rows = {r[0]: r[-1] for r in gc.compare(a, b, 1e-3, 0.05, trained=False)}
    assert rows["eval resid.0 explained_variance"] and rows["trace faithfulness"]
    assert not rows["trace node effects (max)"] and not rows["steer generated ids"]
    assert torch.cuda.is_available() or gc.main(["--device", "cuda"]) == 2
