"""Lever table for issue 12: which recipe gives SAE features that carry IOI?

For every SAE set (a "recipe"), on a held-out IOI task (names/templates disjoint from the
built-in generator, `benchmarks/ioi_heldout.py`) at one hook point, measure side by side:
  * the Cunningham et al. Fig. 3 curve: fraction of the clean→patch logit-difference change
    recovered by patching the top-n SAE features (n = 16..256) vs the hook's raw dimensions,
    PCA and ICA directions (fit once on the embedded corpus; shared by all recipes);
  * all-feature recovery (every feature from the patch run, error term kept clean);
  * error-node share of the total |effect| (attribution patching, positional nodes, all hooks
    of the set);
  * faithfulness of the top-200-feature circuit (node pruning only) under mean and patch
    evaluation;
  * EV / CE-loss score / dead fraction from the set's metrics.json (held-out corpus text).

    python3 benchmarks/bench_bases.py --recipe code-k32=/tmp/runs/code \
        --recipe code-k128=/tmp/runs/code/variants/k128-x8 --task benchmarks/ioi_heldout.jsonl \
        --hook resid.10 --out benchmarks/results_bases.json
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NS = (16, 32, 64, 128, 256)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if "Model name" in l)
    except (OSError, StopIteration):
        return platform.processor()


def error_share(model, tok, saes, task) -> dict:
    from saecircuits.attribution import ablation as ab
    from saecircuits.attribution.nodes import node_scores

    hooks = ab.ordered_hooks(model, saes)
    states = ab.prepare(model, saes, ab.chunks(tok, task, 64), "patch")
    s = node_scores(model, saes, states, hooks, "attrib", positional=True, progress=False)
    feat = sum(float(s.feature_effect[h].abs().sum()) for h in hooks)
    err = sum(float(s.error_effect[h].abs().sum()) for h in hooks)
    signed_err = sum(float(s.error_effect[h].sum()) for h in hooks)
    signed_all = signed_err + sum(float(s.feature_effect[h].sum()) for h in hooks)
    return {"error_abs_share": err / max(feat + err, 1e-12), "error_signed": signed_err,
            "total_signed": signed_all}


def faithfulness(model, tok, saes, task, top_k: int = 200) -> dict:
    from saecircuits.attribution import trace_circuit

    out = {}
    for ev in ("mean", "patch"):
        _, summary = trace_circuit(model, tok, saes, task, n=len(task), top_k=top_k, edges=False,
                                   eval_ablation=ev, progress=False)
        out[ev] = summary["faithfulness"]
        out["feature_nodes"] = summary["feature_nodes"]
    return out


def sae_metrics(folder: Path, hook: str) -> dict:
    path = folder / "metrics.json"
    if not path.is_file():
        return {}
    m = json.loads(path.read_text()).get(hook, {})
    return {k: m.get(k) for k in ("explained_variance", "ce_loss_score", "dead_fraction", "l0")}


def main() -> None:
    from saecircuits import load_model
    from saecircuits.bases import build_bases, compare_bases
    from saecircuits.sae import SAESet
    from saecircuits.tasks import make_task

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", action="append", required=True, metavar="NAME=DIR")
    ap.add_argument("--task", default="benchmarks/ioi_heldout.jsonl")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--hook", default="resid.10")
    ap.add_argument("--fit-tokens", type=int, default=8192)
    ap.add_argument("--ica-iter", type=int, default=100)
    ap.add_argument("--no-circuit", action="store_true", help="skip error share and faithfulness")
    ap.add_argument("--out", default="benchmarks/results_bases.json")
    args = ap.parse_args()
    model, tok = load_model(device="cpu")
    task = make_task(tok, args.task, n=args.n)
    t0 = time.time()
    baseline = compare_bases(model, tok, task, args.hook,
                             build_bases(model, tok, args.hook, ["raw", "pca", "ica"],
                                         fit_tokens=args.fit_tokens, ica_iter=args.ica_iter), ns=NS)
    rows = {b: {"curve": c} for b, c in baseline.to_dict()["curves"].items()}
    for spec in args.recipe:
        name, _, folder = spec.partition("=")
        saes = SAESet.load(folder, model=model)
        res = compare_bases(model, tok, task, args.hook,
                            build_bases(model, tok, args.hook, ["sae"], sae=saes[args.hook]), ns=NS)
        row = {"dir": folder, "curve": res.to_dict()["curves"]["sae"], "all_features": res.all_features_recovery,
               "d_sae": res.sizes["sae"], **sae_metrics(Path(folder), args.hook)}
        if not args.no_circuit:
            row.update(error_share(model, tok, saes, task))
            row["faithfulness"] = faithfulness(model, tok, saes, task)
        rows[name] = row
        print(name, json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    header = "| recipe | EV | CE score | dead | " + " | ".join(f"n={n}" for n in NS) + \
        " | all features | error share | faith (mean / patch, ≤200 feats) |"
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for name, row in rows.items():
        cells = {p["n"]: p["fraction"] for p in row["curve"]}
        fmt = lambda v: "" if v is None else f"{v:.3f}"
        faith = row.get("faithfulness")
        lines.append(f"| {name} | {fmt(row.get('explained_variance'))} | {fmt(row.get('ce_loss_score'))}"
                     f" | {fmt(row.get('dead_fraction'))} | "
                     + " | ".join(fmt(cells.get(n)) for n in NS)
                     + f" | {fmt(row.get('all_features'))} | {fmt(row.get('error_abs_share'))} | "
                     + (f"{faith['mean']:.3f} / {faith['patch']:.3f}" if faith else "") + " |")
    table = "\n".join(lines)
    print(table)
    result = {"task": args.task, "n_prompts": len(task), "hook": args.hook, "cpu": cpu_model(),
              "metric_clean": baseline.metric_clean, "metric_patch": baseline.metric_patch,
              "seconds": round(time.time() - t0, 1), "rows": rows, "table": table,
              "command": " ".join(sys.argv)}
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
