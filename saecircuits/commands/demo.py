"""`saecircuits demo`: the main job, end to end on the embedded default model."""
from __future__ import annotations

import argparse

HELP = ("train (or reuse) SAEs and transcoders, trace the IOI and closing-parenthesis circuits, draw "
        "replacement graphs, steer, export")


DEMO_FIELDS = ["hooks", "tokens", "expansion", "k", "transcoders", "tc_k", "tc_expansion", "corpus", "n",
               "top_k", "method", "graph_features", "compare_bases", "basis_prompts", "steer_candidates", "out",
               "precision", "retrain", "quick", "seed"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import add_model_arguments
    from ..config_args import add_config_arguments
    from ..configs import DemoConfig

    add_model_arguments(parser)
    add_config_arguments(parser, DemoConfig, DEMO_FIELDS)        # options from DemoConfig's fields


def run(args: argparse.Namespace) -> dict:
    from ..config_args import config_kwargs
    from ..demo import DemoConfig, run_demo
    from ..fileio import check_output_dir

    check_output_dir(args.out)
    _quiet_libraries()
    cfg = DemoConfig(model=args.model, device=args.device, **config_kwargs(args, DEMO_FIELDS))
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
