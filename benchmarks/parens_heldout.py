"""Held-out closing-parenthesis prompts: templates disjoint from the built-in
`saecircuits.tasks.parens` generator (which is what recipes are tuned on).

    python3 benchmarks/parens_heldout.py --n 40 --out benchmarks/parens_heldout.jsonl

Writes a contrastive JSONL task (feature-circuits format): clean prompts end where ")" is due;
patch prompts turn the open round brackets into square ones (same token length).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saecircuits.tasks.parens import CODE, PROSE  # noqa: E402

HELDOUT_CODE = [
    "value = round(float({a}",
    "out.append(str({a}",
    "assert isinstance({a}, list",
    "mean = sum({a}) / len({b}",
    "path = os.path.join(root, str({a}",
    "return sorted(set({a}",
]
HELDOUT_PROSE = [
    "The old castle (built around {y}",
    "Our main result (Theorem {n}",
    "The second edition (printed in {y}",
    "The last {w} (mapped in {y}",
    "His first film (released in {y}",
]
VARS = ["items", "rows", "names", "scores", "keys", "parts", "xs", "buf"]
WORDS = ["glacier", "village", "comet", "harbour"]
assert not set(HELDOUT_CODE) & set(CODE) and not set(HELDOUT_PROSE) & set(PROSE)


def heldout_records(tok, n: int = 40, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out, tries = [], 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n:
            raise RuntimeError("could not make equal-length prompt pairs")
        if len(out) % 2 == 0:
            a, b = rng.sample(VARS, 2)
            text = rng.choice(HELDOUT_CODE).format(a=a, b=b)
        else:
            text = rng.choice(HELDOUT_PROSE).format(n=rng.randint(1, 9), y=rng.randint(1900, 2020),
                                                    w=rng.choice(WORDS))
        other = text.replace("(", "[")
        if len(tok(text)["input_ids"]) != len(tok(other)["input_ids"]) or text in {r["clean_prefix"] for r in out}:
            continue
        out.append({"clean_prefix": text, "patch_prefix": other, "clean_answer": ")", "patch_answer": "]"})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).with_name("parens_heldout.jsonl")))
    args = p.parse_args()
    from saecircuits import load_model

    _, tok = load_model()
    rows = heldout_records(tok, args.n, args.seed)
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} prompts to {args.out}")


if __name__ == "__main__":
    main()
