"""Bad-input sweep over the public API and every CLI subcommand.

Each case must raise a `SaecircuitsError` (API) or exit non-zero with a one-line message and no
traceback (CLI), leave the model clean with unchanged logits, and write no partial output.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import saecircuits as sc
from saecircuits.cli import main
from saecircuits.errors import SaecircuitsError
from saecircuits.splice import encode_inputs
from helpers import assert_model_clean

PROMPTS = ["The cat sat on the", "print(len(x"]


@pytest.fixture(scope="module")
def tiny_set(tiny, tmp_path_factory):
    """A saved random SAE set for the tiny model (hooks resid.0, resid.2)."""
    folder = tmp_path_factory.mktemp("bad") / "saes"
    sc.SAESet({h: sc.SAE.random(sc.SAEConfig("topk", 64, 128, k=8, hook=h), seed=i)
               for i, h in enumerate(["resid.0", "resid.2"])}).save(folder)
    return folder


def _write_bad_jsonl(tmp_path, rows: list[str]):
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def api_cases(tmp_path, model, tok, saes_dir):
    """(name, callable) pairs; each must raise a SaecircuitsError."""
    from saecircuits.attribution import FeatureGraph
    from saecircuits.export import export_graph
    from saecircuits.formats import load_sae
    from saecircuits.steering import Intervention, steer
    from saecircuits.tasks import load_jsonl, make_task
    from trainers import TrainConfig

    saes = sc.SAESet.load(saes_dir)
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    ok_row = json.dumps({"clean_prefix": "When Mary and John went out, John gave it to",
                         "patch_prefix": "When Mary and John went out, Mary gave it to",
                         "clean_answer": " Mary", "patch_answer": " John"})
    uneven = json.dumps({"clean_prefix": "A B C", "patch_prefix": "A B C D E F",
                         "clean_answer": " x", "patch_answer": " y"})
    return [
        ("unknown model name", lambda: sc.load_model(str(tmp_path / "no-model"))),
        ("bad dtype", lambda: sc.load_model(None, dtype="float33")),
        ("unknown hook point", lambda: sc.resolve(model, "resid.99")),
        ("hook name of wrong type", lambda: sc.resolve(model, 7)),
        ("unknown SAE architecture", lambda: sc.SAEConfig("gated", 64, 128)),
        ("k larger than d_sae", lambda: sc.SAEConfig("topk", 64, 128, k=129)),
        ("k zero", lambda: sc.SAEConfig("topk", 64, 128, k=0)),
        ("SAE input of wrong width", lambda: saes["resid.0"].encode(torch.zeros(2, 65))),
        ("SAE input of integer dtype", lambda: saes["resid.0"].encode(torch.zeros(2, 64, dtype=torch.long))),
        ("missing SAE set", lambda: sc.SAESet.load(tmp_path / "nowhere")),
        ("SAE d_in differs from hook width",
         lambda: sc.SAESet({"resid.1": sc.SAE.random(sc.SAEConfig("relu", 32, 64))}).check(model)),
        ("splice with no SAEs", lambda: sc.splice(model, {})),
        ("empty prompt list", lambda: encode_inputs(tok, [])),
        ("unknown SAE file format", lambda: load_sae(saes_dir / "resid.0", format="onnx")),
        ("unknown task", lambda: make_task(tok, "nonsense")),
        ("task with zero prompts", lambda: make_task(tok, "ioi", n=0)),
        ("JSONL with invalid JSON", lambda: load_jsonl(tok, _write_bad_jsonl(tmp_path, [ok_row, "{oops"]))),
        ("JSONL clean/patch lengths differ", lambda: load_jsonl(tok, _write_bad_jsonl(tmp_path, [uneven]))),
        ("empty JSONL", lambda: load_jsonl(tok, _write_bad_jsonl(tmp_path, [""]))),
        ("feature index out of range",
         lambda: steer(model, saes, PROMPTS, [Intervention("resid.0", 999, "set", 1.0)], 3)),
        ("unknown steering mode",
         lambda: steer(model, saes, PROMPTS, [Intervention("resid.0", 1, "twist", 1.0)], 3)),
        ("non-finite steering value",
         lambda: steer(model, saes, PROMPTS, [Intervention("resid.0", 1, "set", float("nan"))], 3)),
        ("steering a hook without an SAE",
         lambda: steer(model, saes, PROMPTS, [Intervention("resid.1", 1, "set", 1.0)], 3)),
        ("max_new_tokens zero", lambda: steer(model, saes, PROMPTS, [Intervention("resid.0", 1, "set", 1.0)], 0)),
        ("corrupt graph file", lambda: FeatureGraph.load(corrupt)),
        ("export into a non-empty directory", lambda: export_graph(FeatureGraph(), existing)),
        ("training with no hooks", lambda: TrainConfig(hooks=[])),
        ("training with negative tokens", lambda: TrainConfig(hooks=["resid.0"], tokens=-5)),
        ("training an unknown architecture", lambda: TrainConfig(hooks=["resid.0"], architecture="gated")),
    ]


def test_api_bad_inputs(tiny, tiny_set, tmp_path):
    model, tok = tiny
    inputs = encode_inputs(tok, PROMPTS)
    before = sc.spliced_logits(model, None, inputs)
    cases = api_cases(tmp_path, model, tok, tiny_set)
    assert len(cases) >= 25
    for name, call in cases:
        with pytest.raises(SaecircuitsError) as info:
            call()
        message = str(info.value)
        assert message and "\n" not in message.strip(), f"{name}: unclear message {message!r}"
        assert_model_clean(model)
    assert torch.equal(sc.spliced_logits(model, None, inputs), before)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == \
        ["corrupt.json", "existing", "task.jsonl"], "a failed call left files behind"
    assert [p.name for p in (tmp_path / "existing").iterdir()] == ["keep.txt"]


def cli_cases(tmp_path, tiny_dir, saes_dir):
    model = str(tiny_dir)
    out = str(tmp_path / "out")
    return [
        ["demo", "--model", str(tmp_path / "no-model")],
        ["steer", "--model", model, "--saes", str(tmp_path / "nope"), "--prompt", "hi"],
        ["steer", "--model", model, "--saes", str(saes_dir), "--prompt", "hi", "--clamp", "resid.0:99999=1"],
        ["steer", "--model", model, "--saes", str(saes_dir), "--prompt", "hi", "--clamp", "garbage"],
        ["steer", "--model", model, "--saes", str(saes_dir), "--prompt", "hi", "--clamp", "resid.0:1=1",
         "--max-new-tokens", "0"],
        ["export", str(tmp_path / "nope"), "--out", out],
        ["dashboards", "--model", model, "--saes", str(tmp_path / "nope"), "--features", "resid.0:1", "--out", out],
        ["dashboards", "--model", model, "--saes", str(saes_dir), "--features", "resid.0:abc", "--out", out],
        ["serve", str(tmp_path / "nope")],
        ["train", "--model", model, "--hooks", "resid.99", "--tokens", "1000", "--out", out],
        ["eval", "--model", model, "--saes", str(tmp_path / "nope")],
        ["trace", "--model", model, "--saes", str(saes_dir), "--task", "nonsense", "--out", out],
        ["trace", "--model", model, "--saes", str(tmp_path / "nope"), "--task", "ioi", "--out", out],
    ]


def test_cli_bad_inputs_exit_cleanly(tiny_dir, tiny_set, tmp_path, capsys):
    cases = cli_cases(tmp_path, tiny_dir("llama"), tiny_set)
    for argv in cases:
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2, f"{argv}: exit {code}"
        assert err.startswith(f"saecircuits {argv[0]}: error:"), f"{argv}: {err!r}"
        assert "Traceback" not in err and len(err.splitlines()) == 1, f"{argv}: {err!r}"
        assert not (tmp_path / "out").exists(), f"{argv} left a partial output directory"


def test_cli_usage_errors_and_debug(tiny_dir, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "saecircuits", *a], capture_output=True, text=True)
    no_command = run()
    assert no_command.returncode == 2 and "COMMAND" in no_command.stderr
    plain = run("demo", "--model", str(tmp_path / "no-model"))
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert len(plain.stderr.strip().splitlines()) == 1 and "no-model" in plain.stderr
    debug = run("--debug", "demo", "--model", str(tmp_path / "no-model"))
    assert debug.returncode != 0 and "Traceback" in debug.stderr
