"""Replacement graphs of transcoder sets on held-out IOI and parens prompts.

    python benchmarks/bench_replacement.py --transcoders DIR [DIR ...] [--n 8] [--threads 1]
        [--eval-tokens 4096] [--intervention 10] [--json OUT.json]

For each transcoder set (every MLP of SmolLM2): the replacement model's joint metrics on held-out
text (every MLP replaced, error terms off: CE-loss score and KL against zero-ablating every MLP;
per-layer FVU of the MLP outputs, L0, dead fraction), then one attribution graph per prompt
(benchmarks/ioi_heldout.jsonl, benchmarks/parens_heldout.jsonl: names and templates never used to
choose a recipe; top logits up to 0.95 probability as targets): replacement and completeness
scores (circuit-tracer's), error share of the influence, nodes, time per graph, the linearity
check (invariant 10) and, with --intervention K, Pearson r between the graph's predicted and the
unfrozen model's measured logit change when each of the K most influential features is ablated.
Prints medians per set and task.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def prompts(path: Path, n: int) -> list[str]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["clean_prefix"] for r in rows[:n]]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--transcoders", nargs="+", required=True)
    p.add_argument("--n", type=int, default=8, help="prompts per task")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-tokens", type=int, default=4096, help="0: skip the joint metrics")
    p.add_argument("--intervention", type=int, default=10, help="features ablated per graph (0: off)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from saecircuits import load_model
    from saecircuits.attribution.graphs import attribute, intervention_check
    from saecircuits.sae import SAESet
    from trainers.corpus import load_corpus
    from trainers.evaluate import JOINT, evaluate_saes

    model, tok = load_model()
    tasks = {"ioi": prompts(HERE / "ioi_heldout.jsonl", args.n),
             "parens": prompts(HERE / "parens_heldout.jsonl", args.n)}
    report = {"cpu_threads": args.threads, "precision": args.precision, "sets": {}}
    for folder in args.transcoders:
        tcs = SAESet.load(folder, model=model)
        entry: dict = {"folder": folder}
        first = next(iter(tcs.values())).cfg
        entry["recipe"] = {"architecture": first.architecture, "k": first.k, "d_sae": first.d_sae,
                           "skip": first.skip, "tokens": first.metadata.get("tokens")}
        if args.eval_tokens:
            held = load_corpus(tok, "embedded-mix:0.7").split(0.02, 0, min_holdout_tokens=args.eval_tokens)[1]
            m = evaluate_saes(model, tok, tcs, held, args.eval_tokens, per_site_ce=False, joint=True,
                              precision=args.precision, progress=False)
            joint = m.pop(JOINT)
            entry["joint"] = {k: v for k, v in joint.items() if k != "precision"}
            entry["per_layer"] = {name: {k: m[name][k] for k in ("explained_variance", "l0", "dead_fraction")}
                                  for name in m}
            print(f"{folder}: replacement model CE score {joint['ce_loss_score']:.3f}, KL {joint['kl_joint']:.3f} "
                  f"(zero-ablated MLPs {joint['kl_zero']:.3f}); EV median "
                  f"{median([v['explained_variance'] for v in entry['per_layer'].values()]):.3f}", flush=True)
        for task, texts in tasks.items():
            rows = []
            for text in texts:
                began = time.perf_counter()
                g = attribute(model, tok, tcs, text, batch_size=args.batch_size, precision=args.precision,
                              progress=False)
                seconds = time.perf_counter() - began
                rep, comp = g.scores()
                row = {"prompt": text, "replacement": rep, "completeness": comp, "error_share": g.error_share(),
                       "features": g.n_features, "tokens": g.n_pos, "seconds": round(seconds, 2),
                       "linearity_error": g.linearity_error(), "top_logit": g.logit_labels[0],
                       "top_prob": float(g.logit_probs[0])}
                if args.intervention:
                    check = intervention_check(model, tok, tcs, g, top=args.intervention)
                    row.update(pearson_total=check["pearson_total"], pearson_direct=check["pearson_direct"])
                rows.append(row)
                print(f"  {task}: {text[:50]!r}: replacement {rep:.3f} completeness {comp:.3f} error share "
                      f"{row['error_share']:.2f} features {g.n_features} {seconds:.1f}s"
                      + (f" r {row.get('pearson_total')}" if args.intervention else ""), flush=True)
            entry[task] = {"graphs": rows, **{f"median_{k}": median([r.get(k) for r in rows])
                                              for k in ("replacement", "completeness", "error_share", "seconds",
                                                        "pearson_total", "pearson_direct", "linearity_error")}}
            print(f"  {task} medians: " + ", ".join(f"{k[7:]} {v:.3f}" for k, v in entry[task].items()
                                                      if k.startswith("median_") and v is not None), flush=True)
        report["sets"][folder] = entry
    text = json.dumps(report, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
