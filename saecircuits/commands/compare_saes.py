"""`saecircuits compare-saes A B`: match features between two SAE sets (decoder MMCS and
activation correlation on shared text)."""
from __future__ import annotations

import argparse

HELP = "match features of two SAE sets: decoder MMCS, activation correlation, histograms"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import add_model_arguments

    add_model_arguments(parser)
    parser.add_argument("a", help="SAE set (or single SAE) directory A")
    parser.add_argument("b", help="SAE set (or single SAE) directory B")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--pair", action="append", default=None,
                        help="HOOK_A:HOOK_B to compare (repeatable; default: shared hooks)")
    parser.add_argument("--no-activations", action="store_true",
                        help="decoder MMCS only (no model run, no activation correlation)")
    parser.add_argument("--corpus", default=None, help="text source (default: embedded corpus)")
    parser.add_argument("--max-docs", type=int, default=200)
    parser.add_argument("--windows", type=int, default=64,
                        help="token windows for activation correlation (default 64)")
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> dict:
    from ..fileio import atomic_dir
    from ..interp.contexts import collect_hook_activations, sae_basis
    from ..interp.universality import compare_saes, load_sae_or_set, pair_hooks, write_comparison

    set_a, set_b = load_sae_or_set(args.a), load_sae_or_set(args.b)
    pairs = pair_hooks(set_a, set_b, args.pair)
    for ha, hb in pairs:  # fail before any model run
        if set_a[ha].cfg.d_in != set_b[hb].cfg.d_in:
            from ..errors import ShapeError
            raise ShapeError(f"{ha} (A) has d_in {set_a[ha].cfg.d_in} but {hb} (B) has "
                             f"{set_b[hb].cfg.d_in}; MMCS needs equal widths")
    acts = {}
    if not args.no_activations:
        from trainers.corpus import load_documents

        from ..models import load_model

        model, tok = load_model(args.model, device=args.device)
        set_a.check(model)
        set_b.check(model)
        texts = [d.text for d in load_documents(args.corpus, max_documents=args.max_docs)]
        hooks = sorted({h for p in pairs for h in p})
        acts = collect_hook_activations(model, tok, hooks, texts, args.context, args.windows,
                                        progress=not args.quiet)
    results = []
    for ha, hb in pairs:
        fa = fb = None
        if acts:
            xa, xb = acts[ha], acts[hb]
            fa = sae_basis(set_a[ha]).activations(xa.x)[xa.mask]
            fb = sae_basis(set_b[hb]).activations(xb.x)[xb.mask]
        results.append(compare_saes(set_a[ha], set_b[hb], fa, fb, ha, hb, args.seed))
    meta = {"a": str(args.a), "b": str(args.b),
            "tokens": int(acts[pairs[0][0]].mask.sum()) if acts else 0}
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        result = write_comparison(tmp, results, meta)
    if not args.json:
        for s in result["pairs"]:
            m = s["mmcs"]
            line = (f"{s['hook_a']} vs {s['hook_b']}: mean MMCS {m['mean']:.3f} (chance "
                    f"{s['chance_mmcs_mean']:.3f}); share > 0.5/0.7/0.9: "
                    + "/".join(f"{m['share_above'][str(t)]:.2f}" for t in (0.5, 0.7, 0.9)))
            if "activation_correlation" in s and s["activation_correlation"].get("n"):
                c = s["activation_correlation"]
                line += (f"; act. corr. mean {c['mean']:.3f}, share > 0.7 "
                         f"{c['share_above']['0.7']:.2f}")
            print(line)
        print(f"wrote {args.out}")
    return result
