"""Corpus: embedded default, user files, splitting by document, windows, bad inputs."""
from __future__ import annotations

import hashlib
import itertools
import json

import numpy as np
import pytest
import torch

from saecircuits.errors import ConfigError
from trainers.corpus import (TokenCorpus, default_documents, load_corpus, load_documents,
                             read_jsonl, read_text_file)


def test_default_documents_are_code_and_prose_deduplicated():
    docs = default_documents()
    names = [d.name for d in docs]
    assert any(n.startswith("pydoc/") for n in names) and any(n.startswith("stdlib/") for n in names)
    assert not any("site-packages" in n for n in names)
    digests = [hashlib.sha256(d.text.encode()).hexdigest() for d in docs]
    assert len(set(digests)) == len(digests) > 1000
    assert names == [d.name for d in default_documents()]  # deterministic


@pytest.mark.slow
def test_default_corpus_has_five_million_smollm2_tokens(smol):
    from trainers import default_corpus

    corpus = default_corpus(smol[1])
    assert corpus.n_tokens >= 5_000_000
    prose = sum(len(corpus.document(i)) for i, n in enumerate(corpus.names) if n.startswith("pydoc/"))
    assert prose > 100_000
    train, held = corpus.split(0.02, seed=0, min_holdout_tokens=20_480)
    assert not set(train.names) & set(held.names)
    assert held.n_tokens >= 20_480 and train.n_tokens + held.n_tokens == corpus.n_tokens
    again = default_corpus(smol[1])  # from the token cache
    assert np.array_equal(again.tokens, corpus.tokens)


def _corpus(lengths, eos=0, bos=1):
    tokens = np.concatenate([np.full(n, 10 + i, np.int32) for i, n in enumerate(lengths)])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenCorpus(tokens, offsets, [f"d{i}" for i in range(len(lengths))], eos, bos, "t")


def test_windows_join_documents_with_eos_and_prepend_bos():
    corpus = _corpus([5, 7, 3])
    w = corpus.windows(4, seed=None)
    assert w.shape == (4, 4)  # 5+1+7+1+3+1 = 18 tokens -> 4 windows of 4
    assert w.flatten()[:6].tolist() == [10, 10, 10, 10, 10, 0]
    b = corpus.windows(4, seed=None, prepend_bos=True)
    assert (b[:, 0] == 1).all() and b.shape == (6, 4)
    shuffled = corpus.windows(4, seed=3)
    assert shuffled.shape == w.shape and torch.equal(shuffled, corpus.windows(4, seed=3))

    def doc_order(seed):  # documents (tokens 10, 11, 12) in the order the windows hold them
        stream = corpus.windows(6, seed=seed).flatten().tolist()   # 18 tokens: the whole stream
        return [t for t, _ in itertools.groupby(stream) if t != 0]

    orders = [doc_order(seed) for seed in range(6)]
    assert all(sorted(o) == [10, 11, 12] for o in orders)           # every document, whole
    assert any(o != [10, 11, 12] for o in orders)                   # seeds reorder documents


def test_split_is_by_document_and_seeded():
    corpus = _corpus([50] * 20)
    a_train, a_eval = corpus.split(0.1, seed=1)
    b_train, b_eval = corpus.split(0.1, seed=1)
    assert a_eval.names == b_eval.names and len(a_eval) == 2
    assert not set(a_train.names) & set(a_eval.names)
    with pytest.raises(ConfigError, match="at least 2"):
        _corpus([5]).split(0.1)


def test_too_short_and_empty_corpus_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="too short"):
        _corpus([2]).windows(256)
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    with pytest.raises(ConfigError, match="no non-empty documents"):
        load_documents(str(empty))
    with pytest.raises(ConfigError, match="does not exist"):
        load_documents(str(tmp_path / "missing.txt"))


def test_non_utf8_file_is_named_in_the_error(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.txt.*not UTF-8"):
        read_text_file(bad)


def test_jsonl_text_field_and_bad_lines(tmp_path):
    good = tmp_path / "a.jsonl"
    good.write_text("\n".join(json.dumps({"text": t}) for t in ["one doc", "two doc", "one doc"]))
    docs = load_documents(str(good))
    assert [d.text for d in docs] == ["one doc", "two doc"]  # deduplicated
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(ConfigError, match="b.jsonl:2"):
        read_jsonl(bad)
    with pytest.raises(ConfigError, match="datasets|dataset"):
        load_documents("hf:some/dataset")


def test_user_texts_tokenize_and_cache(tiny_tok, tmp_path, monkeypatch):
    monkeypatch.setenv("SAECIRCUITS_CACHE", str(tmp_path))
    texts = ["Mary gave John a book.", "def f(x):\n    return (x + 1)\n"]
    corpus = load_corpus(tiny_tok, texts)
    assert len(corpus) == 2 and corpus.n_tokens == sum(len(tiny_tok(t).input_ids) for t in texts)
    assert list(tmp_path.glob("corpus/*/tokens.npy"))


def test_pretokenized_jsonl_corpus_is_read_as_ids(tiny, tmp_path):
    """A JSONL of `input_ids` rows (what SAELens / sparsify users have) is a corpus as it is:
    the same ids come back in the windows; ids outside the vocabulary are refused by line."""
    import json

    import pytest

    from saecircuits.errors import ConfigError
    from trainers.corpus import load_corpus

    model, tok = tiny
    rows = [list(range(5 + i, 45 + i)) for i in range(6)]
    path = tmp_path / "ids.jsonl"
    path.write_text("".join(json.dumps({"input_ids": r}) + "\n" for r in rows))
    corpus = load_corpus(tok, str(path))
    assert corpus.n_tokens == sum(len(r) for r in rows) and len(corpus) == 6
    assert corpus.document(2).tolist() == rows[2]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"input_ids": [1, 2, len(tok) + 5]}) + "\n")
    with pytest.raises(ConfigError, match="outside the tokenizer's vocabulary"):
        load_corpus(tok, str(bad))
