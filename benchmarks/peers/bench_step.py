"""Training step vs sparsify and SAELens, equal work, interleaved (issue 17).

Each implementation runs in its own process (peers inside their own venvs, see setup.sh),
all with the same batch, dead set, thread count and shape; the orchestrator asks them for one
step each in turn, `--rounds` times, so machine noise hits all of them alike. Prints medians,
ratios to our step, and each step as a fraction of the one-GEMM bound
(`[batch×d_in]@[d_in×d_sae]`, fp32 and bf16), which no TopK step can beat. Wall times are the
measure; the CPU-time columns (median process CPU time per step, and the fp32 bound in CPU
time) tell a busy machine's waiting for a core apart from the step's own work.

    bash benchmarks/peers/setup.sh                       # once: venvs under .peer-venvs/
    python benchmarks/peers/bench_step.py [--venvs .peer-venvs] [--rounds 7] [--dead 0.25]

`--before DIR` (another checkout, e.g. `git worktree add /tmp/before main`) adds its `ours-*`
steps as `before-ours-*` rows, interleaved with the rest: before/after in one run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PEER_VENV = {"sparsify-adam": "sparsify", "sparsify-signum": "sparsify", "saelens-adam": "saelens"}


def python_for(impl: str, venvs: Path) -> str | None:
    if impl not in PEER_VENV:
        return sys.executable
    exe = venvs / PEER_VENV[impl] / "bin" / "python"
    return str(exe) if exe.exists() else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--venvs", default=os.environ.get("PEER_VENVS", str(ROOT / ".peer-venvs")))
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--impls", default="ours-fp32,ours-bf16,sparsify-adam,sparsify-signum,saelens-adam,"
                                      "gemm-fp32,gemm-bf16")
    p.add_argument("--json", default=None)
    p.add_argument("--before", default=None, metavar="DIR",
                   help="another checkout whose ours-* steps run as before-ours-* rows")
    p.add_argument("rest", nargs="*", help="passed to step_worker.py (e.g. --dead 0.05 --threads 1)")
    args, extra = p.parse_known_args()
    shape = args.rest + extra
    impls = args.impls.split(",")
    if args.before:
        impls += [f"before-{i}" for i in impls if i.startswith("ours-")]
    workers = {}
    for impl in impls:
        root, name = ROOT, impl
        if impl.startswith("before-"):
            root, name = Path(args.before).resolve(), impl[len("before-"):]
        exe = python_for(name, Path(args.venvs))
        if exe is None:
            print(f"skip {impl}: no venv at {args.venvs}/{PEER_VENV[name]} (run setup.sh)")
            continue
        env = dict(os.environ, PYTHONPATH=str(root), PYTHONWARNINGS="ignore")
        proc = subprocess.Popen([exe, str(root / "benchmarks" / "peers" / "step_worker.py"), name, *shape],
                                env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        workers[impl] = proc
    for impl, proc in list(workers.items()):  # setups run one after another (readline blocks)
        line = "-"
        while line and line.strip() != "ready":  # skip whatever the peer prints on import
            line = proc.stdout.readline()
        if not line:
            print(f"skip {impl}: worker failed to start")
            workers.pop(impl)
    times = {impl: [] for impl in workers}
    cpu = {impl: [] for impl in workers}
    for _ in range(args.rounds):
        for impl, proc in workers.items():
            proc.stdin.write("step\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            while line and not line[:1].isdigit():
                line = proc.stdout.readline()
            wall, *rest = line.split()
            times[impl].append(float(wall))
            cpu[impl].append(float(rest[0]) if rest else float("nan"))
    for proc in workers.values():
        proc.stdin.close()
        proc.wait()
    med = {impl: statistics.median(t) for impl, t in times.items()}
    med_cpu = {impl: statistics.median(t) for impl, t in cpu.items()}
    print(f"shape/options: {' '.join(shape) or 'defaults (batch 4096, d_in 576, d_sae 4608, k 32, dead 0.25, threads 2)'}; "
          f"{args.rounds} interleaved rounds; load average {os.getloadavg()[0]:.1f}")
    print(f"{'step':18s} {'median ms':>10s} {'min ms':>8s} {'ours-fp32 / it':>15s} {'ours-bf16 / it':>15s} "
          f"{'fp32 bound':>10s} {'bf16 bound':>10s} {'cpu ms':>8s} {'fp32 bound (cpu)':>16s}")
    for impl, m in med.items():
        r32 = f"{med['ours-fp32'] / m:.2f}" if "ours-fp32" in med else "-"
        r16 = f"{med['ours-bf16'] / m:.2f}" if "ours-bf16" in med else "-"
        b32 = f"{med['gemm-fp32'] / m:.0%}" if "gemm-fp32" in med else "-"
        b16 = f"{med['gemm-bf16'] / m:.0%}" if "gemm-bf16" in med else "-"
        c = med_cpu[impl]
        c32 = f"{med_cpu['gemm-fp32'] / c:.0%}" if "gemm-fp32" in med_cpu else "-"
        print(f"{impl:18s} {m * 1e3:10.1f} {min(times[impl]) * 1e3:8.1f} {r32:>15s} {r16:>15s} {b32:>10s} "
              f"{b16:>10s} {c * 1e3:8.1f} {c32:>16s}")
    print("(ours / it < 1: ours is faster; bound = one-GEMM time / step time)")
    if args.json:
        Path(args.json).write_text(json.dumps({"shape": shape, "times": times, "cpu": cpu, "median": med,
                                               "median_cpu": med_cpu}, indent=1))


if __name__ == "__main__":
    main()
