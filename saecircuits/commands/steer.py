"""`saecircuits steer`: generate with SAE features clamped, scaled, added or ablated."""
from __future__ import annotations

import argparse
from pathlib import Path
from .saes_args import add_saes_arguments, load_saes

HELP = "generate with SAE features clamped/scaled/added/ablated; print baseline vs steered"

_SPEC = "HOOK:FEATURES[=VALUE][@POSITIONS]"
CHUNK_TOKENS = 2048  # torch-free copy of steering.generate.CHUNK_TOKENS (a test keeps them equal)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import (add_model_arguments, add_precision_argument, nonnegative_int, positive_float,
                       positive_int, unit_float)

    add_model_arguments(parser)
    add_saes_arguments(parser)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one prompt (this or --prompts is required)")
    src.add_argument("--prompts", help="text file with one prompt per line, or a .jsonl of "
                                       "{\"prompt\": ...} objects")
    for flag, what in (("clamp", "set features to VALUE, e.g. resid.12:1234=8.0"),
                       ("scale", "multiply features by VALUE, e.g. resid.12:1234=0.5"),
                       ("add", "add VALUE × decoder row, e.g. resid.12:1234=4"),
                       ("ablate", "zero (default) or mean-ablate, e.g. resid.12:1234 or resid.12:1234=mean")):
        parser.add_argument(f"--{flag}", action="append", default=[], metavar=_SPEC,
                            help=f"{what}; POSITIONS = prompt|generated|all|0,3,-1 (default all); repeatable")
    parser.add_argument("--only-if-active", action="store_true",
                        help="edit a feature only where it is already active")
    parser.add_argument("--max-new-tokens", type=positive_int, default=20, help="tokens to generate")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=positive_float, default=1.0, help="sampling temperature")
    parser.add_argument("--top-p", type=unit_float, default=1.0, help="nucleus sampling mass")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="sampling seed")
    parser.add_argument("--no-cache", action="store_true", help="generate without the KV cache")
    add_precision_argument(parser, "fp32", "the generation forwards (bf16 can change greedy tokens)")
    parser.add_argument("--chunk-tokens", type=positive_int, default=CHUNK_TOKENS,
                        help="generate in batches of at most this many padded prompt + new tokens "
                             "(at least one prompt); bounds memory for many prompts")
    parser.add_argument("--track", action="append", default=[], metavar="TOKEN",
                        help="single-token string whose per-step probability shift is reported "
                        "(repeatable; default: none)")


def read_prompts(path: str) -> list[str]:
    """Prompts from a text file (one per line) or JSONL (`{"prompt": ...}` per line)."""
    from ..errors import ConfigError
    from ..fileio import parse_json, read_text
    from ..limits import check_text_length

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"prompts file {path!r} does not exist")
    lines = [line for line in read_text(file, "prompts file").splitlines() if line.strip()]
    for number, line in enumerate(lines, 1):
        check_text_length(line, f"{path}:{number}", limit=4 * 200_000)
    if not lines:
        raise ConfigError(f"prompts file {path!r} is empty")
    if file.suffix != ".jsonl":
        return lines
    prompts = []
    for number, line in enumerate(lines, 1):
        obj = parse_json(line, f"{path}:{number}")
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
            raise ConfigError(f"{path}:{number} needs a string field 'prompt'")
        prompts.append(obj["prompt"])
    return prompts


def run(args: argparse.Namespace) -> dict:
    import dataclasses

    from ..errors import ConfigError
    from ..models import load_model
    from ..steering import parse_spec, steer

    interventions = [parse_spec(text, mode) for flag, mode in
                     (("clamp", "set"), ("scale", "scale"), ("add", "add"), ("ablate", "ablate"))
                     for text in getattr(args, flag)]
    if not interventions:
        raise ConfigError("give at least one of --clamp, --scale, --add, --ablate")
    if args.only_if_active:
        interventions = [dataclasses.replace(iv, only_if_active=True) for iv in interventions]
    prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompts)
    model, tok = load_model(args.model, device=args.device)
    hooks_needed = sorted({iv.hook for iv in interventions})
    saes = load_saes(args, model=model, hooks=hooks_needed)
    from ..models import model_device

    saes.to(model_device(model))
    result = steer(model, saes, prompts, interventions, args.max_new_tokens, do_sample=args.sample,
                   temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                   track=args.track, use_cache=not args.no_cache, tokenizer=tok,
                   chunk_tokens=args.chunk_tokens, precision=args.precision)
    if not args.json:
        print(result.format())
        if result.tracked:
            shift = result.prob_shift[:, 0]
            for prompt, row in zip(result.prompts, shift):
                parts = ", ".join(f"{tok.decode([t])!r} {float(s):+.4f}" for t, s in zip(result.tracked, row))
                print(f"step-0 probability shift for {prompt!r}: {parts}")
    return result.to_dict()
