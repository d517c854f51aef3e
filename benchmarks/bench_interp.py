"""Automatic interpretability and universality on SmolLM2 (issue 18).

1. Explanation scores (Bills et al. 2023 explain + simulate, SmolLM2-135M-Instruct as both
   explainer and simulator — a weak explainer) for N units per basis at one hook: SAE
   features vs residual-stream neurons vs PCA vs ICA directions (Cunningham et al. Fig. 2),
   with bootstrap 95% CIs. Resumable: rerunning continues in --out.
2. compare-saes between SAE sets trained on the same hook: different seeds, different sizes,
   and each set against itself (sanity: MMCS 1.0).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python3 benchmarks/bench_interp.py \
        --saes SAES_SEED0 --other-seed SAES_SEED1 --other-size SAES_HALF_SIZE_SEED2 \
        --per-basis 50 --budget 2700

--other-size must come from another seed than --saes: two sizes trained with one seed share
their first rows of initialisation, which inflates the match (see RESULTS.md).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--saes", required=True)
    p.add_argument("--other-seed", required=True)
    p.add_argument("--other-size", default=None)
    p.add_argument("--hook", default="resid.10")
    p.add_argument("--per-basis", type=int, default=50)
    p.add_argument("--bases", default="sae,neurons,pca,ica")
    p.add_argument("--windows", type=int, default=256)
    p.add_argument("--out", default="/tmp/i18-bench-explain")
    p.add_argument("--json-out", default="benchmarks/results_interp.json")
    p.add_argument("--skip-explain", action="store_true")
    p.add_argument("--budget", type=float, default=600.0,
                   help="seconds of explain+simulate scoring; a rerun continues (resumable)")
    args = p.parse_args()

    from trainers.corpus import load_documents

    from saecircuits import load_model
    from saecircuits.interp.backends import LocalBackend
    from saecircuits.interp.contexts import collect_hook_activations, sae_basis
    from saecircuits.interp.pipeline import ExplainConfig, run_explain
    from saecircuits.interp.universality import compare_saes, load_sae_or_set
    from saecircuits.models import unwrap
    from saecircuits.sae import SAESet

    torch.set_num_threads(1)
    model, tok = load_model(device="cpu")
    texts = [d.text for d in load_documents(None, max_documents=400)]
    report: dict = {"cpu_threads": torch.get_num_threads()}
    if Path(args.json_out).is_file():
        report = json.loads(Path(args.json_out).read_text()) | report

    a = load_sae_or_set(args.saes)[args.hook]
    others = {"self": a, "other_seed": load_sae_or_set(args.other_seed)[args.hook]}
    if args.other_size:
        others["other_size"] = load_sae_or_set(args.other_size)[args.hook]
    acts = collect_hook_activations(model, tok, args.hook, texts, 64, 64, progress=False)
    fa = sae_basis(a).activations(acts.x)[acts.mask]
    comp = {}
    for name, b in others.items():
        t0 = time.perf_counter()
        fb = sae_basis(b).activations(acts.x)[acts.mask]
        s = compare_saes(a, b, fa, fb, args.hook, args.hook).summary()
        s["seconds"] = round(time.perf_counter() - t0, 1)
        for d in (s["mmcs"], s.get("activation_correlation", {}),
                  s.get("activation_correlation_of_decoder_match", {})):
            d.pop("histogram", None)
        comp[name] = s
        m, c = s["mmcs"], s["activation_correlation"]
        print(f"compare {name:10s} d_sae {s['d_sae_a']}->{s['d_sae_b']}: MMCS mean {m['mean']:.3f} "
              f"median {m['median']:.3f} (chance {s['chance_mmcs_mean']:.3f}); share >0.5/0.7/0.9 "
              + "/".join(f"{m['share_above'][t]:.3f}" for t in ("0.5", "0.7", "0.9"))
              + f"; act corr (live A features, n={c['n']}) mean {c['mean']:.3f} share >0.7 "
              f"{c['share_above']['0.7']:.3f}")
    report["compare"] = comp | {"tokens": int(acts.mask.sum())}
    Path(args.json_out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    if not args.skip_explain:
        saes = SAESet.load(args.saes, model=model, hooks=[args.hook])
        backend = LocalBackend(unwrap(model), tok)
        cfg = ExplainConfig(hooks=[args.hook], bases=args.bases.split(","), top=args.per_basis,
                            windows=args.windows)
        t0 = time.perf_counter()
        res = run_explain(model, tok, saes, texts, backend, cfg, args.out, saes_dir=args.saes,
                          time_budget=args.budget)
        wall = time.perf_counter() - t0
        report["explain"] = res | {"wall_s": round(wall, 1), "per_basis_requested": args.per_basis,
                                   "hook": args.hook, "saes": args.saes, "windows": args.windows,
                                   "budget_s": args.budget}
        for kind, s in res["summary"].items():
            print(f"{kind:8s} n={s['n']:3d} mean {s['mean']:+.3f} 95% CI "
                  f"[{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}] median {s['median']:+.3f} "
                  f"top-only {s['mean_top']:+.3f} constant {s['constant_predictions']}")
        print(f"explain wall {wall:.0f}s ({res['n_units']} units; cache hits {res['cache_hits']})")

    Path(args.json_out).write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
