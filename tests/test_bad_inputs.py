"""Bad-input sweep over the public API and every CLI subcommand.

Each case must raise a `SaecircuitsError` (API) or exit non-zero with a one-line message and no
traceback (CLI), leave the model clean with unchanged logits, and write no partial output.
"""
from __future__ import annotations

import json
import os
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


def test_cli_usage_errors_and_debug(tmp_path, capsys, monkeypatch):
    import runpy

    # `python -m saecircuits` (the __main__ module) with no command: a usage error, exit 2
    # (in process: a subprocess per case costs seconds of imports; test_cli_boundary starts one)
    monkeypatch.setattr(sys, "argv", ["saecircuits"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_module("saecircuits", run_name="__main__", alter_sys=True)
    assert stop.value.code == 2 and "COMMAND" in capsys.readouterr().err
    assert main(["demo", "--model", str(tmp_path / "no-model")]) == 2
    plain = capsys.readouterr().err
    assert "Traceback" not in plain and len(plain.strip().splitlines()) == 1 and "no-model" in plain
    # --debug: the traceback, then the same one-line error and the same exit code (issue 24)
    assert main(["--debug", "demo", "--model", str(tmp_path / "no-model")]) == 2
    debug = capsys.readouterr().err
    assert "Traceback (most recent call last)" in debug and "no-model" in debug
    assert debug.strip().splitlines()[-1].startswith("saecircuits demo: error: ")


# -- issue 15: the reliability sweep ---------------------------------------------------------
TRAIN_TEXTS = [f"def f{i}(x):\n    return (x + {i}) * [j for j in range({i})]\n" * 3
               + f"Mary and John went to store number {i}. John gave a drink to Mary. " * 2
               for i in range(60)]


TRAIN_ARGS = ["--hooks", "resid.0", "--k", "4", "--expansion", "2", "--tokens", "2016", "--context",
              "32", "--eval-tokens", "0", "--quiet"]


def _train_cfg(out, **kw):
    """The TrainConfig of `saecircuits train TRAIN_ARGS --corpus <run dir>/corpus.txt --out OUT`."""
    from trainers import TrainConfig

    base = dict(hooks=["resid.0"], architecture="topk", k=4, expansion=2, tokens=2016, context=32,
                eval_tokens=0, out=str(out), progress=False, checkpoint_every=4,
                corpus=str(_CORPUS[0]) if _CORPUS else None)
    return TrainConfig(**{**base, **kw})


_CORPUS: list = []


@pytest.fixture(scope="module")
def finished_run(tiny, tmp_path_factory):
    """A finished tiny training run (its checkpoint is at the last step) and its corpus file."""
    from trainers import train_saes

    root = tmp_path_factory.mktemp("run")
    (root / "corpus.txt").write_text("\n\n".join(TRAIN_TEXTS))
    _CORPUS[:] = [root / "corpus.txt"]
    out = root / "out"
    train_saes(*tiny, _train_cfg(out))
    return out


def _sae_dir(root, name: str, hook: str = "resid.0", **cfg_changes):
    """A copy of a valid random SAE directory with cfg.json fields changed (raw JSON text allowed)."""
    folder = root / name / hook
    sc.SAE.random(sc.SAEConfig("topk", 64, 128, k=8, hook=hook)).save(folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg.update(cfg_changes)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def _pickled_model(root, tiny_dir):
    import shutil

    folder = root / "pickled"
    shutil.copytree(tiny_dir, folder)
    (folder / "model.safetensors").unlink()

    class Evil:
        def __reduce__(self):
            return (print, ("PICKLE RAN",))
    torch.save({"x": Evil()}, folder / "pytorch_model.bin")
    return folder


def reliability_api_cases(tmp_path, model, tok, saes_dir, finished, tiny_dir):
    """(name, callable, exception type, text the message must contain)."""
    import shutil

    from saecircuits.attribution import trace_circuit
    from saecircuits.errors import (ConfigError, InterventionError, ModelLoadError, SAEFormatError,
                                    TaskError, TrainingError)
    from saecircuits.fileio import check_output_dir
    from saecircuits.steering import Intervention, steer
    from saecircuits.tasks import load_jsonl
    from trainers import train_saes

    saes = sc.SAESet.load(saes_dir)
    work = tmp_path / "inputs"
    work.mkdir()
    bad_utf8 = work / "bad.jsonl"
    bad_utf8.write_bytes(b'{"clean_prefix": "caf\xe9 \xff"}\n')
    nested = work / "nested.jsonl"
    nested.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    long_row = work / "long.jsonl"
    long_row.write_text(json.dumps({"clean_prefix": "one two " * 200, "patch_prefix": None,
                                    "clean_answer": " a", "patch_answer": " b"}) + "\n")
    one_token = work / "one.jsonl"
    one_token.write_text(json.dumps({"clean_prefix": "Hi", "patch_prefix": None,
                                     "clean_answer": " a", "patch_answer": " b"}) + "\n")
    huge_line = work / "huge.jsonl"
    huge_line.write_text(json.dumps({"clean_prefix": "x" * 1_000_000}) + "\n")
    nested_cfg = _sae_dir(work, "nested_cfg")
    (nested_cfg / "cfg.json").write_text("[" * 100_000 + "]" * 100_000)
    big = _sae_dir(work, "big", d_sae=10**12)
    nan_scale = work / "nan_scale" / "resid.0"
    sc.SAE.random(sc.SAEConfig("topk", 64, 128, k=8, hook="resid.0")).save(nan_scale)
    (nan_scale / "cfg.json").write_text((nan_scale / "cfg.json").read_text().replace(
        '"normalization_scale": null', '"normalization_scale": NaN'))
    assert "NaN" in (nan_scale / "cfg.json").read_text()
    notadict = _sae_dir(work, "notadict", metadata="notadict")
    _sae_dir(work, "moved", hook="resid.2")
    (work / "moved" / "resid.2").rename(work / "moved" / "resid.0")  # cfg says resid.2
    a_file = work / "a_file"
    a_file.write_text("x")
    pickled = _pickled_model(work, tiny_dir)
    truncated = work / "truncated"
    shutil.copytree(finished, truncated)
    data = (truncated / "checkpoint.safetensors").read_bytes()
    (truncated / "checkpoint.safetensors").write_bytes(data[: len(data) // 2])
    no_meta = work / "no_meta"
    shutil.copytree(finished, no_meta)
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(no_meta / "checkpoint.safetensors")), str(no_meta / "checkpoint.safetensors"))
    finished_copy = work / "finished"
    shutil.copytree(finished, finished_copy)
    set_1 = lambda value: [Intervention("resid.0", 1, "set", value)]  # noqa: E731
    cases = [
        ("bad UTF-8 in a task file", lambda: load_jsonl(tok, bad_utf8), TaskError, "UTF-8"),
        ("deeply nested JSON task line", lambda: load_jsonl(tok, nested), TaskError, "nested"),
        ("a 1 MB task line", lambda: load_jsonl(tok, huge_line), TaskError, "characters"),
        ("task prompt longer than the context",
         lambda: trace_circuit(model, tok, saes, str(long_row), ablation="zero", n=1), ConfigError, "128"),
        ("one-token task prompts",
         lambda: trace_circuit(model, tok, saes, str(one_token), ablation="zero", n=1), TaskError, "'Hi'"),
        ("deeply nested cfg.json", lambda: sc.SAE.load(nested_cfg), SAEFormatError, "nested"),
        ("cfg.json d_sae 1e12", lambda: sc.SAE.load(big), SAEFormatError, "1000000000000"),
        ("normalization_scale NaN", lambda: sc.SAE.load(nan_scale), SAEFormatError, "nan"),
        ("metadata not a dict", lambda: sc.SAE.load(notadict), SAEFormatError, "notadict"),
        ("cfg.json hook differs from its directory", lambda: sc.SAESet.load(work / "moved"),
         SAEFormatError, "resid.2"),
        ("pickled pytorch_model.bin", lambda: sc.load_model(str(pickled), device="cpu"),
         ModelLoadError, "pickle"),
        ("output dir is a file", lambda: check_output_dir(a_file), ConfigError, "a_file"),
        ("output dir under a file", lambda: check_output_dir(a_file / "out"), ConfigError, "a_file"),
        ("train batch 0", lambda: _train_cfg(work / "o", batch=0), ConfigError, "0"),
        ("train batch -7", lambda: _train_cfg(work / "o", batch=-7), ConfigError, "-7"),
        ("train expansion 0", lambda: _train_cfg(work / "o", expansion=0), ConfigError, "expansion"),
        ("train lr nan", lambda: _train_cfg(work / "o", lr=float("nan")), ConfigError, "nan"),
        ("resume a finished run",
         lambda: train_saes(model, tok, _train_cfg(finished_copy, resume=True)),
         ConfigError, "already finished"),
        ("resume a truncated checkpoint",
         lambda: train_saes(model, tok, _train_cfg(truncated, resume=True)),
         TrainingError, "unreadable"),
        ("resume a checkpoint without metadata",
         lambda: train_saes(model, tok, _train_cfg(no_meta, resume=True)),
         TrainingError, "saecircuits"),
        ("steering value 1e38", lambda: steer(model, saes, PROMPTS, set_1(1e38), 3), InterventionError, "1e+38"),
        ("steering value inf", lambda: steer(model, saes, PROMPTS, set_1(float("inf")), 3),
         InterventionError, "inf"),
        ("interventions passed as a string", lambda: steer(model, saes, PROMPTS, "resid.0:1=1", 3),
         InterventionError, "resid.0:1=1"),
        ("steering prompt longer than the context",
         lambda: steer(model, saes, ["word " * 300], set_1(1.0), 3), ConfigError, "128"),
        ("dashboards with zero windows",
         lambda: sc.write_dashboards(model, tok, saes, [("resid.0", 1)], ["some text"], work / "d",
                                     max_windows=0), ConfigError, "max_windows"),
        ("training windows longer than the context",
         lambda: train_saes(model, tok, _train_cfg(work / "long", context=1000)), ConfigError, "128"),
        ("steering prompt of 1M characters",
         lambda: steer(model, saes, ["x" * 1_000_000], set_1(1.0), 3), ConfigError, "1,000,000"),
    ]
    if not torch.cuda.is_available():
        cases.append(("device cuda without CUDA", lambda: sc.load_model(str(tiny_dir), device="cuda"),
                      ModelLoadError, "'cuda'"))
    return cases


def _listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_reliability_api_sweep(tiny, tiny_dir, tiny_set, finished_run, tmp_path, capsys):
    model, tok = tiny
    inputs = encode_inputs(tok, PROMPTS)
    before = sc.spliced_logits(model, None, inputs)
    cases = reliability_api_cases(tmp_path, model, tok, tiny_set, finished_run, tiny_dir("llama"))
    files = _listing(tmp_path)
    for name, call, kind, text in cases:
        with pytest.raises(kind) as info:
            call()
        message = str(info.value)
        assert "\n" not in message.strip(), f"{name}: {message!r}"
        assert text in message, f"{name}: {message!r} does not name {text!r}"
        assert "weights_only=False" not in message, f"{name}: unsafe advice in {message!r}"
        assert_model_clean(model)
        assert _listing(tmp_path) == files, f"{name} left files behind"
    assert "PICKLE RAN" not in capsys.readouterr().out
    assert torch.equal(sc.spliced_logits(model, None, inputs), before)


def test_failed_first_training_run_leaves_no_directory(tiny, tmp_path, monkeypatch):
    """A run that fails after creating --out (here: diverging at its first step) removes it."""
    from saecircuits.errors import TrainingError
    from trainers import train_saes
    from trainers.loop import Trainer

    monkeypatch.setattr(Trainer, "step", lambda self, x, y, step: {"fvu": float("nan")})
    with pytest.raises(TrainingError, match="not finite"):
        train_saes(*tiny, _train_cfg(tmp_path / "out", corpus=None), corpus=TRAIN_TEXTS)
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_files_of_a_killed_write_are_removed_on_the_next_run(tiny, tmp_path):
    from trainers import train_saes

    out = tmp_path / "out"
    train_saes(*tiny, _train_cfg(out, stop_at_step=2, corpus=None), corpus=TRAIN_TEXTS)
    dead = 2 ** 22 + 12345  # above any pid this test machine hands out
    debris = [out / f".checkpoint.safetensors.p{dead}.abcd_123.tmp",
              out / ".checkpoint.safetensors.xyz12345.tmp",  # an older release's name (no pid)
              out / "resid.0" / f".sae.safetensors.p{dead}.q1234567.tmp"]
    for path in debris:
        path.write_bytes(b"\0" * 1024)
    live = out / f".cfg.json.p{os.getpid()}.live1234.tmp"  # a write still in progress is kept
    live.write_text("{}")
    foreign = out / ".notes.tmp"  # not named like ours: never touched
    foreign.write_text("x")
    train_saes(*tiny, _train_cfg(out, resume=True, corpus=None), corpus=TRAIN_TEXTS)
    assert not any(p.exists() for p in debris)
    assert live.exists() and foreign.exists()


def test_output_dir_checks_create_nothing(tmp_path):
    from saecircuits.errors import ConfigError
    from saecircuits.fileio import check_output_dir

    assert check_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ConfigError, match="full.*not empty"):
        check_output_dir(tmp_path / "full", overwrite=False)
    check_output_dir(tmp_path / "full", overwrite=True)
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(ConfigError, match="not writable"):
            check_output_dir(tmp_path / "ro" / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) in (["full"], ["full", "ro"])


def reliability_cli_cases(tmp_path, model, saes_dir, finished, pickled):
    """(argv, text the one-line message must contain)."""
    work = tmp_path / "cli-inputs"
    work.mkdir()
    a_file = work / "a_file"
    a_file.write_text("x")
    bad_prompts = work / "prompts.txt"
    bad_prompts.write_bytes(b"hello \xff\xfe world\n")
    bad_task = work / "task.jsonl"
    bad_task.write_bytes(b'{"clean_prefix": "\xff"}\n')
    out = str(tmp_path / "out")
    m = ["--model", model]
    s = ["--saes", str(saes_dir)]
    steer = ["steer", *m, *s, "--prompt", "hi"]
    trace = ["trace", *m, *s, "--task", "ioi"]
    return [
        (["train", *m, "--batch", "0", "--out", out], "'0'"),
        (["train", *m, "--batch", "-7", "--out", out], "'-7'"),
        (["train", *m, "--expansion", "0", "--out", out], "'0'"),
        (["train", *m, "--lr", "nan", "--out", out], "'nan'"),
        (["train", *m, "--hooks", "resid.0", "--out", str(a_file)], "a_file"),
        (["train", *m, *TRAIN_ARGS, "--resume", "--corpus", str(finished.parent / "corpus.txt"),
          "--out", str(finished)], "already finished"),
        (["dashboards", *m, *s, "--features", "resid.0:1", "--windows", "0", "--out", out], "'0'"),
        (["dashboards", *m, *s, "--features", "resid.0:1", "--out", str(a_file / "x")], "a_file"),
        ([*trace, "--method", "bogus", "--out", out], "'bogus'"),
        ([*trace, "--top-k", "0", "--out", out], "'0'"),
        ([*trace, "--steps", "-1", "--out", out], "'-1'"),
        ([*trace, "--out", str(a_file)], "a_file"),
        ([*trace, "--out", str(a_file / "sub")], "a_file"),
        (["trace", *m, *s, "--task", str(bad_task), "--out", out], "UTF-8"),
        ([*steer, "--clamp", "resid.0:1=1e38"], "1e+38"),
        ([*steer, "--clamp", "resid.0:1=nan"], "nan"),
        (["steer", *m, *s, "--prompts", str(bad_prompts), "--clamp", "resid.0:1=1"], "UTF-8"),
        (["steer", *m, *s, "--prompt", "word " * 300, "--clamp", "resid.0:1=1"], "128"),
        ([*steer, "--clamp", "resid.0:1=1", "--max-new-tokens", "0"], "'0'"),
        ([*steer, "--clamp", "resid.0:1=1", "--top-p", "2"], "'2'"),
        (["steer", "--model", str(pickled), *s, "--prompt", "hi", "--clamp", "resid.0:1=1"], "pickle"),
        (["export", str(saes_dir), "--out", str(a_file)], "a_file"),
        (["serve", str(saes_dir), "--port", "70000"], "'70000'"),
        (["demo", "--expansion", "0"], "'0'"),
        (["eval", *m, *s, "--tokens", "0"], "'0'"),
        (["dashboards", *m, *s, "--features", "resid.0:1", "--context", "1000", "--out", out], "128"),
        (["train", *m, "--hooks", "resid.0", "--context", "1000", "--out", out], "128"),
    ] + ([] if torch.cuda.is_available() else [(["steer", *m, *s, "--prompt", "hi", "--clamp",
                                                 "resid.0:1=1", "--device", "cuda"], "'cuda'")])


def test_reliability_cli_sweep(tiny, tiny_dir, tiny_set, finished_run, tmp_path, capsys):
    model, tok = tiny
    inputs = encode_inputs(tok, PROMPTS)
    before = sc.spliced_logits(model, None, inputs)
    pickled = _pickled_model(tmp_path, tiny_dir("llama"))
    cases = reliability_cli_cases(tmp_path, str(tiny_dir("llama")), tiny_set, finished_run, pickled)
    files = _listing(tmp_path)
    for argv, text in cases:
        code = _exit_code(argv)
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert code == 2, f"{argv[:6]}: exit {code}: {err!r}"
        assert err.startswith(f"saecircuits {argv[0]}: error:"), f"{argv[:6]}: {err!r}"
        assert len(err.splitlines()) == 1 and "Traceback" not in err, f"{argv[:6]}: {err!r}"
        assert text in err, f"{argv[:6]}: {err!r} does not name {text!r}"
        assert "weights_only=False" not in err and "PICKLE RAN" not in captured.out
        assert _listing(tmp_path) == files, f"{argv[:6]} left files behind"
    assert torch.equal(sc.spliced_logits(model, None, inputs), before)


def _exit_code(argv) -> int:
    """main(argv)'s exit status, whether it returns it or argparse exits."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code
