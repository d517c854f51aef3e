"""Narrative corpus source, token-ratio mixing with the code corpus, composition report."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from saecircuits.errors import ConfigError
from trainers.composition import composition, name_share
from trainers.corpus import load_corpus, load_documents, mix_share, mixed_corpus

STORIES = [("story", "Once upon a time, Mary and her brother Thomas walked to the old mill. "
            "The miller, a kind man called Peter, gave Mary a loaf of bread. {i}"),
           ("letter", "Dear Anna,\nI hope this letter finds you well. Yesterday Oliver visited "
            "us with Hannah and told us about his travels. Love, Rose {i}"),
           ("news", "The council met on Tuesday. Mayor Linda Park said that the bridge would be "
            "repaired, and engineer David Chen agreed. {i}")]


def _small_code_corpus():
    """A few stdlib modules stand in for the embedded code corpus (tokenizing all of it takes
    minutes): enough code documents to match the narrative's tokens."""
    import fnmatch
    import json as json_mod
    import shlex
    import string
    import textwrap
    from pathlib import Path

    from trainers.corpus import Document

    return [Document(f"stdlib/{m.__name__}.py", Path(m.__file__).read_text(encoding="utf-8"))
            for m in (textwrap, string, shlex, fnmatch, json_mod)]


@pytest.fixture()
def narrative(tmp_path, monkeypatch):
    path = tmp_path / "narrative.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for i in range(40):
            genre, text = STORIES[i % 3]
            fh.write(json.dumps({"text": text.format(i=i), "genre": genre}) + "\n")
    monkeypatch.setenv("SAECIRCUITS_NARRATIVE", str(path))
    return path


def test_mix_share_parsing():
    assert mix_share("embedded-mix") == 0.7 and mix_share("mix:0.25") == 0.25
    assert mix_share("embedded") is None and mix_share(None) is None
    for bad in ("mix:abc", "embedded-mix:1.5"):
        with pytest.raises(ConfigError, match="mix"):
            mix_share(bad)


def test_missing_narrative_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SAECIRCUITS_NARRATIVE", str(tmp_path / "nope.jsonl.gz"))
    with pytest.raises(ConfigError, match="nope.jsonl.gz"):
        load_documents("narrative")


def test_mixed_corpus_ratio_and_composition(tiny_tok, narrative, monkeypatch):
    import trainers.corpus

    monkeypatch.setattr(trainers.corpus, "default_documents", _small_code_corpus)
    tok = tiny_tok
    docs = load_documents("narrative")
    assert len(docs) == 40 and docs[0].name.startswith("narrative/story/")
    mixed = mixed_corpus(tok, 0.5)
    is_narr = np.array([n.startswith("narrative/") for n in mixed.names])
    lengths = np.diff(mixed.offsets)
    narr, code = int(lengths[is_narr].sum()), int(lengths[~is_narr].sum())
    # code documents are added until they reach the narrative's token count, and no further
    assert code >= narr and code - lengths[~is_narr][-1] < narr
    assert load_corpus(tok, "narrative").n_tokens == narr
    report = composition(tok, mixed)
    src = report["by_source"]
    assert src["narrative"]["tokens"] == narr and src["narrative"]["documents"] == 40
    assert report["tokens"] == narr + code
    assert src["narrative"]["name_token_share"] > 3 * max(v["name_token_share"]
                                                          for k, v in src.items() if k != "narrative")


def test_name_share_counts_names_not_sentence_starts(tiny_tok):
    tok = tiny_tok
    ids = np.array(tok.encode("Then Mary gave the book to John. When it rained, Paris was wet.",
                              add_special_tokens=False))
    names, n = name_share(tok, ids)
    assert names == 3 and n == len(ids)   # Mary, John, Paris; not Then / When (sentence starts)
