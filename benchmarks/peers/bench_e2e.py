"""Same-budget end-to-end SAE training vs sparsify and SAELens, one evaluator (issue 17).

One fixed token set, tokenized once and saved as safetensors (`train` [rows, 256] and
`heldout` [rows, 256] input_ids) that every implementation reads: the embedded corpus split
as `benchmarks/bench_train.py` splits it (documents shuffled with seed 0, held-out documents
apart), `--tokens` training tokens as rows of 256 and ⌈eval_tokens / 255⌉ held-out rows.
Each implementation then trains one TopK SAE (k 32, 4,608 latents) on the output of decoder
layer 10 of SmolLM2-135M-Instruct (float32 weights, from the local HF directory) end to end —
model forward to harvest, SAE steps, saving — in its own process and venv (`e2e_worker.py`),
with the same thread count. The runs are SEQUENTIAL (one after another, default order ours,
sparsify, saelens, ours again, so drifting machine load hits both ends); tokens/s = the
training tokens given / (model loaded -> SAE saved). The peers' saved SAEs are then read with
`saecircuits.formats.load_sae` and all SAEs are scored by one evaluator
(`trainers.evaluate_saes`) on the same held-out rows.

    bash benchmarks/peers/setup.sh                   # once: venvs under .peer-venvs/
    python benchmarks/peers/bench_e2e.py [--venvs DIR] [--tokens 204800] [--threads 2] [--json F]
    python benchmarks/peers/bench_e2e.py --tokens 8192 --eval-tokens 2040 --threads 1  # quick check
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))
VENV = {"sparsify": "sparsify", "saelens": "saelens", "saelens-bf16": "saelens"}
CONTEXT, HOOK = 256, "resid.10"


def python_for(impl: str, venvs: Path) -> str | None:
    if impl not in VENV:
        return sys.executable
    exe = venvs / VENV[impl] / "bin" / "python"
    return str(exe) if exe.exists() else None


def make_tokens(tok, path: Path, n_tokens: int, eval_tokens: int) -> dict:
    """Write the fixed token set; returns its description."""
    import torch
    from safetensors.torch import save_file

    from trainers import default_corpus

    corpus = default_corpus(tok)
    train_part, held_out = corpus.split(0.02, seed=0, min_holdout_tokens=eval_tokens)
    rows = n_tokens // CONTEXT
    train = train_part.windows(CONTEXT, seed=0)  # the order bench_train.py's run harvests
    heldout = held_out.windows(CONTEXT, seed=None)  # the windows evaluate_saes would take
    n_eval = math.ceil(eval_tokens / (CONTEXT - 1))
    if train.shape[0] < rows or heldout.shape[0] < n_eval:
        raise SystemExit(f"corpus too short: {train.shape[0]} train / {heldout.shape[0]} held-out rows")
    save_file({"train": train[:rows].contiguous(), "heldout": heldout[:n_eval].contiguous()}, str(path))
    return {"train_rows": rows, "train_tokens": rows * CONTEXT, "heldout_rows": n_eval,
            "heldout_tokens_scored": n_eval * (CONTEXT - 1), "context": CONTEXT,
            "corpus": corpus.fingerprint, "dtype": str(torch.int64)}


def saved_sae(impl: str, out: Path):
    from saecircuits.formats import load_sae
    from saecircuits.sae import load_sae_set

    if impl.startswith("ours"):
        return load_sae_set(out, hooks=[HOOK])[HOOK]
    folder = out / "run" / "layers.10" if impl == "sparsify" else out
    return load_sae(folder, hook=HOOK)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--venvs", default=os.environ.get("PEER_VENVS", str(ROOT / ".peer-venvs")))
    p.add_argument("--tokens", type=int, default=204_800, help="training tokens (rows of 256)")
    p.add_argument("--eval-tokens", type=int, default=20_480)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", default="ours,sparsify,saelens,ours",
                   help="order of the sequential runs: ours | ours-fp32 (no autocast, fp32 step) | "
                        "sparsify | saelens | saelens-bf16 (its autocast_lm=True)")
    p.add_argument("--work", default=None, help="directory for tokens, SAEs and logs (default: temp)")
    p.add_argument("--no-check", action="store_true", help="skip the peers' own held-out EV")
    p.add_argument("--reuse", action="store_true",
                   help="do not train: read the runs already in --work (same --runs) and evaluate them")
    p.add_argument("--eval-runs", default=None, help="indices of the runs to evaluate (default: all)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.tokens % (16 * CONTEXT):
        raise SystemExit(f"--tokens must be a multiple of {16 * CONTEXT} (rows of {CONTEXT}, "
                         "16 rows per batch for ours)")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-e2e-"))
    work.mkdir(parents=True, exist_ok=True)

    import numpy as np
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    from saecircuits.models import load_model
    from trainers import evaluate_saes
    from trainers.corpus import TokenCorpus

    model, tok = load_model(device="cpu")
    data = work / "tokens.safetensors"
    if args.reuse:
        desc = json.loads((work / "token_set.json").read_text())
    else:
        desc = make_tokens(tok, data, args.tokens, args.eval_tokens)
        (work / "token_set.json").write_text(json.dumps(desc))
    print(f"token set: {desc['train_rows']} x {CONTEXT} training tokens, {desc['heldout_rows']} held-out "
          f"rows -> {data}", flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore", OMP_NUM_THREADS=str(args.threads),
               WANDB_MODE="disabled", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    runs = []
    for i, impl in enumerate(args.runs.split(",")):
        exe = python_for(impl, Path(args.venvs))
        if exe is None:
            print(f"skip {impl}: no venv at {args.venvs}/{VENV[impl]} (run setup.sh)")
            runs.append({"impl": impl, "error": "no venv"})
            continue
        out, result, log = work / f"{i}-{impl}", work / f"{i}-{impl}.json", work / f"{i}-{impl}.log"
        if args.reuse:
            done = work / f"{i}-{impl}.run.json"
            runs.append(json.loads(done.read_text()) if done.is_file() else {"impl": impl, "error": "no saved run"})
            continue
        cmd = [exe, str(HERE / "e2e_worker.py"), impl, "--data", str(data), "--out", str(out),
               "--result", str(result), "--threads", str(args.threads)]
        if not args.no_check and not impl.startswith("ours"):
            cmd.append("--check")
        load = os.getloadavg()[0]
        start = time.perf_counter()
        with open(log, "w") as fh:
            rc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
        wall = time.perf_counter() - start
        if rc != 0 or not result.is_file():
            tail = log.read_text().strip().splitlines()[-3:]
            print(f"{impl}: FAILED (exit {rc}); log {log}: {' | '.join(tail)}", flush=True)
            runs.append({"impl": impl, "error": f"exit {rc}", "log": str(log)})
            continue
        r = json.loads(result.read_text())
        r.update(run=i, wall_s=wall, load_before=load, load_after=os.getloadavg()[0], out=str(out), log=str(log))
        runs.append(r)
        (work / f"{i}-{impl}.run.json").write_text(json.dumps(r, default=str))
        print(f"run {i} {impl}: train {r['train_s']:.1f} s ({r['tokens_per_s']:.0f} tok/s), total "
              f"{r['total_s']:.1f} s, process wall {wall:.1f} s, load avg {load:.1f} -> {r['load_after']:.1f}",
              flush=True)

    held = load_file(str(data))["heldout"]  # one document of whole rows: windows() gives them back
    held_corpus = TokenCorpus(held.flatten().numpy().astype(np.int32), np.array([0, held.numel()], np.int64),
                              ["heldout"], None, tok.bos_token_id, "bench-e2e-heldout")
    wanted = None if args.eval_runs is None else {int(x) for x in args.eval_runs.split(",")}
    for r in runs:
        if "error" in r or (wanted is not None and r["run"] not in wanted):
            continue
        start = time.perf_counter()
        sae = saved_sae(r["impl"], Path(r["out"]))
        m = evaluate_saes(model, tok, {HOOK: sae}, held_corpus, desc["heldout_tokens_scored"],
                          context=CONTEXT, progress=False)[HOOK]
        r["eval"] = {k: v for k, v in m.items() if not isinstance(v, dict)}
        print(f"evaluated run {r['run']} {r['impl']} in {time.perf_counter() - start:.0f} s: EV "
              f"{m['explained_variance']:.4f} CE score {m['ce_loss_score']:.4f} dead {m['dead_fraction']:.2%}",
              flush=True)

    ok = [r for r in runs if "eval" in r]
    ours = [r for r in runs if r["impl"] == "ours" and "error" not in r]
    peers = [r for r in runs if not r["impl"].startswith("ours") and "error" not in r]
    fastest_peer = max(peers, key=lambda r: r["tokens_per_s"]) if peers else None
    m0 = ok[0]["eval"] if ok else {}
    print(f"\nEnd to end at the same budget (issue 17): SmolLM2-135M-Instruct {HOOK} (decoder layer 10 "
          f"output), TopK k 32, 4,608 latents; {desc['train_tokens']:,} training tokens "
          f"({desc['train_rows']} rows x {CONTEXT}), identical input_ids for all; one evaluator on "
          f"{desc['heldout_tokens_scored']:,} held-out tokens (CE clean {m0.get('ce_clean', float('nan')):.3f}, "
          f"zero-ablated {m0.get('ce_zero', float('nan')):.3f}); {args.threads} thread(s).")
    print("Runs are SEQUENTIAL (not interleaved), in the order listed; tok/s = training tokens / "
          "(model loaded -> SAE saved).")
    head = (f"{'run':>3s} {'implementation':12s} {'train s':>8s} {'total s':>8s} {'tok/s':>7s} "
            f"{'ours1/it':>8s} {'ours2/it':>8s} {'EV':>6s} {'CE score':>8s} {'KL score':>8s} {'dead':>6s} "
            f"{'L0':>5s} {'own EV':>7s} {'load':>9s}")
    print(head)
    for r in runs:
        if "error" in r:
            print(f"{r.get('run', '-'):>3} {r['impl']:12s} FAILED: {r['error']}")
            continue
        e = r.get("eval", {})
        rat = [f"{o['tokens_per_s'] / r['tokens_per_s']:.2f}" if len(ours) > j else "-"
               for j, o in enumerate(ours[:2])] + ["-"] * (2 - min(2, len(ours)))
        own = r["own"].get("check", {}).get("peer_module_ev")
        print(f"{r['run']:>3d} {r['impl']:12s} {r['train_s']:8.1f} {r['total_s']:8.1f} {r['tokens_per_s']:7.0f} "
              f"{rat[0]:>8s} {rat[1]:>8s} {e.get('explained_variance', float('nan')):6.3f} "
              f"{e.get('ce_loss_score', float('nan')):8.3f} {e.get('kl_score', float('nan')):8.3f} "
              f"{e.get('dead_fraction', float('nan')):6.1%} {e.get('l0', float('nan')):5.1f} "
              f"{'-' if own is None else f'{own:.3f}':>7s} {r['load_before']:4.1f}>{r['load_after']:<4.1f}")
    summary = {}
    if ours and fastest_peer:
        scored = [r for r in peers if "eval" in r]
        best_ev = max((r["eval"]["explained_variance"] for r in scored), default=float("nan"))
        best_ce = max((r["eval"]["ce_loss_score"] for r in scored), default=float("nan"))
        for o in ours:
            e = o.get("eval", {})
            summary[f"ours_run{o['run']}"] = {
                "speed_vs_faster_peer": o["tokens_per_s"] / fastest_peer["tokens_per_s"],
                "ev_minus_best_peer": e.get("explained_variance", float("nan")) - best_ev,
                "ce_minus_best_peer": e.get("ce_loss_score", float("nan")) - best_ce}
        print(f"faster peer: {fastest_peer['impl']} ({fastest_peer['tokens_per_s']:.0f} tok/s); target: ours >= "
              f"1.5x it in tok/s with EV and CE score >= the best peer's")
        for name, s in summary.items():
            print(f"  {name}: {s['speed_vs_faster_peer']:.2f}x the faster peer "
                  f"({'met' if s['speed_vs_faster_peer'] >= 1.5 else 'not met'}); EV {s['ev_minus_best_peer']:+.3f}, "
                  f"CE score {s['ce_minus_best_peer']:+.3f} vs the best peer (nan: not evaluated)")
    print("(ours/it > 1: ours is faster; own EV = the peer's own SAE module on the same held-out "
          "activations, a check of the conversion and the evaluator)")
    if args.json:
        Path(args.json).write_text(json.dumps({"token_set": desc, "threads": args.threads, "order": args.runs,
                                               "sequential": True, "runs": runs, "summary": summary},
                                              indent=1, default=str))


if __name__ == "__main__":
    main()
