"""`saecircuits train`: train SAEs at many hook points in one pass over a corpus."""
from __future__ import annotations

import argparse

HELP = "train sparse autoencoders (relu, topk, batchtopk, jumprelu) at hook points"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import (add_model_arguments, add_precision_argument, nonnegative_float, nonnegative_int, positive_float,
                       positive_int, positive_ints)

    add_model_arguments(parser)
    parser.add_argument("--hooks", default="resid.10",
                        help="comma-separated hook points, e.g. resid.3,resid.9 (default resid.10)")
    parser.add_argument("--arch", default="topk", choices=["topk", "relu", "batchtopk", "jumprelu"],
                        help="SAE architecture")
    parser.add_argument("--k", type=positive_ints, default=32, help="active latents (topk/batchtopk); a "
                        "comma list trains one SAE per value")
    parser.add_argument("--expansion", type=positive_ints, default=8,
                        help="d_sae / d_in (comma list: one SAE per value)")
    parser.add_argument("--d-sae", type=positive_int, default=None,
                        help="latents (overrides --expansion; default: expansion × hook width)")
    parser.add_argument("--tokens", type=positive_int, default=500_000, help="training activations per hook")
    parser.add_argument("--context", type=positive_int, default=256, help="token window length (>= 2)")
    parser.add_argument("--batch", type=positive_int, default=None, help="activations per step (default 4 windows)")
    parser.add_argument("--lr", type=positive_float, default=None, help="learning rate (default per architecture)")
    parser.add_argument("--l1", type=nonnegative_float, default=None,
                        help="sparsity coefficient (relu, jumprelu; default per architecture)")
    parser.add_argument("--corpus", default=None, help="text file, .jsonl, directory, dataset dir or "
                        "hf:<name> (default: embedded stdlib code + pydoc prose)")
    parser.add_argument("--prepend-bos", action="store_true", help="start every window with BOS")
    parser.add_argument("--eval-tokens", type=nonnegative_int, default=8192,
                        help="held-out tokens for metrics.json (0: skip)")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--out", required=True, help="output directory (an SAE set)")
    parser.add_argument("--cache-activations", default=None, metavar="DIR",
                        help="store harvested activations here and reuse them in later runs "
                        "(default: no cache)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    parser.add_argument("--checkpoint-every", type=positive_int, default=200, help="steps between checkpoints")
    parser.add_argument("--kl-finetune-tokens", type=nonnegative_int, default=0, metavar="N",
                        help="after training, fine-tune the SAEs on N tokens with KL(model || "
                        "model with all SAEs spliced, no error term) + reconstruction (Braun et al. "
                        "2024, Karvonen et al. 2025); 0: off")
    parser.add_argument("--kl-lr", type=positive_float, default=5e-5, help="learning rate of the KL fine-tune")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_precision_argument(parser, "auto", "the harvesting forwards, the SAE step and the "
                           "evaluation forwards")


def run(args: argparse.Namespace) -> dict:
    from trainers import TrainConfig, train_saes

    from ..fileio import check_output_dir
    from ..models import load_model

    check_output_dir(args.out)
    if args.cache_activations:
        check_output_dir(args.cache_activations, what="--cache-activations")
    cfg = TrainConfig(hooks=args.hooks, architecture=args.arch, k=args.k, expansion=args.expansion,
                      d_sae=args.d_sae, tokens=args.tokens, context=args.context, batch=args.batch,
                      lr=args.lr, l1=args.l1, seed=args.seed, out=args.out, corpus=args.corpus,
                      cache_activations=args.cache_activations, resume=args.resume,
                      device=args.device, prepend_bos=args.prepend_bos, eval_tokens=args.eval_tokens,
                      checkpoint_every=args.checkpoint_every, progress=not args.quiet,
                      precision=args.precision)
    from trainers.kl_finetune import KLFinetuneConfig

    kl_cfg = (KLFinetuneConfig(tokens=args.kl_finetune_tokens, lr=args.kl_lr,
                               progress=not args.quiet, precision=args.precision) if args.kl_finetune_tokens else None)
    model, tok = load_model(args.model, device=args.device)
    saes = train_saes(model, tok, cfg)
    if kl_cfg is not None:
        from trainers.kl_finetune import finetune_after_training

        finetune_after_training(model, tok, cfg, saes, kl_cfg)
    summary = {"out": args.out, "saes": {h: s.extra_repr() for h, s in saes.items()}}
    import json
    from pathlib import Path

    metrics = Path(args.out) / "metrics.json"
    if metrics.is_file():
        summary["metrics"] = {h: {k: v for k, v in m.items() if not isinstance(v, dict)}
                              for h, m in json.loads(metrics.read_text()).items()}
    return summary
