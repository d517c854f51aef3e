"""`saecircuits eval`: SAEBench core metrics of an SAE set on held-out text."""
from __future__ import annotations

import argparse
from .saes_args import add_saes_arguments, load_saes

HELP = "evaluate an SAE set: L0, explained variance, dead/dense fraction, CE and KL scores"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import add_model_arguments, add_precision_argument, nonnegative_int, positive_int

    add_model_arguments(parser)
    add_saes_arguments(parser)
    parser.add_argument("--hooks", default=None, help="only these hook points (comma-separated; default: all in the set)")
    parser.add_argument("--corpus", default=None, help="evaluation text (file, .jsonl, dir, hf:<name>); "
                        "default: the embedded corpus's held-out documents")
    parser.add_argument("--tokens", type=positive_int, default=8192, help="tokens to evaluate on")
    parser.add_argument("--context", type=positive_int, default=256, help="token window length (>= 2)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the default corpus's split")
    add_precision_argument(parser, "auto", "the evaluation forwards (recorded in metrics.json)")
    parser.add_argument("--out", default=None, help="write metrics.json + density.svg per SAE here (default: print only)")


def run(args: argparse.Namespace) -> dict:
    from trainers import evaluate_saes
    from trainers.corpus import default_corpus
    from trainers.evaluate import write_reports

    from ..errors import ConfigError
    from ..fileio import check_output_dir
    from ..models import load_model

    if args.context < 2:
        raise ConfigError(f"--context must be at least 2 tokens, got {args.context}")
    if args.out:
        check_output_dir(args.out)
    from ..limits import check_tokens

    model, tok = load_model(args.model, device=args.device)
    check_tokens(model, args.context, "--context")
    hooks = [h.strip() for h in args.hooks.split(",")] if args.hooks else None
    saes = load_saes(args, model=model, hooks=hooks)
    if args.corpus is None:
        data = default_corpus(tok).split(0.02, args.seed, min_holdout_tokens=args.tokens)[1]
    else:
        data = args.corpus
    metrics = evaluate_saes(model, tok, saes, data, args.tokens, context=args.context,
                            precision=args.precision)
    if args.out:
        write_reports(args.out, metrics)
    return {h: {k: v for k, v in m.items() if not isinstance(v, dict)} for h, m in metrics.items()}
