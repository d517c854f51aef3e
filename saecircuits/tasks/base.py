"""Contrastive tasks: prompts, answer token ids and a metric on the last position's logits.

JSONL format (design.md, feature-circuits convention), one object per line:
    {"clean_prefix": str, "patch_prefix": str | null, "clean_answer": str, "patch_answer": str}
Answers must be single tokens for the tokenizer (a multi-token answer is an error naming the
line). Clean and patch prefixes must tokenize to the same length; `patch_prefix` may be null
only when every line has no patch prompt (zero / mean / resample ablation).

Metrics, computed at the last position of left-padded logits `[batch, pos, vocab]` -> `[batch]`:
    "logit_diff":  logit(clean_answer) − logit(patch_answer)
    "group_vs_rest": logsumexp(logits[group]) − max(logits[not group])  (closing brackets:
        every token that starts with ")" is in the group, since SmolLM2 merges "))", ")." ...)
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..errors import TaskError

METRICS = ("logit_diff", "group_vs_rest")


@dataclass
class Task:
    """A contrastive dataset.

    clean / patch: prompts (patch is None when there are no patch prompts).
    clean_ids / patch_ids: `[n]` answer token ids (patch_ids: the contrast token).
    metric_kind: "logit_diff" or "group_vs_rest" (then `group_ids` lists the group's tokens).
    """

    name: str
    clean: list[str]
    patch: list[str] | None
    clean_ids: torch.Tensor
    patch_ids: torch.Tensor
    metric_kind: str = "logit_diff"
    group_ids: list[int] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.clean)
        if n == 0:
            raise TaskError(f"task {self.name!r} has no prompts")
        if self.patch is not None and len(self.patch) != n:
            raise TaskError(f"task {self.name!r}: {n} clean but {len(self.patch)} patch prompts")
        if self.clean_ids.shape != (n,) or self.patch_ids.shape != (n,):
            raise TaskError(f"task {self.name!r}: answer ids must have shape ({n},)")
        if self.metric_kind not in METRICS:
            raise TaskError(f"unknown metric {self.metric_kind!r}; expected one of {METRICS}")
        if self.metric_kind == "group_vs_rest" and not self.group_ids:
            raise TaskError(f"task {self.name!r}: group_vs_rest metric needs group_ids")

    def __len__(self) -> int:
        return len(self.clean)

    def take(self, index) -> "Task":
        """Sub-task of the rows `index` (slice, list or LongTensor; repeats allowed)."""
        if isinstance(index, slice):
            index = list(range(len(self)))[index]
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        rows = index.tolist()
        return replace(self, clean=[self.clean[i] for i in rows],
                       patch=None if self.patch is None else [self.patch[i] for i in rows],
                       clean_ids=self.clean_ids[index], patch_ids=self.patch_ids[index])

    def metric(self, logits: torch.Tensor) -> torch.Tensor:
        """`[batch]` metric from logits `[batch, pos, vocab]` (or `[batch, vocab]`) at the last position."""
        last = logits[:, -1] if logits.dim() == 3 else logits
        if last.shape[0] != len(self):
            raise TaskError(f"metric of task {self.name!r} got {last.shape[0]} rows for "
                            f"{len(self)} prompts")
        rows = torch.arange(last.shape[0], device=last.device)
        if self.metric_kind == "logit_diff":
            out = (last[rows, self.clean_ids.to(last.device)]
                   - last[rows, self.patch_ids.to(last.device)])
        else:
            group = torch.zeros(last.shape[-1], dtype=torch.bool, device=last.device)
            group[torch.as_tensor(self.group_ids, device=last.device)] = True
            inside = torch.logsumexp(last.masked_fill(~group, float("-inf")), dim=-1)
            outside = last.masked_fill(group, float("-inf")).max(dim=-1).values
            out = inside - outside
        if not torch.isfinite(out).all():
            raise TaskError(f"metric of task {self.name!r} is not finite (NaN/inf logits)")
        return out

    def to_records(self) -> list[dict]:
        return [{"clean_prefix": c, "patch_prefix": None if self.patch is None else self.patch[i],
                 "clean_answer": self.info.get("clean_answers", [""] * len(self))[i],
                 "patch_answer": self.info.get("patch_answers", [""] * len(self))[i]}
                for i, c in enumerate(self.clean)]


def single_token(tok, text: str, where: str) -> int:
    """The id of `text` if it is one token, else TaskError naming `where`."""
    ids = tok.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise TaskError(f"{where}: answer {text!r} is {len(ids)} tokens "
                        f"{[tok.decode([i]) for i in ids]}; answers must be single tokens")
    return ids[0]


def n_tokens(tok, text: str) -> int:
    return len(tok(text)["input_ids"])


def from_records(tok, records: Sequence[dict], name: str = "task",
                 where: Sequence[str] | None = None) -> Task:
    """Build a logit-difference Task from JSONL-style records (validated; errors name the line)."""
    where = list(where) if where is not None else [f"record {i + 1}" for i in range(len(records))]
    if not records:
        raise TaskError(f"task {name!r} has no records")
    clean, patch, cids, pids, ca, pa = [], [], [], [], [], []
    has_patch = None
    for rec, loc in zip(records, where):
        if not isinstance(rec, dict):
            raise TaskError(f"{loc}: expected a JSON object, got {type(rec).__name__}")
        missing = {"clean_prefix", "clean_answer", "patch_answer"} - set(rec)
        if missing:
            raise TaskError(f"{loc}: missing keys {sorted(missing)}")
        for key in ("clean_prefix", "clean_answer", "patch_answer"):
            if not isinstance(rec[key], str) or not rec[key]:
                raise TaskError(f"{loc}: {key} must be a non-empty string, got {rec[key]!r}")
        p = rec.get("patch_prefix")
        if p is not None and (not isinstance(p, str) or not p):
            raise TaskError(f"{loc}: patch_prefix must be a non-empty string or null, got {p!r}")
        if has_patch is None:
            has_patch = p is not None
        elif has_patch != (p is not None):
            raise TaskError(f"{loc}: patch_prefix is null on some lines but not others")
        if p is not None and n_tokens(tok, p) != n_tokens(tok, rec["clean_prefix"]):
            raise TaskError(f"{loc}: clean_prefix is {n_tokens(tok, rec['clean_prefix'])} tokens "
                            f"but patch_prefix is {n_tokens(tok, p)}; they must be equal")
        clean.append(rec["clean_prefix"])
        patch.append(p)
        cids.append(single_token(tok, rec["clean_answer"], loc))
        pids.append(single_token(tok, rec["patch_answer"], loc))
        ca.append(rec["clean_answer"])
        pa.append(rec["patch_answer"])
    return Task(name=name, clean=clean, patch=patch if has_patch else None,
                clean_ids=torch.tensor(cids), patch_ids=torch.tensor(pids),
                info={"clean_answers": ca, "patch_answers": pa})


def load_jsonl(tok, path: str | os.PathLike) -> Task:
    """Read a contrastive task file (one JSON object per line; blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task file {str(path)!r} does not exist")
    from ..fileio import parse_json, read_text
    from ..limits import MAX_PROMPT_CHARS

    records, where = [], []
    for i, line in enumerate(read_text(path, "task file", TaskError).splitlines(), start=1):
        if not line.strip():
            continue
        if len(line) > 4 * MAX_PROMPT_CHARS:
            raise TaskError(f"{path.name} line {i} has {len(line):,} characters; at most "
                            f"{4 * MAX_PROMPT_CHARS:,} are accepted")
        records.append(parse_json(line, f"{path.name} line {i}", TaskError))
        where.append(f"{path.name} line {i}")
    if not records:
        raise TaskError(f"task file {str(path)!r} has no records")
    return from_records(tok, records, name=path.stem, where=where)


@torch.no_grad()
def task_accuracy(model, tok, task: Task, batch_size: int = 32) -> dict:
    """Full-model accuracy (metric > 0) and mean metric on clean (and patch) prompts."""
    from ..splice import encode_inputs, spliced_logits

    clean, patch = [], []
    for start in range(0, len(task), batch_size):
        sub = task.take(slice(start, start + batch_size))
        clean.append(sub.metric(spliced_logits(model, None, encode_inputs(tok, sub.clean))))
        if sub.patch is not None:
            patch.append(sub.metric(spliced_logits(model, None, encode_inputs(tok, sub.patch))))
    m = torch.cat(clean)
    out = {"task": task.name, "n": len(task), "accuracy": float((m > 0).float().mean()),
           "mean_metric": float(m.mean())}
    if patch:
        mp = torch.cat(patch)
        out.update(patch_mean_metric=float(mp.mean()), patch_accuracy=float((mp < 0).float().mean()))
    return out
