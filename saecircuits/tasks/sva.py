"""Subject–verb agreement: "The key to the cabinets" -> " is" vs "The keys to the cabinets" -> " are".

Half the clean prompts have a singular subject (answer " is", patch plural), half a plural one
(answer " are", patch singular). Metric: logit(clean verb) − logit(patch verb).
"""
from __future__ import annotations

import random

from .base import Task, from_records

NOUNS = [("key", "keys"), ("author", "authors"), ("doctor", "doctors"), ("teacher", "teachers"),
         ("dog", "dogs"), ("student", "students"), ("manager", "managers"), ("painting", "paintings"),
         ("car", "cars"), ("girl", "girls"), ("boy", "boys"), ("farmer", "farmers")]
ATTRACTORS = ["cabinets", "houses", "tables", "companies", "windows", "schools", "rivers", "books"]
TEMPLATES = ["The {N} near the {X}", "The {N} of the {X}", "The {N} behind the {X}",
             "The {N} next to the {X}"]


def sva_task(tok, n: int = 64, seed: int = 0) -> Task:
    rng = random.Random(seed)
    records = []
    for i in range(n):
        sing, plur = rng.choice(NOUNS)
        t, x = TEMPLATES[i % len(TEMPLATES)], rng.choice(ATTRACTORS)
        clean, patch, ca, pa = (sing, plur, " is", " are") if i % 2 == 0 else (plur, sing, " are", " is")
        records.append({"clean_prefix": t.format(N=clean, X=x), "patch_prefix": t.format(N=patch, X=x),
                        "clean_answer": ca, "patch_answer": pa})
    return from_records(tok, records, name="sva")
