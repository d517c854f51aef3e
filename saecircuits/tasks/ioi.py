"""Indirect-object identification (Wang et al.): "When Mary and John ..., John gave a drink to" -> " Mary".

Clean prompt: names A (indirect object, IO) and B (subject, S) in ABBA or BABA order, S repeated.
Patch prompt: the same template with the repeated name replaced by the IO, so the answer
flips to S. Metric: logit(IO) − logit(S) at the last position.
"""
from __future__ import annotations

import random

from ..errors import TaskError
from .base import Task, from_records

NAMES = ("Mary John Alice Bob Tom James Michael David Sarah Emma Anna Paul Mark Peter Daniel Kevin "
         "Jack Lisa Laura Kate Rachel Susan Robert William Richard Thomas Charles Chris Steven "
         "Andrew Brian Eric Jason Ryan Adam Sam Alex Ben Joe Dan Mike Nick Matt Luke George Henry "
         "Frank Jerry Amy Emily Jessica Jennifer Linda Karen Nancy Helen Ruth Julia Grace Rose "
         "Victoria Martin Patrick Scott Tim Ted Bill Fred Carl Max Leo Jane Sophie Lucy Ellen").split()
PLACES = ["store", "park", "school", "hospital", "restaurant", "station", "office", "garden"]
OBJECTS = ["drink", "book", "ring", "letter", "gift", "ball", "key", "bag"]
TEMPLATES = [
    "When {A} and {B} went to the {P}, {S} gave a {O} to",
    "After {A} and {B} went to the {P}, {S} gave a {O} to",
    "When {A} and {B} arrived at the {P}, {S} handed a {O} to",
    "While {A} and {B} were at the {P}, {S} gave a {O} to",
    "Then, {A} and {B} went to the {P}. {S} gave a {O} to",
    "When {A} and {B} got to the {P}, {S} passed a {O} to",
]


def single_token_names(tok, names=NAMES) -> list[str]:
    """Names that are one token with a leading space."""
    return [n for n in names if len(tok.encode(" " + n, add_special_tokens=False)) == 1]


def ioi_task(tok, n: int = 64, seed: int = 0, templates=TEMPLATES) -> Task:
    names = single_token_names(tok)
    if len(names) < 50:
        raise TaskError(f"only {len(names)} IOI names are single tokens for this tokenizer (need 50)")
    rng = random.Random(seed)
    records = []
    for i in range(n):
        io, s = rng.sample(names, 2)
        t = templates[i % len(templates)]
        a, b = (io, s) if i % 2 == 0 else (s, io)            # ABBA / BABA
        fill = dict(A=a, B=b, P=rng.choice(PLACES), O=rng.choice(OBJECTS))
        records.append({"clean_prefix": t.format(S=s, **fill), "patch_prefix": t.format(S=io, **fill),
                        "clean_answer": " " + io, "patch_answer": " " + s})
    task = from_records(tok, records, name="ioi")
    task.info["templates"] = list(templates)
    return task
