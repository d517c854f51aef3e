"""`saecircuits demo`: the main job, end to end on the embedded default model."""
from __future__ import annotations

import argparse

HELP = "train (or reuse) SAEs, trace the IOI and closing-parenthesis circuits, steer, export"


# DemoConfig's defaults, repeated here so that `--help` imports no torch (a test keeps them equal)
DEFAULTS = dict(hooks=["resid.4", "resid.10", "resid.16", "resid.23"], tokens=200_000, expansion=8,
                k=128, corpus="embedded-mix:0.7", n=32, top_k=60, method="attrib", out="saecircuits-demo", seed=0,
                basis_prompts=16, steer_candidates=6)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    import types

    from ..cli import add_model_arguments, add_precision_argument, positive_int

    d = types.SimpleNamespace(**DEFAULTS)
    add_model_arguments(parser)
    parser.add_argument("--hooks", default=",".join(d.hooks), help=f"SAE hook points (default {','.join(d.hooks)})")
    parser.add_argument("--tokens", type=positive_int, default=d.tokens, help=f"SAE training tokens (default {d.tokens:,})")
    parser.add_argument("--expansion", type=positive_int, default=d.expansion, help="d_sae / d_model (default %(default)s)")
    parser.add_argument("--k", type=positive_int, default=d.k, help="TopK active latents (default %(default)s)")
    parser.add_argument("--corpus", default=d.corpus,
                        help="SAE training corpus: embedded, narrative, embedded-mix:R, a file or folder (default %(default)s)")
    parser.add_argument("--n", type=positive_int, default=d.n, help="prompts per task (default %(default)s)")
    parser.add_argument("--top-k", type=positive_int, default=d.top_k, help="feature nodes per circuit (default %(default)s)")
    parser.add_argument("--method", choices=("attrib", "ig", "exact"), default=d.method,
                        help="node attribution method (default %(default)s)")
    parser.add_argument("--compare-bases", action=argparse.BooleanOptionalAction, default=None,
                        help="SAE vs PCA vs raw basis comparison at the middle hook (default: on, "
                             "off with --quick)")
    parser.add_argument("--basis-prompts", type=positive_int, default=d.basis_prompts,
                        help="IOI prompts of the basis comparison (default %(default)s)")
    parser.add_argument("--steer-candidates", type=positive_int, default=d.steer_candidates,
                        help="parens-circuit features, and as many gradient-ranked ones, tried for the "
                             "steering showcase (default %(default)s)")
    parser.add_argument("--out", default=d.out, help="output directory (default %(default)s)")
    add_precision_argument(parser, "auto", "harvesting, training, edges and dashboards")
    parser.add_argument("--retrain", action="store_true", help="train SAEs even if cached ones exist")
    parser.add_argument("--quick", action="store_true", help="a small run (< 5 minutes on 2 CPU cores)")
    parser.add_argument("--seed", type=int, default=d.seed, help="training and sampling seed")


def run(args: argparse.Namespace) -> dict:
    from ..demo import DemoConfig, run_demo
    from ..fileio import check_output_dir

    check_output_dir(args.out)
    _quiet_libraries()

    cfg = DemoConfig(model=args.model, device=args.device, hooks=args.hooks, tokens=args.tokens,
                     expansion=args.expansion, k=args.k, corpus=args.corpus, n=args.n, top_k=args.top_k,
                     method=args.method, out=args.out, retrain=args.retrain, quick=args.quick,
                     seed=args.seed, compare_bases=args.compare_bases,
                     basis_prompts=args.basis_prompts, steer_candidates=args.steer_candidates,
                     precision=args.precision)
    return run_demo(cfg)


def _quiet_libraries() -> None:
    """Silence library chatter that is not the user's concern (tokenizer/model-loading notes)."""
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # transformers is a hard dependency; be safe anyway
        pass
