"""The `saecircuits` command line: one subcommand module per job under `saecircuits.commands`.

Each module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> dict | None`.
Building the parser imports no torch (`saecircuits --help` stays fast): command modules import
their heavy dependencies inside `run`. A returned dict is printed as JSON with `--json`.
Every error, whatever its type, prints one line `saecircuits <cmd>: error: ...` and exits 2
(`--debug` prints the traceback first; the exit code stays 2). An unknown flag is a usage error
of the subcommand that got it. SIGTERM unwinds like Ctrl-C (`finally` blocks remove temporary
files and directories) and exits 143; Ctrl-C exits 130.
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
import signal
import sys
import traceback

COMMANDS = ("train", "eval", "trace", "graph", "steer", "export", "dashboards", "serve", "demo",
            "convert", "explain", "compare-saes", "compare-bases")


class ArgumentParser(argparse.ArgumentParser):
    """Usage errors print one line `saecircuits <cmd>: error: ...` (no usage block) and exit 2.

    A subcommand's parser (`command=True`) refuses arguments it does not know itself, so the
    error names the subcommand, and names an unknown flag even when required ones are missing."""

    command = False
    _args: list[str] | None = None
    _probing = False

    def parse_known_args(self, args=None, namespace=None):
        self._args = list(sys.argv[1:] if args is None else args)
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and self.command:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def error(self, message: str):
        if self._probing:
            raise _Probe
        if self.command and "arguments are required" in message:
            unknown = self._unknown_arguments()
            if unknown:
                message = f"unrecognized arguments: {' '.join(unknown)}; {message}"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _unknown_arguments(self) -> list[str]:
        """The arguments of the last parse that no option takes (parsed again with nothing
        required); [] when that parse fails for another reason."""
        required = [(a, a.required) for a in self._actions]
        groups = [(g, g.required) for g in self._mutually_exclusive_groups]
        for a, _ in required:
            a.required = False
        for g, _ in groups:
            g.required = False
        self._probing = True
        try:
            return argparse.ArgumentParser.parse_known_args(self, self._args or [])[1]
        except (_Probe, SystemExit):
            return []
        finally:
            self._probing = False
            for a, flag in required:
                a.required = flag
            for g, flag in groups:
                g.required = flag


class _Probe(Exception):
    """Raised by `ArgumentParser.error` while `_unknown_arguments` re-parses."""


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that `finally` blocks clean up as on Ctrl-C."""


def _terminate(signum, frame):
    raise Terminated


def version() -> str:
    """The installed package's version (its metadata), else the source tree's."""
    from importlib import metadata

    try:
        return metadata.version("saecircuits")
    except metadata.PackageNotFoundError:
        from . import __version__

        return __version__


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
    parser.add_argument("--version", action="version", version=f"saecircuits {version()}")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks and debug logs (failures still exit 2)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module_name = f"saecircuits.commands.{name.replace('-', '_')}"
        if importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP,
                             formatter_class=HelpFormatter)
        cmd.command = True
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
    previous = _on_sigterm(_terminate)
    try:  # with --json, stdout carries only the JSON summary; messages go to stderr
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext(), \
                _quiet(getattr(args, "quiet", False)):
            _import_libraries(args.command)
            result = args.handler(args)
    except KeyboardInterrupt:
        print(f"saecircuits {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"saecircuits {args.command}: terminated", file=sys.stderr)
        return 143
    except Exception as err:  # noqa: BLE001 - the boundary: every error is one line, exit 2
        if args.debug:
            traceback.print_exc()
        print(error_line(args.command, err), file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            _on_sigterm(previous)
    if as_json and result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


# subcommands that import torch, transformers and nnsight (~5-15 s on a small, busy CPU)
HEAVY_COMMANDS = {"train", "eval", "trace", "graph", "steer", "dashboards", "demo", "explain",
                  "compare-saes", "compare-bases"}


def _quiet(on: bool):
    """No progress bars inside (a subcommand's --quiet)."""
    from .progress import quiet

    return quiet(on)


def _import_libraries(command: str) -> None:
    """Import the heavy libraries under a status line, so a run never starts silent."""
    if command not in HEAVY_COMMANDS or "nnsight" in sys.modules:
        return
    from .progress import status

    with status("starting (importing torch, transformers, nnsight)"):
        import nnsight  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401


def _on_sigterm(handler):
    """Install `handler` for SIGTERM (main thread only); returns the one it replaced."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    old = signal.signal(signal.SIGTERM, handler)
    return signal.SIG_DFL if old is None else old


if __name__ == "__main__":
    sys.exit(main())
