"""`saecircuits convert SAES --to saelens|sparsify|native --out DIR`: write SAEs in another library's format."""
from __future__ import annotations

import argparse

HELP = "convert an SAE set (any supported format) to SAELens, sparsify or native files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("saes", help="SAE set or SAE folder in any supported format")
    parser.add_argument("--to", required=True, choices=("saelens", "sparsify", "native", "circuit_tracer"),
                        help="target format (circuit_tracer: per-layer ReLU/JumpReLU/BatchTopK transcoders)")
    parser.add_argument("--out", required=True, help="output directory (one subfolder per hook point)")
    parser.add_argument("--format", default="auto",
                        help="format of SAES: auto (default), native, saelens, sparsify, dictionary_learning, "
                             "gemmascope")
    parser.add_argument("--hook", default=None,
                        help="the hook point of a single SAE folder whose files do not name one (e.g. an "
                             "SAELens SAE built in code, without metadata.hook_name; default: what the files say)")
    parser.add_argument("--variant", default=None, help="which SAE where a hook has several, e.g. average_l0_41 (default: the only one)")
    parser.add_argument("--hooks", default=None, help="only these hook points (comma-separated; default: all in the set)")
    parser.add_argument("--reference", action="store_true",
                        help="also write reference.safetensors (fixed inputs, our encode/decode) in each folder, "
                             "to check the files with the peer's own code")


def run(args: argparse.Namespace) -> dict:
    from ..formats.writers import convert_sae_set
    from .saes_args import load_saes

    hooks = [h.strip() for h in args.hooks.split(",")] if args.hooks else None
    saes = load_saes(args, hooks=hooks)
    written = convert_sae_set(saes, args.out, args.to, reference=args.reference)
    for hook, folder in written.items():
        print(f"{hook} -> {folder}")
    return {"to": args.to, "out": args.out, "saes": written}
