"""Peak memory of `trace_circuit` on SmolLM2 against the number of prompts (issue 15, finding 1).

    python benchmarks/bench_trace_memory.py --n 16 64 --code . /work/main

For each code tree and each n, a fresh subprocess (PYTHONPATH = that tree) loads SmolLM2-135M,
binds 4 seeded *random* top-k SAEs (resid.4/10/16/23, 2,304 latents, k 32: the shapes of the
issue; random weights are enough for memory) and traces a task of n real-text prompts cut from
the repository's README, 14 to `--max-len` tokens long (default 365: mean ~130, as
in the issue; the longest is always max-len, so every prompt is padded to it). Reports the child's peak RSS
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`) before tracing (model + SAEs loaded) and after.
Method attrib, mean ablation (no patch prompts), top_k 20, edges on, batch_size 32.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOOKS = ["resid.4", "resid.10", "resid.16", "resid.23"]


def _text() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def make_jsonl(tok, n: int, path: Path, seed: int = 0, max_len: int = 365) -> None:
    import random

    ids = tok(_text())["input_ids"]
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        length = max_len if i == 0 else 14 + int(rng.random() ** 2 * (max_len - 14))
        start = rng.randrange(0, len(ids) - length - 1)
        prefix = tok.decode(ids[start:start + length - 1])
        rows.append({"clean_prefix": prefix, "patch_prefix": None, "clean_answer": " the",
                     "patch_answer": " a"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def child(n: int, top_k: int, out: Path, max_len: int, chunk_tokens: int) -> None:
    import torch

    torch.set_num_threads(1)
    import saecircuits as sc
    from saecircuits.attribution import trace_circuit
    from saecircuits.tasks import make_task

    model, tok = sc.load_model(device="cpu")
    saes = sc.SAESet({h: sc.SAE.random(sc.SAEConfig("topk", 576, 2304, k=32, hook=h), seed=i)
                      for i, h in enumerate(HOOKS)})
    jsonl = out.with_suffix(".jsonl")
    make_jsonl(tok, n, jsonl, max_len=max_len)
    task = make_task(tok, str(jsonl), n=n)
    lengths = [len(x) for x in tok(task.clean)["input_ids"]]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    _, summary = trace_circuit(model, tok, saes, task, method="attrib", ablation="mean",
                               n=n, top_k=top_k, batch_size=32, chunk_tokens=chunk_tokens,
                               progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(json.dumps({
        "n": n, "chunk_tokens": chunk_tokens, "code": sc.__file__, "tokens_min": min(lengths), "tokens_max": max(lengths),
        "tokens_mean": sum(lengths) / len(lengths), "rss_loaded_mb": base, "rss_peak_mb": peak,
        "seconds": time.perf_counter() - t, "faithfulness": summary["faithfulness"],
        "feature_nodes": summary["feature_nodes"], "edges": summary["edges"]}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--code", nargs="+", default=[str(ROOT)])
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--max-len", type=int, default=365, help="longest prompt (default 365)")
    ap.add_argument("--chunk-tokens", type=int, default=256, help="trace chunk_tokens (default 256)")
    ap.add_argument("--child", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child, args.top_k, Path(args.out), args.max_len, args.chunk_tokens)
        return
    rows = []
    for code in args.code:
        for n in args.n:
            out = Path(f"/tmp/bench_trace_memory_{os.getpid()}_{n}.json")
            env = {**os.environ, "PYTHONPATH": str(Path(code).resolve()), "OMP_NUM_THREADS": "1"}
            proc = subprocess.run([sys.executable, __file__, "--child", str(n), "--out", str(out),
                                   "--top-k", str(args.top_k), "--max-len", str(args.max_len),
                                   "--chunk-tokens", str(args.chunk_tokens)], env=env)
            if proc.returncode != 0:
                print(f"{code} n={n}: child exited {proc.returncode}")
                continue
            row = json.loads(out.read_text())
            row["tree"] = code
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| code | n | chunk tokens | tokens min/mean/max | RSS loaded MB | peak RSS MB | trace s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tree']} | {r['n']} | {r['chunk_tokens']} | {r['tokens_min']}/{r['tokens_mean']:.0f}/{r['tokens_max']} "
              f"| {r['rss_loaded_mb']:.0f} | {r['rss_peak_mb']:.0f} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
