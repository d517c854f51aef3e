"""`saecircuits train`: train SAEs at many hook points in one pass over a corpus."""
from __future__ import annotations

import argparse

HELP = "train SAEs (relu, topk, batchtopk, jumprelu, ...) or transcoders at hook points, from one pass"


TRAIN_FIELDS = ["hooks", "architecture", "transcoder", "skip", "k", "expansion", "d_sae", "tokens", "context",
                "batch", "lr", "l1", "corpus", "prepend_bos", "eval_tokens", "seed", "out", "cache_activations",
                "resume", "checkpoint_every", "precision"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from trainers.config import TrainConfig

    from ..cli import add_model_arguments, nonnegative_int, positive_float
    from ..config_args import add_config_arguments

    add_model_arguments(parser)
    add_config_arguments(parser, TrainConfig, TRAIN_FIELDS)       # options from TrainConfig's fields
    parser.add_argument("--kl-finetune-tokens", type=nonnegative_int, default=0, metavar="N",
                        help="after training, fine-tune the SAEs on N tokens with KL(model || "
                        "model with all SAEs spliced, no error term) + reconstruction (Braun et al. "
                        "2024, Karvonen et al. 2025); 0: off")
    parser.add_argument("--kl-lr", type=positive_float, default=5e-5, help="learning rate of the KL fine-tune")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> dict:
    from trainers import TrainConfig, train_saes

    from ..fileio import check_output_dir
    from ..models import load_model

    check_output_dir(args.out)
    if args.cache_activations:
        check_output_dir(args.cache_activations, what="--cache-activations")
    from ..config_args import config_kwargs

    cfg = TrainConfig(**config_kwargs(args, TRAIN_FIELDS), device=args.device, progress=not args.quiet)
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
