"""The model cache saecircuits writes (transformers 5.x) loads as it is in transformers 4.x too
(circuit-tracer's venv), and an older cache is repaired in place on load."""
from __future__ import annotations

import json
import subprocess

import pytest

from saecircuits import models
from ct_env import SKIP_REASON, ct_python

ROPE_THETA = 100000.0
WORDS = ["When", "Mary", "and", "John", "went", "to", "the", "store"]


def _old_cache(folder):
    """A cache as saecircuits wrote it before the fix: transformers 5.x's own save_pretrained
    output (`"quantization_config": null`, `rope_parameters` only, `TokenizersBackend`)."""
    from tokenizers import Tokenizer, models as tok_models, pre_tokenizers
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    folder.mkdir(parents=True)
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>"] + WORDS)}
    backend = Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2,
                      rope_parameters={"rope_theta": ROPE_THETA, "rope_type": "default"})
    cfg.quantization_config = None  # what _build_default_cache sets before save_pretrained
    cfg.save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"weights")
    files = {p.name: p.stat().st_size for p in folder.iterdir()}
    (folder / models._MARKER).write_text(json.dumps({"source": "x.gguf", "files": files}))
    return folder


# captured at import, before conftest's guard replaces it for fast tests: these tests load a
# small fake cache, not SmolLM2
REAL_DEFAULT_MODEL_DIR = models.default_model_dir


@pytest.fixture
def old_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAECIRCUITS_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "default_model_dir", REAL_DEFAULT_MODEL_DIR)
    folder = _old_cache(tmp_path / "models" / models.DEFAULT_MODEL)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" in config and "rope_theta" not in config  # the old state
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "TokenizersBackend"

    def no_rebuild(folder):
        raise AssertionError("a complete cache must be repaired, not rebuilt")

    monkeypatch.setattr(models, "_build_default_cache", no_rebuild)
    return folder


def test_old_cache_is_repaired_in_place(old_cache):
    before = sorted(p.name for p in old_cache.iterdir())
    weights = (old_cache / "model.safetensors").stat().st_mtime_ns
    assert models.default_model_dir() == old_cache
    config = json.loads((old_cache / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == ROPE_THETA
    assert json.loads((old_cache / "tokenizer_config.json").read_text())["tokenizer_class"] == \
        "PreTrainedTokenizerFast"
    # the marker records the new sizes, so the cache is still complete; no temp files are left
    assert models._cache_is_complete(old_cache)
    assert sorted(p.name for p in old_cache.iterdir()) == before
    assert (old_cache / "model.safetensors").stat().st_mtime_ns == weights
    # a second load changes nothing
    stamps = {p.name: p.stat().st_mtime_ns for p in old_cache.iterdir()}
    models.default_model_dir()
    assert {p.name: p.stat().st_mtime_ns for p in old_cache.iterdir()} == stamps


def test_repaired_cache_still_loads_in_transformers_5(old_cache):
    from transformers import AutoConfig, AutoTokenizer

    models.default_model_dir()
    cfg = AutoConfig.from_pretrained(old_cache)
    assert cfg.rope_parameters["rope_theta"] == ROPE_THETA
    tok = AutoTokenizer.from_pretrained(old_cache)
    assert tok("Mary and John")["input_ids"] == [4, 5, 6]


def test_portable_config_keeps_non_default_rope():
    cfg = {"rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0},
           "quantization_config": {"quant_method": "x"}}
    out = models._portable_config(cfg)
    assert out["rope_theta"] == 5e5 and out["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0}
    assert out["quantization_config"] == {"quant_method": "x"}  # a real one is kept
    assert models._portable_config(out) == out


@pytest.mark.skipif(ct_python() is None, reason=SKIP_REASON)
def test_repaired_cache_loads_in_transformers_4(old_cache):
    """circuit-tracer's venv (transformers 4.57) reads the folder as it is: config.to_dict works,
    RoPE base 100000 (not 4.x's default 10000), the tokenizer gives the same ids."""
    models.default_model_dir()
    code = ("import json, sys, transformers as t\n"
            "c = t.AutoConfig.from_pretrained(sys.argv[1]); c.to_dict()\n"
            "k = t.AutoTokenizer.from_pretrained(sys.argv[1])\n"
            "print(json.dumps([t.__version__, c.rope_theta, k('Mary and John')['input_ids']]))")
    out = subprocess.run([str(ct_python()), "-c", code, str(old_cache)], capture_output=True, text=True,
                         timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    version, theta, ids = json.loads(out.stdout.strip().splitlines()[-1])
    assert version.startswith("4.")
    assert theta == ROPE_THETA and ids == [4, 5, 6]


@pytest.mark.slow
def test_default_cache_is_portable(smol):
    """The real SmolLM2 cache (built or repaired by load_model) carries the 4.x-readable fields."""
    folder = models.default_model_dir()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == ROPE_THETA
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == \
        "PreTrainedTokenizerFast"
    assert models._cache_is_complete(folder)
