"""Closing parentheses: nested brackets in code and prose where ")" is due next.

Clean prompt: an open "(" awaits closing (e.g. "y = abs(min(a, b"). Patch prompt: the same text
with the open round brackets turned into square ones ("y = abs[min[a, b"): same token length,
but the next token is no longer ")". Metric: logsumexp of the logits of every token that
starts with ")" (SmolLM2 merges "))", ")." ...) minus the best other token.
"""
from __future__ import annotations

import random

import torch

from ..errors import TaskError
from .base import Task, n_tokens

CODE = [
    "y = abs(min({a}, {b}",
    "total = sum(map(int, {a}",
    "print(len({a}",
    "result = max(abs({a}), abs({b}",
    "if len({a}) > len({b}",
    "z = sqrt(pow({a}, 2) + pow({b}, 2",
]
PROSE = [
    "The results (shown in Table {n}",
    "The samples (collected in {y}",
    "This effect (see Figure {n}",
    "The {w} (first reported in {y}",
    "Her second novel (published in {y}",
]
VARS = ["x", "y", "a", "b", "data", "values", "count", "items", "n", "total", "size", "width"]
WORDS = ["species", "building", "theorem", "protein", "river", "bridge"]


def closing_ids(tok) -> list[int]:
    """Every vocabulary token whose text starts with ')'."""
    ids = [i for tok_text, i in tok.get_vocab().items()
           if tok.convert_tokens_to_string([tok_text]).startswith(")")]
    if not ids:
        raise TaskError("the tokenizer has no token starting with ')'")
    return sorted(ids)


def parens_task(tok, n: int = 64, seed: int = 0) -> Task:
    rng = random.Random(seed)
    clean, patch = [], []
    tries = 0
    while len(clean) < n:
        tries += 1
        if tries > 50 * n:
            raise TaskError("could not generate equal-length parens prompt pairs")
        if len(clean) % 2 == 0:
            a, b = rng.sample(VARS, 2)
            text = rng.choice(CODE).format(a=a, b=b)
        else:
            text = rng.choice(PROSE).format(n=rng.randint(1, 9), y=rng.randint(1900, 2020),
                                            w=rng.choice(WORDS))
        other = text.replace("(", "[")
        if n_tokens(tok, text) != n_tokens(tok, other):
            continue
        clean.append(text)
        patch.append(other)
    group = closing_ids(tok)
    return Task(name="parens", clean=clean, patch=patch,
                clean_ids=torch.full((n,), group[0]), patch_ids=torch.full((n,), group[0]),
                metric_kind="group_vs_rest", group_ids=group,
                info={"group_size": len(group)})
