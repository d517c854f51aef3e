"""Peak memory of `steer` on SmolLM2: one generate batch vs chunks of `chunk_tokens` (issue 15).

    OMP_NUM_THREADS=1 python benchmarks/bench_steer_memory.py --n 8 64 --chunk-tokens 0 2048

For each n and each chunk budget (0: every prompt in one batch), a fresh subprocess loads
SmolLM2-135M, binds 4 seeded *random* top-k SAEs (resid.4/10/16/23, 2,304 latents, k 32: the
shapes of bench_trace_memory.py) and steers n real-text prompts cut from the README, 14 to
`--max-len` tokens long (the first is always max-len), with one clamp per hook at every
position, `--new` greedy tokens, the baseline run and 2 tracked tokens. Reports the child's peak
RSS (`ru_maxrss`) before steering (model + SAEs loaded) and after, and checks that every
chunked run gives the same ids as the one-batch run of the same n.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOOKS = ["resid.4", "resid.10", "resid.16", "resid.23"]


def make_prompts(tok, n: int, max_len: int, seed: int = 0) -> list[str]:
    """n README excerpts of 14..max_len tokens (prompt 0 is max_len long)."""
    ids = tok((ROOT / "README.md").read_text(encoding="utf-8"))["input_ids"]
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = max_len if i == 0 else 14 + int(rng.random() ** 2 * (max_len - 14))
        start = rng.randrange(0, len(ids) - length - 1)
        out.append(tok.decode(ids[start:start + length]))
    return out


def child(n: int, chunk_tokens: int, new: int, max_len: int, out: Path) -> None:
    import torch

    torch.set_num_threads(1)
    import saecircuits as sc
    from saecircuits.steering import Intervention, steer

    model, tok = sc.load_model(device="cpu")
    saes = sc.SAESet({h: sc.SAE.random(sc.SAEConfig("topk", 576, 2304, k=32, hook=h), seed=i)
                      for i, h in enumerate(HOOKS)})
    prompts = make_prompts(tok, n, max_len)
    lengths = [len(x) for x in tok(prompts)["input_ids"]]
    ivs = [Intervention(h, 100 + i, "set", 8.0) for i, h in enumerate(HOOKS)]
    budget = chunk_tokens if chunk_tokens > 0 else 1 << 40
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    res = steer(model, saes, prompts, ivs, new, tokenizer=tok, track=[" the", "."],
                chunk_tokens=budget)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(json.dumps({
        "n": n, "chunk_tokens": chunk_tokens, "code": sc.__file__, "tokens_min": min(lengths),
        "tokens_mean": sum(lengths) / len(lengths), "tokens_max": max(lengths),
        "rss_loaded_mb": base, "rss_peak_mb": peak, "seconds": seconds,
        "changed": sum(a != b for a, b in zip(res.baseline, res.steered)),
        "steered_ids": res.steered_ids.tolist(), "baseline_ids": res.baseline_ids.tolist()}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--chunk-tokens", type=int, nargs="+", default=[0, 2048],
                    help="budgets to compare; 0 = one batch (default 0 2048)")
    ap.add_argument("--new", type=int, default=8, help="new tokens (default 8)")
    ap.add_argument("--max-len", type=int, default=365, help="longest prompt (default 365)")
    ap.add_argument("--child", nargs=2, type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child[0], args.child[1], args.new, args.max_len, Path(args.out))
        return
    rows = []
    for n in args.n:
        for budget in args.chunk_tokens:
            out = Path(f"/tmp/bench_steer_memory_{os.getpid()}_{n}_{budget}.json")
            env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
            proc = subprocess.run([sys.executable, __file__, "--child", str(n), str(budget),
                                   "--new", str(args.new), "--max-len", str(args.max_len),
                                   "--out", str(out)], env=env)
            if proc.returncode != 0:
                print(f"n={n} chunk_tokens={budget}: child exited {proc.returncode}")
                continue
            row = json.loads(out.read_text())
            out.unlink()
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if not k.endswith("_ids")}), flush=True)
    print("\n| n | chunk_tokens | tokens min/mean/max | RSS loaded MB | peak RSS MB | "
          "peak − loaded MB | steer s | ids = one batch |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = next((o for o in rows if o["n"] == r["n"] and o["chunk_tokens"] == 0), None)
        same = "—" if ref is None or ref is r else str(
            ref["steered_ids"] == r["steered_ids"] and ref["baseline_ids"] == r["baseline_ids"])
        budget = r["chunk_tokens"] or "one batch"
        print(f"| {r['n']} | {budget} | {r['tokens_min']}/{r['tokens_mean']:.0f}/{r['tokens_max']} "
              f"| {r['rss_loaded_mb']:.0f} | {r['rss_peak_mb']:.0f} "
              f"| {r['rss_peak_mb'] - r['rss_loaded_mb']:.0f} | {r['seconds']:.0f} | {same} |")
    for n in args.n:
        one = next((r for r in rows if r["n"] == n and r["chunk_tokens"] == 0), None)
        for r in rows:
            if one is not None and r["n"] == n and r is not one:
                print(f"n={n}: peak RSS one batch / chunk_tokens {r['chunk_tokens']} = "
                      f"{one['rss_peak_mb'] / r['rss_peak_mb']:.2f}x; time ratio "
                      f"{r['seconds'] / one['seconds']:.2f}x")


if __name__ == "__main__":
    main()
