"""Precision by CPU class (issue 24): training tokens/s and the demo's first run, fp32 vs auto.

    python benchmarks/bench_cpu_class.py [--tokens 20400] [--rounds 3] [--demo] [--threads 2]

1. Training throughput: the demo's recipe (its SAE hooks and skip transcoders at every MLP, one
   harvest) trained on `--tokens` tokens with `precision="fp32"` and with `"auto"`, alternating
   fp32 / auto for `--rounds` rounds (same tokens, same seed, no evaluation); tokens/s of the
   training loop (harvest + steps) as `train_saes` records it. Prints medians and the ratio.
2. With `--demo`: `saecircuits demo` from an empty dictionary cache (the converted model and the
   tokenized corpus are linked in, as on any machine after the first model load), once with
   `--precision fp32` and once with `auto`; wall time of each and the ratio.

Prints the CPU model, the bf16 flags and what `auto` resolved to (with its calibration), so a
row of benchmarks/RESULTS.md names the CPU class it came from.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def fresh_cache(root: Path) -> dict:
    """An empty saecircuits cache with the model and corpus folders linked from the real one."""
    from saecircuits.models import cache_dir

    root.mkdir(parents=True, exist_ok=True)
    for shared in ("models", "corpus", "precision.json"):
        if (cache_dir() / shared).exists() and not (root / shared).exists():
            (root / shared).symlink_to(cache_dir() / shared)
    return {**os.environ, "SAECIRCUITS_CACHE": str(root)}


def train_rate(precision: str, tokens: int) -> float:
    from saecircuits.configs import DemoConfig
    from saecircuits.models import load_model
    from trainers import train_saes

    model, tok = load_model(device="cpu")
    cfg = DemoConfig(tokens=tokens, precision=precision).train_config()
    cfg.eval_tokens, cfg.progress = 0, False
    with tempfile.TemporaryDirectory() as tmp:
        cfg.out = tmp
        saes = train_saes(model, tok, cfg)
    meta = next(iter(saes.values())).cfg.metadata
    return float(meta["train_tokens_per_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=20_400)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--demo", action="store_true", help="also time two full demo first runs")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from saecircuits.precision import resolve

    auto = resolve("auto", torch.device("cpu"))
    flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
             if f in Path("/proc/cpuinfo").read_text().split()]
    report = {"cpu": cpu_model(), "flags": flags, "threads": args.threads, "auto": auto.record()}
    print(f"CPU {report['cpu']} ({', '.join(flags)}), {args.threads} threads; auto -> {auto.name} ({auto.reason})",
          flush=True)

    if not args.skip_train:
        rates: dict[str, list[float]] = {"fp32": [], "auto": []}
        for r in range(args.rounds):
            for prec in ("fp32", "auto"):
                rate = train_rate(prec, args.tokens)
                rates[prec].append(rate)
                print(f"  round {r + 1}: train {prec}: {rate:,.0f} tokens/s", flush=True)
        med = {k: statistics.median(v) for k, v in rates.items()}
        report["train_tokens_per_s"] = {"runs": rates, "median": med, "auto_over_fp32": med["auto"] / med["fp32"]}
        print(f"training (demo recipe, {args.tokens:,} tokens): fp32 {med['fp32']:,.0f} tok/s, auto "
              f"{med['auto']:,.0f} tok/s, auto / fp32 {med['auto'] / med['fp32']:.2f}x", flush=True)

    if args.demo:
        walls = {}
        for prec in ("auto", "fp32"):
            with tempfile.TemporaryDirectory() as tmp:
                env = fresh_cache(Path(tmp) / "cache")
                env["OMP_NUM_THREADS"] = str(args.threads)
                log = HERE / "logs" / f"demo_first_run_{prec}.log"
                began = time.perf_counter()
                with open(log, "w") as fh:
                    proc = subprocess.run([sys.executable, "-m", "saecircuits", "demo", "--precision", prec,
                                           "--out", str(Path(tmp) / "out")], stdout=fh, stderr=subprocess.STDOUT,
                                          env=env)
                walls[prec] = time.perf_counter() - began
                print(f"  demo first run --precision {prec}: {walls[prec]:.0f} s (exit {proc.returncode}; log {log})",
                      flush=True)
        report["demo_first_run_s"] = walls
        print(f"demo first run: fp32 {walls['fp32'] / 60:.1f} min, auto {walls['auto'] / 60:.1f} min, "
              f"fp32 / auto {walls['fp32'] / walls['auto']:.2f}x", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
