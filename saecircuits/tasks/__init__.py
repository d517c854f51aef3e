"""Contrastive tasks: built-in generators (`ioi`, `parens`, `sva`) and JSONL files."""
from __future__ import annotations

from pathlib import Path

from ..errors import TaskError
from .base import Task, from_records, load_jsonl, task_accuracy
from .ioi import ioi_task
from .parens import parens_task
from .sva import sva_task

BUILTIN = {"ioi": ioi_task, "parens": parens_task, "sva": sva_task}


def make_task(tok, spec: str, n: int = 64, seed: int = 0) -> Task:
    """A built-in task by name (`ioi`, `parens`, `sva`) or a JSONL file path (first `n` rows)."""
    if spec in BUILTIN:
        if not isinstance(n, int) or n < 1:
            raise TaskError(f"number of prompts must be a positive integer, got {n!r}")
        return BUILTIN[spec](tok, n=n, seed=seed)
    if Path(spec).suffix == ".jsonl" or Path(spec).exists():
        task = load_jsonl(tok, spec)
        return task.take(slice(0, n)) if n and n < len(task) else task
    raise TaskError(f"unknown task {spec!r}; expected one of {sorted(BUILTIN)} or a .jsonl file")


__all__ = ["Task", "from_records", "load_jsonl", "task_accuracy", "make_task", "ioi_task",
           "parens_task", "sva_task", "BUILTIN"]
