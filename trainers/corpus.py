"""Training text: the embedded default corpus, user files and HF datasets, as token windows.

Default corpus (no network, present on every CPython install):
  * code  -- every `.py` file of the running Python's standard library
    (`sysconfig.get_paths()["stdlib"]`), skipping site-packages and files over 200 kB (mostly
    generated data tables). The library proper gives ~3.5M SmolLM2 tokens, so CPython's own
    test suite (`test/`, `*/tests/`, ~5M tokens) is included to reach the 5M-token floor;
    pass `include_tests=False` to `stdlib_documents` to leave it out;
  * prose -- the pydoc topic help texts (`pydoc_data.topics.topics`), English reference prose.
Both are distributed with CPython under the Python Software Foundation License (PSF-2.0),
which permits copying and derived works; provenance is the local interpreter's own files.
Narrative corpus (`narrative_documents`): prose sampled from SmolLM2 itself (stories, dialogue,
letters, news, biographies, instructions; chat-template sampling, seeded) shipped as
`trainers/data/narrative.jsonl.gz` (one {"text", "genre"} object a line; `$SAECIRCUITS_NARRATIVE`
overrides the path). It is the source of people, names and events that the code corpus lacks.
Named sources for `--corpus`:
  * `embedded`          the code corpus above (same as no corpus);
  * `narrative`         the narrative prose only;
  * `embedded-mix[:R]`  (alias `mix`) every narrative document plus code documents (seeded order)
    until the narrative holds a share R of the *tokens* (default R = 0.7, i.e. 70 % narrative,
    30 % code); `trainers.composition` reports what a corpus holds.
Documents are deduplicated by content hash (sha256), ordered by name and shuffled with a
seeded generator, so the order is the same on every machine with the same Python.

A `TokenCorpus` holds the tokenized documents (one int32 array + offsets), cached under
`<saecircuits cache>/corpus/`. `split()` holds out whole documents for evaluation and
`windows()` cuts fixed-length token windows `[n, context]` (optionally BOS-prefixed).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from saecircuits.errors import ConfigError
from saecircuits.fileio import atomic_path, write_json
from saecircuits.progress import bar as progress_bar, track

SKIP_DIRS = {"site-packages", "__pycache__"}
TEST_DIRS = {"test", "tests", "idle_test"}
MAX_FILE_BYTES = 200_000


@dataclass
class Document:
    name: str
    text: str


# -- sources -------------------------------------------------------------------------------
def stdlib_documents(include_tests: bool = True) -> list[Document]:
    """The standard library's `.py` sources (no site-packages, no file over 200 kB)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in track(sorted(root.rglob("*.py")), "reading the standard library", unit="file"):
        rel = path.relative_to(root)
        if SKIP_DIRS.intersection(rel.parts[:-1]) or path.stat().st_size > MAX_FILE_BYTES:
            continue
        if not include_tests and TEST_DIRS.intersection(rel.parts[:-1]):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a handful of deliberately odd files; not worth failing for
        docs.append(Document(f"stdlib/{rel.as_posix()}", text))
    return docs


def pydoc_documents() -> list[Document]:
    """pydoc's topic help pages (English prose about the language)."""
    from pydoc_data.topics import topics

    return [Document(f"pydoc/{name}", text) for name, text in sorted(topics.items())]


NARRATIVE_FILE = Path(__file__).parent / "data" / "narrative.jsonl.gz"
MIX_DEFAULT_SHARE = 0.7


def narrative_path() -> Path:
    return Path(os.environ.get("SAECIRCUITS_NARRATIVE", NARRATIVE_FILE))


def narrative_documents() -> list[Document]:
    """The packaged narrative prose (`narrative_path()`), one document per JSONL line."""
    import gzip

    path = narrative_path()
    if not path.is_file():
        raise ConfigError(f"the narrative corpus {str(path)!r} is not there; it ships as "
                          "trainers/data/narrative.jsonl.gz (or set $SAECIRCUITS_NARRATIVE)")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        docs = [Document(f"narrative/{str(obj.get('genre') or 'text').replace('/', '_')}/{number}",
                         obj["text"]) for number, obj in jsonl_objects(fh, path, "text")]
    return dedupe(docs)


def mix_share(source) -> float | None:
    """The narrative token share of an `embedded-mix[:R]` / `mix[:R]` source, else None."""
    if not isinstance(source, str):
        return None
    head, _, tail = source.partition(":")
    if head not in ("embedded-mix", "mix"):
        return None
    try:
        share = float(tail) if tail else MIX_DEFAULT_SHARE
    except ValueError:
        raise ConfigError(f"corpus {source!r}: the mix share after ':' must be a number in "
                          "[0, 1], e.g. embedded-mix:0.7") from None
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"corpus {source!r}: the narrative share must be in [0, 1], got {share}")
    return share


def mixed_corpus(tok, narrative_share: float = MIX_DEFAULT_SHARE, seed: int = 0) -> "TokenCorpus":
    """All narrative documents plus code documents (seeded order) so that the narrative holds
    `narrative_share` of the tokens (all code when the narrative is too small to need it all)."""
    if narrative_share == 0.0:
        return default_corpus(tok)
    narrative = tokenize(tok, narrative_documents())
    if narrative_share == 1.0:
        return narrative
    code = default_corpus(tok)
    want = narrative.n_tokens * (1.0 - narrative_share) / narrative_share
    order = torch.randperm(len(code), generator=torch.Generator().manual_seed(seed)).tolist()
    taken, count = [], 0
    for i in order:
        if count >= want:
            break
        taken.append(i)
        count += int(code.offsets[i + 1] - code.offsets[i])
    part = code.subset(taken, f"mix{narrative_share}-{seed}")
    tokens = np.concatenate([narrative.tokens, part.tokens])
    offsets = np.concatenate([narrative.offsets, part.offsets[1:] + narrative.n_tokens])
    return TokenCorpus(tokens, offsets.astype(np.int64), narrative.names + part.names,
                       narrative.eos_id, narrative.bos_id,
                       f"{narrative.fingerprint}+{part.fingerprint}")


def default_documents() -> list[Document]:
    """Embedded default corpus: stdlib code + pydoc prose, deduplicated, sorted by name."""
    return dedupe(stdlib_documents() + pydoc_documents())


def dedupe(docs: Iterable[Document]) -> list[Document]:
    """Drop empty documents and exact duplicates (by sha256 of the text); keep the first."""
    seen: set[str] = set()
    out = []
    for doc in docs:
        if not doc.text.strip():
            continue
        digest = hashlib.sha256(doc.text.encode("utf-8")).hexdigest()
        if digest not in seen:
            seen.add(digest)
            out.append(doc)
    return out


def read_text_file(path: str | os.PathLike) -> list[Document]:
    """One document per file; a file that is not UTF-8 is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"corpus file {str(path)!r} does not exist")
    try:
        return [Document(path.name, path.read_text(encoding="utf-8"))]
    except UnicodeDecodeError as err:
        raise ConfigError(f"corpus file {str(path)!r} is not UTF-8 text "
                          f"(byte {err.start}: {err.reason})") from None


def read_jsonl(path: str | os.PathLike, field: str = "text") -> list[Document]:
    """One document per line of a JSONL file: the string under `field`."""
    path = Path(path)
    return [Document(f"{path.name}:{number}", obj[field])
            for doc in read_text_file(path)
            for number, obj in jsonl_objects(doc.text.splitlines(), path, field)]


def jsonl_objects(lines: Iterable[str], path, field: str):
    """(line number, object) for each non-blank JSONL line; ConfigError naming `path:line` when a
    line is not JSON or lacks a string `field`."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
            raise ConfigError(f"{path}:{number}: expected an object with a string field {field!r}")
        yield number, obj


def read_hf_dataset(source: str, field: str = "text", split: str = "train",
                    max_documents: int | None = None) -> list[Document]:
    """A Hugging Face dataset: a `save_to_disk` directory, or a hub name (streamed)."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"reading the dataset {source!r} needs the 'datasets' package "
                          "(pip install datasets)") from None
    if Path(source).is_dir():
        data = datasets.load_from_disk(source)
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise ConfigError(f"dataset {source!r} has no split {split!r}; it has {list(data)}")
            data = data[split]
    else:
        data = datasets.load_dataset(source, split=split, streaming=True)
    docs = []
    for number, row in enumerate(data):
        if max_documents is not None and number >= max_documents:
            break
        if field not in row or not isinstance(row[field], str):
            raise ConfigError(f"dataset {source!r} row {number} has no string field {field!r}")
        docs.append(Document(f"{source}:{number}", row[field]))
    return docs


def load_documents(source: str | os.PathLike | Sequence[str] | None = None, field: str = "text",
                   max_documents: int | None = None) -> list[Document]:
    """Documents from `source`: None (default corpus), a list of strings, a .txt/.jsonl file,
    a directory of .txt/.jsonl files, a `save_to_disk` dataset directory, or `hf:<name>`."""
    if source is None or source == "embedded":
        docs = default_documents()
    elif source == "narrative":
        docs = narrative_documents()
    elif mix_share(source) is not None:
        raise ConfigError(f"corpus {source!r} is mixed by tokens: use load_corpus(tok, {source!r})")
    elif isinstance(source, (list, tuple)):
        if not all(isinstance(t, str) for t in source):
            raise ConfigError("a corpus given as a list must contain only strings")
        docs = [Document(f"text/{i}", t) for i, t in enumerate(source)]
    else:
        text = str(source)
        path = Path(text)
        if text.startswith("hf:"):
            docs = read_hf_dataset(text[3:], field, max_documents=max_documents)
        elif path.is_dir() and any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json")):
            docs = read_hf_dataset(text, field, max_documents=max_documents)
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl", ".md"))
            if not files:
                raise ConfigError(f"corpus directory {text!r} has no .txt, .md or .jsonl files")
            docs = []
            for file in files:
                docs += read_jsonl(file, field) if file.suffix == ".jsonl" else read_text_file(file)
        elif path.suffix == ".jsonl":
            docs = read_jsonl(path, field)
        else:
            docs = read_text_file(path)
    docs = dedupe(docs)
    if max_documents is not None:
        docs = docs[:max_documents]
    if not docs:
        raise ConfigError(f"corpus {source!r} has no non-empty documents")
    return docs


# -- tokens ----------------------------------------------------------------------------------
@dataclass
class TokenCorpus:
    """Tokenized documents: `tokens` int32 [n_tokens] concatenated, `offsets` int64 [n_docs+1]."""

    tokens: np.ndarray
    offsets: np.ndarray
    names: list[str]
    eos_id: int | None = None
    bos_id: int | None = None
    fingerprint: str = ""

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def __len__(self) -> int:
        return len(self.names)

    def document(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    def subset(self, indices: Sequence[int], tag: str) -> "TokenCorpus":
        parts = [self.document(i) for i in indices]
        lengths = np.array([len(p) for p in parts], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        tokens = np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)
        return TokenCorpus(tokens, offsets, [self.names[i] for i in indices], self.eos_id,
                           self.bos_id, f"{self.fingerprint}:{tag}")

    def split(self, holdout: float = 0.02, seed: int = 0,
              min_holdout_tokens: int = 0) -> tuple["TokenCorpus", "TokenCorpus"]:
        """(train, eval): whole documents in a seeded order; the eval part gets the first
        documents of that order until it has `holdout` of the tokens (and at least
        `min_holdout_tokens`, when the corpus allows)."""
        if len(self) < 2:
            raise ConfigError(f"corpus has {len(self)} document(s); holding out evaluation text "
                              "needs at least 2 (split by document)")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)).tolist()
        want = max(holdout * self.n_tokens, min_holdout_tokens)
        taken, count = [], 0
        for i in order[:-1]:  # always leave at least one training document
            if count >= want:
                break
            taken.append(i)
            count += self.offsets[i + 1] - self.offsets[i]
        rest = [i for i in order if i not in set(taken)]
        return self.subset(rest, f"train{seed}"), self.subset(taken, f"eval{seed}")

    def windows(self, context: int, seed: int | None = 0, prepend_bos: bool = False) -> torch.Tensor:
        """Fixed-length windows `[n, context]` (int64) of documents joined by EOS.

        Documents are taken in a seeded order (`seed=None`: stored order); the stream is cut
        every `context` tokens (`context - 1` plus a leading BOS with `prepend_bos`).
        """
        if context < 2:
            raise ConfigError(f"context length must be >= 2, got {context}")
        if prepend_bos and self.bos_id is None:
            raise ConfigError("prepend_bos needs a tokenizer with a BOS token; this one has none")
        order = (range(len(self)) if seed is None else
                 torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)).tolist())
        parts = []
        for i in order:
            parts.append(self.document(i))
            if self.eos_id is not None:
                parts.append(np.array([self.eos_id], dtype=np.int32))
        stream = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        body = context - 1 if prepend_bos else context
        n = len(stream) // body
        if n == 0:
            raise ConfigError(f"corpus is too short: {len(stream)} tokens make no window of "
                              f"{context} tokens; give more text or a smaller context")
        out = torch.from_numpy(stream[: n * body].astype(np.int64)).view(n, body)
        if prepend_bos:
            out = torch.cat([torch.full((n, 1), self.bos_id, dtype=torch.int64), out], dim=1)
        return out


def _fingerprint(tok, docs: Sequence[Document]) -> str:
    h = hashlib.sha256()
    h.update(type(tok).__name__.encode())
    h.update(str(getattr(tok, "name_or_path", "")).encode())
    h.update(str(len(tok)).encode())
    h.update(json.dumps(tok("The quick brown fox (x) -> y").input_ids).encode())
    for doc in docs:
        h.update(doc.name.encode())
        h.update(hashlib.sha256(doc.text.encode("utf-8")).digest())
    return h.hexdigest()[:20]


def tokenize(tok, docs: Sequence[Document], cache: bool = True,
             batch_docs: int = 64) -> TokenCorpus:
    """Tokenize documents once (no special tokens); cached as .npy under the cache dir."""
    from saecircuits.models import cache_dir

    if not docs:
        raise ConfigError("corpus has no documents to tokenize")
    key = _fingerprint(tok, docs)
    folder = cache_dir() / "corpus" / key
    names = [d.name for d in docs]
    eos, bos = tok.eos_token_id, tok.bos_token_id
    if cache and (folder / "meta.json").is_file():
        try:
            tokens = np.load(folder / "tokens.npy")
            offsets = np.load(folder / "offsets.npy")
            if len(offsets) == len(docs) + 1 and offsets[-1] == len(tokens):
                return TokenCorpus(tokens, offsets, names, eos, bos, key)
        except (OSError, ValueError):
            pass  # unreadable cache: rebuild it below
    size = sum(len(d.text) for d in docs)
    if size > 1_000_000:  # minutes on a small CPU: say what is happening
        print(f"saecircuits: tokenizing the corpus once ({len(docs):,} documents, {size / 1e6:.0f} MB "
              f"of text; a few minutes on a small CPU)" + (f"; later runs reuse {folder}" if cache else ""),
              file=sys.stderr, flush=True)
    lengths, chunks = [], []
    bar = progress_bar(len(docs), "tokenizing the corpus", unit="doc", enabled=size > 1_000_000)
    for start in range(0, len(docs), batch_docs):
        texts = [d.text for d in docs[start:start + batch_docs]]
        ids = tok(texts, add_special_tokens=False)["input_ids"]
        for row in ids:
            chunks.append(np.asarray(row, dtype=np.int32))
            lengths.append(len(row))
        bar.update(len(texts))
    bar.close()
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    corpus = TokenCorpus(tokens, offsets, names, eos, bos, key)
    if cache:
        for name, arr in (("tokens.npy", tokens), ("offsets.npy", offsets)):
            with atomic_path(folder / name) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, arr)
        write_json(folder / "meta.json", {"documents": len(docs), "tokens": int(offsets[-1]),
                                          "tokenizer": str(getattr(tok, "name_or_path", ""))})
    return corpus


def _token_rows(source: str, max_documents: int | None):
    """(name, ids) rows of a pre-tokenized corpus (a .jsonl file or a `save_to_disk` dataset
    directory whose rows carry `input_ids`), or None when `source` is not one."""
    path = Path(source)
    if path.suffix == ".jsonl" and path.is_file():
        with open(path, encoding="utf-8") as fh:
            first = next((line for line in fh if line.strip()), "")
        try:
            head = json.loads(first) if first else {}
        except json.JSONDecodeError:
            return None
        if not (isinstance(head, dict) and "input_ids" in head and "text" not in head):
            return None
        rows = []
        with open(path, encoding="utf-8") as fh:
            for number, obj in jsonl_objects_any(fh, path):
                if max_documents is not None and len(rows) >= max_documents:
                    break
                rows.append((f"{path.name}:{number}", obj.get("input_ids")))
        return rows
    if path.is_dir() and any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json")):
        try:
            import datasets
        except ImportError:
            return None
        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            data = data["train"] if "train" in data else next(iter(data.values()))
        if "input_ids" not in data.column_names or "text" in data.column_names:
            return None
        n = len(data) if max_documents is None else min(len(data), max_documents)
        return [(f"{path.name}:{i}", data[i]["input_ids"]) for i in range(n)]
    return None


def jsonl_objects_any(lines: Iterable[str], path):
    """(line number, object) for each non-blank JSONL line (any fields)."""
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise ConfigError(f"{path}:{number}: expected a JSON object")
            yield number, obj


def pretokenized(tok, rows, source: str) -> TokenCorpus:
    """A `TokenCorpus` from (name, token ids) rows, checked against the tokenizer's vocabulary."""
    vocab = len(tok)
    parts, names = [], []
    for name, ids in rows:
        if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool)
                                                          for i in ids):
            raise ConfigError(f"{name}: input_ids must be a non-empty list of integers")
        bad = next((i for i in ids if not 0 <= i < vocab), None)
        if bad is not None:
            raise ConfigError(f"{name}: token id {bad} is outside the tokenizer's vocabulary (0..{vocab - 1}); "
                              "was the corpus tokenized for another model?")
        parts.append(np.asarray(ids, dtype=np.int32))
        names.append(name)
    if not parts:
        raise ConfigError(f"corpus {source!r} has no rows")
    lengths = np.array([len(p) for p in parts], dtype=np.int64)
    h = hashlib.sha256()
    for p in parts:
        h.update(p.tobytes())
    return TokenCorpus(np.concatenate(parts), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                       names, tok.eos_token_id, tok.bos_token_id, f"pretokenized:{h.hexdigest()[:16]}")


def load_corpus(tok, source=None, field: str = "text", max_documents: int | None = None,
                cache: bool = True) -> TokenCorpus:
    """Read and tokenize a corpus source (see `load_documents`; also `embedded-mix[:R]`). A
    pre-tokenized source (a .jsonl or dataset directory whose rows have `input_ids` and no
    `text`, as SAELens and sparsify users have them) is read as token ids."""
    share = mix_share(source)
    if share is not None:
        return mixed_corpus(tok, share)
    if isinstance(source, (str, os.PathLike)) and not str(source).startswith("hf:"):
        rows = _token_rows(str(source), max_documents)
        if rows is not None:
            return pretokenized(tok, rows, str(source))
    return tokenize(tok, load_documents(source, field, max_documents), cache=cache)


def default_corpus(tok) -> TokenCorpus:
    """The embedded default corpus (stdlib code + pydoc prose), tokenized with `tok`."""
    return load_corpus(tok, None)
