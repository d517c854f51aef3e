"""Foundation benchmark: SmolLM2 cold vs cached load, spliced vs bare forward.

    python benchmarks/bench_foundation.py [--runs 7] [--batch 8] [--seq 128] [--skip-cold]

Prints medians and ratios measured side by side in one run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

# times load_model() in a fresh process (after `import saecircuits`; transformers' lazy
# imports of the model classes happen inside load_model and are counted)
LOAD_SNIPPET = ("import time, saecircuits as sc; t=time.perf_counter(); sc.load_model(device='cpu'); "
                "print(time.perf_counter()-t)")


def timed_load(cache: str | None) -> float:
    env = dict(os.environ)
    if cache:
        env["SAECIRCUITS_CACHE"] = cache
    out = subprocess.run([sys.executable, "-c", LOAD_SNIPPET], env=env, check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--skip-cold", action="store_true")
    args = parser.parse_args()

    import saecircuits as sc

    if not args.skip_cold:
        with tempfile.TemporaryDirectory() as fresh:
            cold = timed_load(fresh)  # dequantizes the GGUF and writes the cache
            cached = statistics.median(timed_load(fresh) for _ in range(3))
        print(f"load_model() SmolLM2 in a new process: cold {cold:.1f} s, "
              f"cached median {cached:.1f} s, ratio {cold / cached:.1f}x")

    model, tok = sc.load_model(device="cpu")
    hooks = ["resid.4", "resid.10", "resid.16", "resid.20", "resid.23", "resid.26"]
    saes = sc.SAESet({h: sc.SAE.random(sc.SAEConfig("topk", 576, 4608, k=32, hook=h), seed=i)
                      for i, h in enumerate(hooks)})
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(tok), (args.batch, args.seq), generator=gen)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    hf = sc.models.unwrap(model)

    def plain():
        with torch.no_grad():
            hf(**inputs)

    def bare_trace():
        sc.spliced_logits(model, None, inputs)

    def spliced():
        sc.spliced_logits(model, saes, inputs)

    timings = {name: [] for name in ("hf", "trace", "spliced")}
    spliced(); plain()  # warm-up
    for _ in range(args.runs):  # interleaved so drift hits all three alike
        for name, fn in (("hf", plain), ("trace", bare_trace), ("spliced", spliced)):
            start = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in timings.items()}
    tokens = args.batch * args.seq
    print(f"forward {args.batch}x{args.seq} tokens, median of {args.runs} (threads={torch.get_num_threads()}):")
    print(f"  plain HF forward       {med['hf']*1e3:8.1f} ms  ({tokens/med['hf']:.0f} tok/s)")
    print(f"  nnsight trace, no SAE  {med['trace']*1e3:8.1f} ms  ratio to plain {med['trace']/med['hf']:.3f}")
    print(f"  6 SAEs spliced (4608)  {med['spliced']*1e3:8.1f} ms  ratio to plain {med['spliced']/med['hf']:.3f}, "
          f"to bare trace {med['spliced']/med['trace']:.3f}")


if __name__ == "__main__":
    main()
