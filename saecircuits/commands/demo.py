"""`saecircuits demo`: the main job on the embedded default model."""
from __future__ import annotations

import argparse

HELP = "run the end-to-end demo on the embedded SmolLM2 (or --model)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import add_model_arguments

    add_model_arguments(parser)


def run(args: argparse.Namespace) -> dict:
    import torch

    from ..models import load_model

    model, tok = load_model(args.model, device=args.device)
    prompt = "When Mary and John went to the store, John gave a drink to"
    with torch.no_grad(), model.trace(prompt):
        logits = model.lm_head.output.save()
    answer = tok.decode(logits[0, -1].argmax())
    print(f"{prompt!r} -> {answer!r}")
    return {"prompt": prompt, "answer": answer}
