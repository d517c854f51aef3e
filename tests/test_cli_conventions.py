"""CLI conventions (issue 24): --version, exit code 2 for every failure, unknown flags named with
their subcommand, and no temporary directory left by a demo killed with SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

from saecircuits import cli

REPO = Path(__file__).resolve().parents[1]


def test_version_comes_from_the_package_metadata(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"saecircuits {metadata.version('saecircuits')}"


@pytest.mark.parametrize("argv, command, flag", [
    (["convert", "x", "--to", "saelens", "--out", "o", "--bogus"], "convert", "--bogus"),
    (["convert", "x", "--bogus"], "convert", "--bogus"),            # required flags missing too
    (["trace", "--bogus"], "trace", "--bogus"),
    (["trace", "--saes", "s", "--task", "ioi", "--out", "o", "--bogus=3"], "trace", "--bogus=3"),
    (["demo", "--quick", "--nope"], "demo", "--nope"),
])
def test_unknown_flags_name_the_subcommand_and_the_flag(argv, command, flag, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"saecircuits {command}: error: unrecognized arguments: {flag}"), err


def test_missing_required_flags_are_still_named(capsys):
    assert cli.main(["trace", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert "required: --saes, --task, --out" in err


def test_debug_failures_exit_2_with_the_traceback():
    done = subprocess.run([sys.executable, "-m", "saecircuits", "--debug", "convert",
                           "/nonexistent-saes", "--to", "saelens", "--out", "/tmp/never"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("saecircuits convert: error: ")


def _tiny_model(folder: Path, tok) -> Path:
    import torch
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512)
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _corpus(folder: Path) -> Path:
    """A .jsonl corpus of 4,000 short documents (~150,000 tokens)."""
    path = folder / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": f"Story {i}: Mary and John went to the market, "
                                                f"and John gave a red apple to Mary.\ndef f{i}(x):"
                                                f"\n    return x * {i}\n"}) + "\n"
                            for i in range(4000)))
    return path


def _wait_for(predicate, proc, what: str, limit: float = 600.0):
    """Poll until `predicate()`; fail if the process ends first (the limit only guards a hang)."""
    end = time.monotonic() + limit
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process ended (code {proc.returncode}) before {what}:\n{err[-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"no {what} after {limit:.0f} s")
        time.sleep(0.05)


def test_a_demo_killed_with_sigterm_leaves_no_temporary_directory(tiny, tmp_path):
    _, tok = tiny
    model_dir = _tiny_model(tmp_path / "tiny", tok)
    corpus = _corpus(tmp_path)
    cache = tmp_path / "cache"
    saes = cache / "saes"
    cmd = [sys.executable, "-m", "saecircuits", "demo", "--model", str(model_dir), "--device", "cpu",
           "--quick", "--hooks", "resid.0,resid.2", "--expansion", "2", "--k", "4", "--corpus",
           str(corpus), "--out", str(tmp_path / "demo")]
    env = {**os.environ, "SAECIRCUITS_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    temps = lambda: [p for p in saes.iterdir() if ".tmp" in p.name] if saes.is_dir() else []
    _wait_for(lambda: temps(), proc, "the SAE training's temporary directory")
    assert not (saes / temps()[0].name.split(".")[1]).exists()   # training has not finished
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 143, err[-2000:]
    assert "saecircuits demo: terminated" in err
    assert list(saes.iterdir()) == [], list(saes.iterdir())        # no temp, no half set
    assert not (tmp_path / "demo").exists()


def test_a_train_killed_with_sigterm_leaves_no_temporary_file(tiny, tiny_dir, tmp_path):
    corpus = _corpus(tmp_path)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "saecircuits", "train", "--model", str(tiny_dir("llama")),
           "--device", "cpu", "--hooks", "resid.0,resid.2", "--k", "4", "--expansion", "2",
           "--tokens", "100000", "--context", "32", "--corpus", str(corpus), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (out / "train_config.json").is_file(), proc, "train_config.json")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 143, err[-2000:]
    assert "saecircuits train: terminated" in err
    left = [p for p in out.rglob("*") if p.name.startswith(".")]
    assert not left, left


def test_the_next_run_removes_what_a_killed_run_left(tmp_path):
    from saecircuits.demo import remove_stale_saes

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f".demo-abc.p{dead.pid}.x1y2z3w4.tmp", tmp_path / f"demo-abc.tmp-{dead.pid}"]
    live = [tmp_path / f".demo-def.p{os.getpid()}.a1b2c3d4.tmp", tmp_path / f"demo-def.tmp-{os.getpid()}"]
    kept = tmp_path / "demo-abc"
    for p in stale + live + [kept]:
        (p / "resid.0").mkdir(parents=True)
    assert sorted(remove_stale_saes(tmp_path)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in live + [kept])


def test_a_killed_first_run_dequantization_is_cleaned_by_the_next(tmp_path, monkeypatch):
    import transformers

    from saecircuits import models

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "models" / models.DEFAULT_MODEL
    stale = folder.with_name(f".{folder.name}.p{dead.pid}.q1w2e3r4.tmp")
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"")
    monkeypatch.setattr(models, "default_gguf_path", lambda: gguf)

    def fail(*args, **kwargs):
        raise RuntimeError("interrupted")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        models._build_default_cache(folder)
    assert list(folder.parent.iterdir()) == []     # the stale temp and this run's are both gone
