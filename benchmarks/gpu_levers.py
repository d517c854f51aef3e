"""Issue 12 levers at a budget a 2-core CPU cannot afford: corpus, k, width, KL fine-tuning and
layout, each measured on held-out IOI prompts (`benchmarks/ioi_heldout.jsonl`: names and
templates disjoint from the built-in generator and from anything used to choose recipes).

Per recipe, at `--hook` (resid.10): the Cunningham et al. Fig. 3 curves (fraction of the
clean→patch logit-difference change recovered by patching the top-n units of SAE / raw / PCA /
ICA bases) and all-feature recovery; then for a 4-hook residual stack: error-node share of
|effect| and faithfulness of the ≤200-feature IOI circuit under mean and patch evaluation,
before and after a KL fine-tune of the whole stack.

    python3 benchmarks/gpu_levers.py --device cuda --tokens 2000000 --out $OUT/levers.json

On a CPU, start from an existing 4-hook stack (e.g. the demo's cached SAEs) and run only the
steps a 2-core machine affords:

    python3 benchmarks/gpu_levers.py --device cpu --steps baselines,stack,kl,layout \
        --saes ~/.cache/saecircuits/saes/demo-<key> --kl-tokens 40000 --tokens 200000 \
        --out benchmarks/results_cpu_levers.json

Steps: baselines (raw/PCA/ICA curves), single (corpus × k × width at --hook), stack (circuit
numbers of the 4-hook residual stack: trained here, or --saes), kl (the stack after a KL
fine-tune), layout (attention + MLP output SAEs at --layout-hooks, trained in one pass).
Every basis curve is measured with both rankings (dataset-level and per-prompt top n).

Every finished step rewrites the JSON (partial results survive a time-out); `--time-limit`
skips the remaining steps once spent.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NS = (16, 32, 64, 128, 256)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokens", type=int, default=2_000_000)
    ap.add_argument("--stack-tokens", type=int, default=None, help="default: --tokens")
    ap.add_argument("--kl-tokens", type=int, default=200_000)
    ap.add_argument("--hook", default="resid.10")
    ap.add_argument("--stack", default="resid.4,resid.10,resid.16,resid.23")
    ap.add_argument("--task", default="benchmarks/ioi_heldout.jsonl")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--fit-tokens", type=int, default=16384)
    ap.add_argument("--work", default="/tmp/levers")
    ap.add_argument("--out", required=True)
    ap.add_argument("--time-limit", type=float, default=1e9)
    ap.add_argument("--model-batch", type=int, default=64)
    ap.add_argument("--kl-batch", type=int, default=32)
    ap.add_argument("--steps", default="baselines,single,stack,kl")
    ap.add_argument("--saes", default=None, help="use this 4-hook stack instead of training one")
    ap.add_argument("--layout-hooks", default="attn.4,mlp.4,attn.10,mlp.10,attn.16,mlp.16,attn.23,mlp.23")
    ap.add_argument("--layout-k", type=int, default=64)
    ap.add_argument("--stack-k", type=int, default=64)
    args = ap.parse_args()
    steps = set(args.steps.split(","))

    import torch

    from saecircuits import load_model
    from saecircuits.attribution import trace_circuit
    from saecircuits.attribution import ablation as ab
    from saecircuits.attribution.nodes import node_scores
    from saecircuits.bases import build_bases, compare_bases
    from saecircuits.replacement import ReplacementModel
    from saecircuits.sae import SAESet
    from saecircuits.tasks import make_task
    from trainers import TrainConfig, train_saes
    from trainers.kl_finetune import KLFinetuneConfig, kl_finetune

    t0 = time.time()
    out: dict = {"args": vars(args), "device_name": torch.cuda.get_device_name()
                 if args.device.startswith("cuda") else "cpu", "steps": {}}

    def save(step: str, value) -> None:
        out["steps"][step] = value
        out["elapsed_s"] = round(time.time() - t0, 1)
        Path(args.out).write_text(json.dumps(out, indent=1, default=str))
        print(f"[{time.time() - t0:7.1f}s] {step}: {json.dumps(value, default=str)[:400]}",
              flush=True)

    def time_left() -> bool:
        return time.time() - t0 < args.time_limit

    model, tok = load_model(device=args.device)
    task = make_task(tok, args.task, n=args.n)
    if "baselines" in steps:
        dense = build_bases(model, tok, args.hook, ["raw", "pca", "ica"], fit_tokens=args.fit_tokens)
        for rank in ("dataset", "prompt"):
            base = compare_bases(model, tok, task, args.hook, dense, ns=NS, rank=rank)
            save(f"baselines/{rank}", {"metric_clean": base.metric_clean,
                                       "metric_patch": base.metric_patch, "curves": base.to_dict()["curves"]})

    def bases_row(sae) -> dict:
        row = {}
        for rank in ("dataset", "prompt"):
            res = compare_bases(model, tok, task, args.hook,
                                build_bases(model, tok, args.hook, ["sae"], sae=sae), ns=NS, rank=rank)
            row[f"curve_{rank}"] = res.to_dict()["curves"]["sae"]
            row["all_features"], row["d_sae"] = res.all_features_recovery, res.sizes["sae"]
        return row

    def metrics_of(folder: Path) -> dict:
        path = folder / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    single = {}
    for corpus_name, corpus in (("code", None), ("mix", "embedded-mix:0.7")):
        if not time_left() or "single" not in steps:
            break
        folder = Path(args.work) / f"single-{corpus_name}"
        cfg = TrainConfig(hooks=[args.hook], k=[32, 64, 128], expansion=[8, 32],
                          tokens=args.tokens, corpus=corpus, out=str(folder), progress=False,
                          model_batch=args.model_batch, device=args.device, eval_tokens=8192)
        t = time.time()
        train_saes(model, tok, cfg)
        train_s = time.time() - t
        sets = {"k32-x8": folder} | {p.name: p for p in sorted((folder / "variants").glob("*"))}
        for name, path in sets.items():
            saes = SAESet.load(path, model=model)
            row = bases_row(saes[args.hook])
            m = metrics_of(path).get(args.hook, {})
            row.update({k: m.get(k) for k in ("explained_variance", "ce_loss_score", "dead_fraction")})
            single[f"{corpus_name}/{name}"] = row
            save(f"single/{corpus_name}/{name}", {**row, "train_s": round(train_s, 1)})

    def circuit_row(saes) -> dict:
        rm = ReplacementModel(model, saes, tok)
        hooks = ab.ordered_hooks(rm)
        states = ab.prepare(rm, ab.chunks(tok, task, 16), "patch")
        s = node_scores(rm, states, hooks, "attrib", positional=True, progress=False)
        feat = sum(float(s.feature_effect[h].abs().sum()) for h in hooks)
        err = sum(float(s.error_effect[h].abs().sum()) for h in hooks)
        row = {"error_abs_share": err / max(feat + err, 1e-12)}
        for ev in ("mean", "patch"):
            _, summary = trace_circuit(rm, tok, saes, task, n=len(task), top_k=200, edges=False,
                                       eval_ablation=ev, progress=False, batch_size=16)
            row[f"faithfulness_{ev}"] = summary["faithfulness"]
            row["feature_nodes"] = summary.get("feature_nodes")
            row["circuit_error_share"] = summary.get("error_share")
        return row

    def train(hooks_: list[str], k: int, name: str) -> SAESet:
        folder = Path(args.work) / name
        cfg = TrainConfig(hooks=hooks_, k=k, expansion=8, tokens=args.stack_tokens or args.tokens,
                          corpus="embedded-mix:0.7", out=str(folder), progress=False,
                          model_batch=args.model_batch, device=args.device, eval_tokens=8192)
        t = time.time()
        train_saes(model, tok, cfg)
        saes = SAESet.load(folder, model=model)
        saes.train_s = round(time.time() - t, 1)
        return saes

    def stack_metrics(saes) -> dict:
        return {h: {k: (sae.cfg.metadata.get("metrics") or {}).get(k)
                    for k in ("explained_variance", "ce_loss_score", "dead_fraction")}
                for h, sae in saes.items()}

    saes = None
    if steps & {"stack", "kl"} and time_left():
        saes = SAESet.load(args.saes, model=model) if args.saes else train(
            args.stack.split(","), args.stack_k, "stack-mix")
        name = "given" if args.saes else f"mix-k{args.stack_k}"
        if "stack" in steps:
            row = circuit_row(saes)
            row["bases"] = bases_row(saes[args.hook])
            row["metrics"] = stack_metrics(saes)
            save(f"stack/{name}", row)
        if "kl" in steps and time_left():
            t = time.time()
            info = kl_finetune(model, tok, saes, KLFinetuneConfig(
                tokens=args.kl_tokens, batch=args.kl_batch, progress=False), corpus="embedded-mix:0.7")
            kl_s = round(time.time() - t, 1)
            row = circuit_row(saes)
            row["bases"] = bases_row(saes[args.hook])
            row["kl_info"], row["kl_s"] = info, kl_s
            save(f"stack/{name}+kl{args.kl_tokens}", row)
    if "layout" in steps and time_left():
        lay = train(args.layout_hooks.split(","), args.layout_k, "layout-attn-mlp")
        row = circuit_row(lay)
        row["metrics"], row["train_s"] = stack_metrics(lay), lay.train_s
        save(f"layout/attn-mlp-k{args.layout_k}", row)
    save("done", True)


if __name__ == "__main__":
    main()
