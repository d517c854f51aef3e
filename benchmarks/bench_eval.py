"""`evaluate_saes` before/after sharing the clean forward, interleaved in one run (issue 17).

Demo recipe: SmolLM2, 4 TopK SAEs (d_sae 2,304, k 32) at resid.4/10/16/23, 4,096 held-out
tokens of the embedded corpus, context 256, batch 4. Evaluation cost does not depend on what
the SAEs learned, so by default the SAEs are random (unit-norm decoder, encoder = decoderᵀ);
`--saes DIR` evaluates a saved set instead. Alternates share_clean=False (the old path: one
clean trace + a spliced and a zero-ablated full trace per hook) and share_clean=True, prints
medians, the speed-up, and the largest metric difference between the two paths.

    python benchmarks/bench_eval.py [--rounds 2] [--eval-tokens 4096] [--saes DIR]
        [--compare share|autocast]

`--compare autocast` alternates fp32 and bf16-autocast forwards (both sharing the clean forward)
and prints every metric's difference (train scores its SAEs under its harvesting dtype).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def random_saes(model, hook_names, d_sae: int, k: int):
    from saecircuits import hooks
    from saecircuits.sae import SAE, SAEConfig, SAESet

    out = {}
    for i, name in enumerate(hook_names):
        width = hooks.resolve(model, name).width
        sae = SAE(SAEConfig(architecture="topk", d_in=width, d_sae=d_sae, k=k, hook=name))
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            w = torch.randn(d_sae, width, generator=gen)
            sae.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
            sae.W_enc.copy_(sae.W_dec.T)
        out[name] = sae
    return SAESet(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--eval-tokens", type=int, default=4096)
    p.add_argument("--hooks", default="resid.4,resid.10,resid.16,resid.23")
    p.add_argument("--saes", default=None)
    p.add_argument("--compare", choices=("share", "autocast"), default="share",
                   help="share: old separate traces vs the shared clean forward (fp32); autocast: "
                        "fp32 vs bf16 forwards, both with the shared clean forward")
    args = p.parse_args()

    from saecircuits.models import load_model
    from saecircuits.sae import SAESet
    from trainers import default_corpus, evaluate_saes

    model, tok = load_model(device="cpu")
    held_out = default_corpus(tok).split(0.02, seed=0, min_holdout_tokens=args.eval_tokens)[1]
    saes = SAESet.load(args.saes, model=model) if args.saes else \
        random_saes(model, args.hooks.split(","), 2304, 32)
    times = {False: [], True: []}
    metrics = {}
    for _ in range(args.rounds):
        for new_path in (False, True):
            kw = (dict(share_clean=new_path) if args.compare == "share" else
                  dict(precision="bf16" if new_path else "fp32"))
            start = time.perf_counter()
            metrics[new_path] = evaluate_saes(model, tok, saes, held_out, args.eval_tokens,
                                              context=256, progress=False, **kw)
            times[new_path].append(time.perf_counter() - start)
    old, new = statistics.median(times[False]), statistics.median(times[True])
    print(f"hooks {list(saes)}, {args.eval_tokens:,} tokens, threads {torch.get_num_threads()}, "
          f"{args.rounds} interleaved rounds, load average {os.getloadavg()[0]:.1f}")
    names = (("old (separate traces)", "new (shared clean forward, batched from block L+1)")
             if args.compare == "share" else ("fp32 forwards", "bf16 autocast forwards"))
    print(f"{names[0]}: {old:.1f} s  {[round(t, 1) for t in times[False]]}")
    print(f"{names[1]}: {new:.1f} s  {[round(t, 1) for t in times[True]]}")
    print(f"speed-up {old / new:.2f}x")
    for k in ("explained_variance", "ce_loss_score", "kl_score", "ce_clean", "dead_fraction"):
        diffs = {h: metrics[True][h][k] - metrics[False][h][k] for h in metrics[True]}
        print(f"  {k}: second − first = " + ", ".join(f"{h} {d:+.4f}" for h, d in diffs.items())
              + f"  (largest |diff| {max(abs(d) for d in diffs.values()):.2e})")


if __name__ == "__main__":
    main()
