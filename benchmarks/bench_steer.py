"""Steering speed: generation tokens/s with 0, 1 and 10 interventions vs plain HF generate.

All configurations run in the same process on the same prompts and settings, interleaved
round-robin; the figure is the median over --runs runs. Ratio = tokens/s ÷ plain tokens/s.

    python benchmarks/bench_steer.py --runs 5 [--saes /work/saes/smol-topk] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from saecircuits import SAE, SAEConfig, SAESet, load_model
from saecircuits.models import unwrap
from saecircuits.steering import Intervention, steer

PROMPTS = ["The history of the city begins in", "def mean(values):\n    return sum(values",
           "When Mary and John went to the store, John gave a drink to",
           "My favourite recipe for a rainy day is"]


def load_saes(folder: str | None, model) -> SAESet:
    if folder and Path(folder).is_dir():
        return SAESet.load(folder, model=model, hooks=["resid.10", "resid.16"])
    return SAESet({h: SAE.random(SAEConfig("topk", 576, 2304, k=32, hook=h), seed=i)
                   for i, h in enumerate(["resid.10", "resid.16"])})


def interventions(n: int) -> list[Intervention]:
    if n == 1:
        return [Intervention("resid.16", 100, "set", 8.0)]
    modes = [("set", 8.0), ("scale", 2.0), ("add", 3.0), ("ablate", 0.0), ("set", 0.0)]
    return [Intervention("resid.10" if i % 2 else "resid.16", 10 * i + 1, *modes[i % len(modes)],
                         positions="all" if i % 3 else "generated") for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--saes", required=True, help="SAE set trained on SmolLM2 (e.g. the demo's)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(device="cpu")
    saes = load_saes(args.saes, model)
    batch = dict(tok(PROMPTS, return_tensors="pt", padding=True))
    plen, n = batch["input_ids"].shape[1], args.new_tokens

    def plain() -> int:
        with torch.no_grad():
            out = unwrap(model).generate(**batch, max_new_tokens=n, do_sample=False,
                                         pad_token_id=tok.pad_token_id)
        return out.shape[1] - plen

    def steered(k: int):
        def go() -> int:
            res = steer(model, saes, PROMPTS, interventions(k), n, baseline=False, tokenizer=tok)
            return res.steered_ids.shape[1]
        return go

    configs = {"plain HF generate": plain, "nnsight, 0 interventions": steered(0),
               "1 intervention": steered(1), "10 interventions (2 hooks)": steered(10)}
    times: dict[str, list[float]] = {name: [] for name in configs}
    steps: dict[str, int] = {}
    for fn in configs.values():  # warm-up
        fn()
    for _ in range(args.runs):
        for name, fn in configs.items():
            start = time.perf_counter()
            steps[name] = fn()
            times[name].append(time.perf_counter() - start)
    base = len(PROMPTS) * steps["plain HF generate"] / statistics.median(times["plain HF generate"])
    print(f"SmolLM2-135M float32 CPU, {args.threads} thread(s), batch {len(PROMPTS)}, "
          f"{n} new tokens, greedy, KV cache, SAEs: {'trained ' + args.saes if Path(args.saes).is_dir() else 'random'}")
    print(f"{'configuration':30s} {'median s':>9s} {'tokens/s':>9s} {'ratio':>6s}")
    for name in configs:
        rate = len(PROMPTS) * steps[name] / statistics.median(times[name])
        print(f"{name:30s} {statistics.median(times[name]):9.3f} {rate:9.1f} {rate / base:6.2f}")


if __name__ == "__main__":
    main()
