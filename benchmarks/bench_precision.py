"""bf16 vs fp32 SAE training step at the same budget on SmolLM2 (issue 17).

Trains the same SAE (TopK or BatchTopK, k 32, 4,608 latents) at one hook point twice from
the same cached activations (same tokens, same order, same seed), once with
`precision="fp32"` and once with `precision="bf16"`, and evaluates both with the same
evaluator on the same held-out tokens. Prints EV / CE-loss score / dead and their differences
(target: |ΔEV|, |ΔCE| ≤ 0.005) and the training-loop seconds of each run (whole runs are not
interleaved: a first fp32 run fills the activation cache, then bf16 and fp32 run back to back
from the cache and are the two compared).

    python benchmarks/bench_precision.py [--tokens 40800] [--eval-tokens 4096] [--arch topk]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=40_800)
    p.add_argument("--eval-tokens", type=int, default=4096)
    p.add_argument("--hook", default="resid.10")
    p.add_argument("--arch", default="topk", choices=["topk", "batchtopk"])
    p.add_argument("--cache", default=None, help="activation cache dir (default: a temp dir)")
    p.add_argument("--json", default=None)
    p.add_argument("--cache-is-full", action="store_true",
                   help="--cache already holds these activations: skip the cache-filling run")
    args = p.parse_args()

    from saecircuits.models import load_model
    from trainers import TrainConfig, default_corpus, evaluate_saes, train_saes

    model, tok = load_model(device="cpu")
    corpus = default_corpus(tok)
    train_part, held_out = corpus.split(0.02, seed=0, min_holdout_tokens=args.eval_tokens)
    cache = args.cache or tempfile.mkdtemp(prefix="bench-precision-cache-")
    results = {}
    runs = ("fp32", "bf16", "fp32") if not args.cache_is_full else ("bf16", "fp32")
    for run, prec in enumerate(runs, start=0 if not args.cache_is_full else 1):  # run 0 fills the cache
        cfg = TrainConfig(hooks=[args.hook], architecture=args.arch, k=32, d_sae=4608,
                          tokens=args.tokens, context=256, holdout=0.0, eval_tokens=0,
                          out=tempfile.mkdtemp(prefix=f"bench-precision-{prec}-"),
                          cache_activations=cache, precision=prec, progress=False)
        start = time.perf_counter()
        saes = train_saes(model, tok, cfg, corpus=train_part)
        train_s = time.perf_counter() - start
        if run == 0:
            print(f"harvest + fp32 training: {train_s:.1f} s", flush=True)
            continue
        m = evaluate_saes(model, tok, saes, held_out, args.eval_tokens, context=256,
                          progress=False)[args.hook]
        results[prec] = {"ev": m["explained_variance"], "ce": m["ce_loss_score"],
                         "kl": m["kl_score"], "dead": m["dead_fraction"], "train_s": train_s,
                         "tokens": m["tokens"]}
        print(prec, results[prec], flush=True)
    a, b = results["fp32"], results["bf16"]
    print(f"\nSmolLM2 {args.hook}, {args.arch} k=32 d_sae=4608, {args.tokens:,} train tokens, "
          f"{a['tokens']:,} held-out tokens")
    print(f"{'':6s} {'EV':>7s} {'CE score':>9s} {'KL score':>9s} {'dead':>6s} {'train s':>8s}")
    for name, r in results.items():
        print(f"{name:6s} {r['ev']:7.4f} {r['ce']:9.4f} {r['kl']:9.4f} {r['dead']:6.1%} {r['train_s']:8.1f}")
    print(f"bf16 - fp32: EV {b['ev'] - a['ev']:+.4f}, CE score {b['ce'] - a['ce']:+.4f} "
          f"(target |Δ| ≤ 0.005); train time ratio bf16/fp32 {b['train_s'] / a['train_s']:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
