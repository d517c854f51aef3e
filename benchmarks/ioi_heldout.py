"""Held-out IOI prompts: names, places, objects and templates disjoint from the built-in
`saecircuits.tasks.ioi` generator (which is what recipes are tuned on).

    python3 benchmarks/ioi_heldout.py --n 48 --out benchmarks/ioi_heldout.jsonl

Writes a contrastive JSONL task (feature-circuits format). Clean: ABBA/BABA with the subject
repeated; patch: the repeated name replaced by the indirect object, so the answer flips.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saecircuits.tasks.ioi import NAMES, OBJECTS, PLACES, TEMPLATES, single_token_names  # noqa: E402

HELDOUT_NAMES = ("Hannah Olivia Megan Diana Carol Sandra Donna Sharon Betty Janet Kelly Nicole "
                 "Amanda Melissa Rebecca Martha Gloria Teresa Monica Tina Wendy Ashley Heather "
                 "Diane Joyce Julie Anne Marie Tony Gary Larry Dennis Walter Roger Arthur Harold "
                 "Gregory Samuel Philip Douglas Ronald Kenneth Edward Raymond Justin Aaron Simon "
                 "Victor Oliver Harry Jacob Ethan Noah Kyle Sean Ian Carlos Louis Oscar Tyler").split()
HELDOUT_PLACES = ["beach", "library", "museum", "cafe", "market", "church", "farm", "airport"]
HELDOUT_OBJECTS = ["pen", "cake", "map", "phone", "hat", "coin", "flower", "photo"]
HELDOUT_TEMPLATES = [
    "Yesterday {A} and {B} had lunch at the {P}. Afterwards, {S} sent a {O} to",
    "{A} and {B} were working at the {P}. {S} decided to give the {O} to",
    "At the {P}, {A} and {B} found a {O}. {S} showed it to",
    "The {P} was busy when {A} and {B} arrived, so {S} offered a {O} to",
    "Later that day, {A} and {B} walked into the {P}, and {S} threw the {O} to",
    "On Sunday {A} and {B} visited the {P}. There {S} bought a {O} for",
]
assert not set(HELDOUT_NAMES) & set(NAMES) and not set(HELDOUT_PLACES) & set(PLACES)
assert not set(HELDOUT_OBJECTS) & set(OBJECTS) and not set(HELDOUT_TEMPLATES) & set(TEMPLATES)


def heldout_records(tok, n: int = 48, seed: int = 0, names=HELDOUT_NAMES, places=HELDOUT_PLACES,
                    objects=HELDOUT_OBJECTS, templates=HELDOUT_TEMPLATES) -> list[dict]:
    """`n` IOI records (ABBA/BABA alternating, templates in turn) from the given lists."""
    names = single_token_names(tok, names)
    if len(names) < 20:
        raise SystemExit(f"only {len(names)} held-out names are single tokens (need 20)")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        io, s = rng.sample(names, 2)
        t = templates[i % len(templates)]
        a, b = (io, s) if i % 2 == 0 else (s, io)
        fill = dict(A=a, B=b, P=rng.choice(places), O=rng.choice(objects))
        out.append({"clean_prefix": t.format(S=s, **fill), "patch_prefix": t.format(S=io, **fill),
                    "clean_answer": " " + io, "patch_answer": " " + s})
    return out


def main() -> None:
    from saecircuits import load_model
    from saecircuits.fileio import write_text
    from saecircuits.tasks import from_records, task_accuracy

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/ioi_heldout.jsonl")
    args = ap.parse_args()
    model, tok = load_model(device="cpu")
    records = heldout_records(tok, args.n, args.seed)
    task = from_records(tok, records, name="ioi_heldout")  # validates single tokens, equal lengths
    write_text(args.out, "".join(json.dumps(r) + "\n" for r in records))
    print(json.dumps(task_accuracy(model, tok, task)))


if __name__ == "__main__":
    main()
