"""The `saecircuits` command line: one subcommand module per job under `saecircuits.commands`.

Each module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> dict | None`.
Building the parser imports no torch (`saecircuits --help` stays fast): command modules import
their heavy dependencies inside `run`. A returned dict is printed as JSON with `--json`.
Every error, whatever its type, prints one line `saecircuits <cmd>: error: ...` and exits 2
(`--debug` shows the traceback).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import logging
import math
import re
import sys

COMMANDS = ("train", "eval", "trace", "steer", "export", "dashboards", "serve", "demo", "convert",
            "explain", "compare-saes", "compare-bases")


class ArgumentParser(argparse.ArgumentParser):
    """Usage errors print one line `saecircuits <cmd>: error: ...` (no usage block) and exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind, text: str, check, need: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {need}, got {text!r}") from None
    if not check(value):
        raise argparse.ArgumentTypeError(f"expected {need}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _number(int, text, lambda v: v >= 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _number(int, text, lambda v: v >= 0, "an integer >= 0")


def positive_ints(text: str) -> int | list[int]:
    """argparse type: one positive integer or a comma list of them (a list when several)."""
    values = [positive_int(v.strip()) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values[0] if len(values) == 1 else values


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number(float, text, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")


def nonnegative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _number(float, text, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")


def unit_float(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    return _number(float, text, lambda v: 0 < v <= 1, "a number in (0, 1]")


def port(text: str) -> int:
    """argparse type: a TCP port, 0..65535 (0: any free port)."""
    return _number(int, text, lambda v: 0 <= v <= 65535, "a port in 0..65535")


class HelpFormatter(argparse.HelpFormatter):
    """Appends `(default: X)` to an option's help unless the text already names its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text.lower() or any(action.default is v for v in (None, False, argparse.SUPPRESS))
                or action.required or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model / --device options shared by the subcommands that load a model."""
    parser.add_argument("--model", default=None,
                        help="HF hub id or local path (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")


def add_precision_argument(parser: argparse.ArgumentParser, default: str, what: str,
                           flags: tuple[str, ...] = ("--precision",)) -> None:
    """--precision auto|fp32|bf16: the dtype of the command's heavy matmuls (`saecircuits.precision`)."""
    parser.add_argument(*flags, dest="precision", default=default, choices=("auto", "fp32", "bf16"),
                        help=f"matmul precision of {what}: auto (bf16 only where it is measured "
                             f"faster on this CPU/GPU), fp32, or bf16 (default {default})")


def add_explanations_argument(parser: argparse.ArgumentParser) -> None:
    """--explanations: auto-interp labels for the graphs / dashboards a subcommand writes."""
    parser.add_argument("--explanations", default=None, metavar="PATH",
                        help="explanations.json or the --out directory of `saecircuits explain`: "
                             "explained features show their explanation (and score) in graph "
                             "labels (clerp, nodes.csv, viewer) and dashboards (default: none)")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="saecircuits", formatter_class=HelpFormatter,
        description="Sparse autoencoders, feature circuits and steering for HF causal LMs.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module_name = f"saecircuits.commands.{name.replace('-', '_')}"
        if importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP,
                             formatter_class=HelpFormatter)
        cmd.add_argument("--json", action="store_true", help="print a JSON summary to stdout")
        cmd.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)
        module.add_arguments(cmd)
        cmd.set_defaults(handler=module.run)
    return parser


# torch's advice on a refused pickle ("weights_only=False", "`weights_only` set to `False`",
# "add_safe_globals"): never passed on
_UNSAFE_ADVICE = re.compile(r"weights_only\W+(set to\W+)?False|safe_globals|Weights only load failed")


def error_line(command: str, err: BaseException) -> str:
    """The one-line message for `err`: its type when it is not a saecircuits error, never advice
    to load pickles unsafely."""
    from .errors import SaecircuitsError

    text = (str(err).strip().splitlines() or [""])[0].strip()
    if _UNSAFE_ADVICE.search(str(err)):
        text = ("refusing to unpickle a file (only safetensors or weights_only loading is allowed); "
                "convert it to safetensors")
    if not isinstance(err, SaecircuitsError):
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    if not text:
        text = type(err).__name__
    return f"saecircuits {command}: error: {text}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # usage errors (exit 2, one line) and --help (exit 0) return too
        return stop.code if isinstance(stop.code, int) else 2
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    as_json = getattr(args, "json", False)
    try:  # with --json, stdout carries only the JSON summary; messages go to stderr
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            result = args.handler(args)
    except KeyboardInterrupt:
        print("saecircuits: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the boundary: every error is one line, exit 2
        if args.debug:
            raise
        print(error_line(args.command, err), file=sys.stderr)
        return 2
    if as_json and result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
