"""`saecircuits demo`: the main job, end to end on the embedded default model."""
from __future__ import annotations

import argparse

HELP = "train (or reuse) SAEs, trace the IOI and closing-parenthesis circuits, steer, export"


# DemoConfig's defaults, repeated here so that `--help` imports no torch (a test keeps them equal)
DEFAULTS = dict(hooks=["resid.4", "resid.10", "resid.16", "resid.23"], tokens=200_000, expansion=4,
                k=32, n=32, top_k=60, method="attrib", out="saecircuits-demo", seed=0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    import types

    from ..cli import add_model_arguments, positive_int

    d = types.SimpleNamespace(**DEFAULTS)
    add_model_arguments(parser)
    parser.add_argument("--hooks", default=",".join(d.hooks), help=f"SAE hook points (default {','.join(d.hooks)})")
    parser.add_argument("--tokens", type=positive_int, default=d.tokens, help=f"SAE training tokens (default {d.tokens:,})")
    parser.add_argument("--expansion", type=positive_int, default=d.expansion, help="d_sae / d_model (default %(default)s)")
    parser.add_argument("--k", type=positive_int, default=d.k, help="TopK active latents (default %(default)s)")
    parser.add_argument("--n", type=positive_int, default=d.n, help="prompts per task (default %(default)s)")
    parser.add_argument("--top-k", type=positive_int, default=d.top_k, help="feature nodes per circuit (default %(default)s)")
    parser.add_argument("--method", choices=("attrib", "ig", "exact"), default=d.method,
                        help="node attribution method (default %(default)s)")
    parser.add_argument("--out", default=d.out, help="output directory (default %(default)s)")
    parser.add_argument("--retrain", action="store_true", help="train SAEs even if cached ones exist")
    parser.add_argument("--quick", action="store_true", help="a small run (< 5 minutes on 2 CPU cores)")
    parser.add_argument("--seed", type=int, default=d.seed, help="training and sampling seed")


def run(args: argparse.Namespace) -> dict:
    from ..demo import DemoConfig, run_demo
    from ..fileio import check_output_dir

    check_output_dir(args.out)

    cfg = DemoConfig(model=args.model, device=args.device, hooks=args.hooks, tokens=args.tokens,
                     expansion=args.expansion, k=args.k, n=args.n, top_k=args.top_k, method=args.method,
                     out=args.out, retrain=args.retrain, quick=args.quick, seed=args.seed)
    return run_demo(cfg)
