"""`--saes` / `--format` / `--variant`: one way for every subcommand to read SAE sets of any format."""
from __future__ import annotations

import argparse


def add_saes_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--saes DIR`, `--format` and `--variant` to a subcommand."""
    parser.add_argument("--saes", required=True,
                        help="SAE set: a native set (one subfolder per hook), one SAE folder, a folder of "
                             "SAELens / dictionary_learning folders, a sparsify run, or a Gemma Scope tree")
    parser.add_argument("--format", default="auto",
                        help="file format of --saes: auto (default: detected), native, saelens, sparsify, "
                             "dictionary_learning, gemmascope")
    parser.add_argument("--hook", default=None,
                        help="the hook point of a single SAE folder whose files do not name one (e.g. an "
                             "SAELens SAE built in code, without metadata.hook_name; default: what the files say)")
    parser.add_argument("--variant", default=None,
                        help="which SAE where a hook has several, e.g. average_l0_41 in a Gemma Scope tree "
                             "(default: the only one; an error lists them when there are several)")


def load_saes(args: argparse.Namespace, model=None, hooks: list[str] | None = None, device=None):
    """The SAESet named by `args.saes` in `args.format` (checked against `model` if given)."""
    from ..sae import SAESet

    return SAESet.load(args.saes, model=model, hooks=hooks, device=device,
                       format=getattr(args, "format", "auto"), variant=getattr(args, "variant", None),
                       hook=getattr(args, "hook", None))
