"""The narrative corpus sampler and the shipped narrative corpus."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from trainers import sample_corpus

SHIPPED = Path(sample_corpus.__file__).parent / "data" / "narrative.jsonl.gz"


def test_instructions_are_seeded_and_diverse():
    a = sample_corpus.instructions(500, seed=0)
    assert a == sample_corpus.instructions(500, seed=0)
    assert a != sample_corpus.instructions(500, seed=1)
    assert {i.genre for i in a} == set(sample_corpus.GENRES)
    assert len({i.text for i in a}) > 300
    # never a task template: no IOI-style giving sentence among the instructions
    assert not any(" gave " in i.text or "went to the" in i.text for i in a)


def test_sample_writes_gzipped_jsonl(tiny_dir, tmp_path):
    out = tmp_path / "n.jsonl.gz"
    summary = sample_corpus.sample(out, tokens=40, model_path=str(tiny_dir("llama")),
                                   batch=2, max_new_tokens=24, seed=3)
    rows = [json.loads(line) for line in gzip.open(out, "rt", encoding="utf-8")]
    assert summary["documents"] == len(rows) >= 1
    assert summary["tokens"] >= 16 * len(rows)
    assert all(set(r) == {"text", "genre", "instruction", "seed"} for r in rows)
    assert not list(tmp_path.glob("*.part"))


def test_shipped_narrative_corpus():
    rows = [json.loads(line) for line in gzip.open(SHIPPED, "rt", encoding="utf-8")]
    assert len(rows) > 10_000
    assert {r["genre"] for r in rows} == set(sample_corpus.GENRES)
    texts = [r["text"] for r in rows]
    assert len(set(texts)) == len(texts)          # deduplicated
    assert sum(len(t) for t in texts) > 10_000_000  # ~4M tokens of prose


def test_sampler_refuses_model_without_chat_template(tiny_dir, tmp_path):
    from transformers import AutoTokenizer

    from saecircuits.errors import ConfigError

    folder = tiny_dir("llama")
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.chat_template  # the tiny tokenizer has one (helpers.CHAT_TEMPLATE): removed below
    import shutil

    copy = tmp_path / "nochat"
    shutil.copytree(folder, copy)
    cfg = json.loads((copy / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (copy / "tokenizer_config.json").write_text(json.dumps(cfg))
    for extra in copy.glob("chat_template.*"):
        extra.unlink()
    with pytest.raises(ConfigError, match="chat template"):
        sample_corpus.sample(tmp_path / "x.jsonl.gz", tokens=10, model_path=str(copy))
    assert not list(tmp_path.glob("x.jsonl.gz*"))
