"""The `saecircuits` command line: one subcommand module per job under `saecircuits.commands`.

Each module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> dict | None`.
A returned dict is printed as JSON with `--json`. Errors print one line and exit 2
(`--debug` shows the traceback).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import logging
import sys

COMMANDS = ("train", "eval", "trace", "steer", "export", "dashboards", "serve", "demo",
            "compare-bases")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model / --device options shared by the subcommands that load a model."""
    parser.add_argument("--model", default=None,
                        help="HF hub id or local path (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saecircuits",
        description="Sparse autoencoders, feature circuits and steering for HF causal LMs.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        path = f"saecircuits.commands.{name.replace('-', '_')}"
        if importlib.util.find_spec(path) is None:
            continue
        module = importlib.import_module(path)
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        cmd.add_argument("--json", action="store_true", help="print a JSON summary to stdout")
        cmd.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)
        module.add_arguments(cmd)
        cmd.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import SaecircuitsError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    as_json = getattr(args, "json", False)
    try:  # with --json, stdout carries only the JSON summary; messages go to stderr
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            result = args.handler(args)
    except KeyboardInterrupt:
        print("saecircuits: interrupted", file=sys.stderr)
        return 130
    except (SaecircuitsError, FileNotFoundError, PermissionError, IsADirectoryError) as err:
        if args.debug:
            raise
        print(f"saecircuits {args.command}: error: {err}".splitlines()[0], file=sys.stderr)
        return 2
    if as_json and result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
