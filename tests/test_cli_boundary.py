"""The CLI boundary: fast torch-free parser, defaults in every help text, one-line errors."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from saecircuits import cli
from saecircuits.errors import ConfigError
from helpers import subprocess_env


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_building_the_parser_and_help_import_no_torch():
    code = ("import sys\nfrom saecircuits.cli import build_parser, main\nbuild_parser()\n"
            "assert main(['--help']) == 0 and main(['train', '--help']) == 0\n"
            "heavy = [m for m in ('torch', 'transformers', 'nnsight', 'numpy') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=subprocess_env())
    assert done.returncode == 0, done.stderr
    assert "COMMAND" in done.stdout and "--batch" in done.stdout


def test_every_option_help_names_its_default():
    parser = cli.build_parser()
    commands = _subparsers(parser)
    assert set(cli.COMMANDS) <= set(commands)
    for name, sub in commands.items():
        in_required_group = {a for g in sub._mutually_exclusive_groups if g.required
                             for a in g._group_actions}
        formatter = sub._get_formatter()
        for action in sub._actions:
            if (not action.option_strings or action.help == argparse.SUPPRESS or action.required
                    or action in in_required_group
                    or isinstance(action, (argparse._HelpAction, argparse._StoreTrueAction))):
                continue
            text = formatter._get_help_string(action) % {"default": action.default}
            assert "default" in text.lower(), f"{name} {action.option_strings}: {text!r}"
            if action.default is not None and "%(default)" in formatter._get_help_string(action):
                assert str(action.default) in text


def test_torch_free_copies_of_defaults_match_their_sources():
    from saecircuits import bases
    from saecircuits.commands import compare_bases

    assert compare_bases.BASES == bases.BASES and compare_bases.DEFAULT_NS == bases.DEFAULT_NS
    from saecircuits.commands import demo, export
    from saecircuits.config_args import config_kwargs
    from saecircuits.demo import DemoConfig
    from saecircuits.export.writer import FORMATS

    args = cli.build_parser().parse_args(["demo"])
    assert DemoConfig(**config_kwargs(args, demo.DEMO_FIELDS)) == DemoConfig()   # options from the dataclass
    assert export.FORMATS == FORMATS


@pytest.mark.parametrize("argv, text", [
    (["train", "--out", "x", "--batch", "0"], "'0'"),
    (["train", "--out", "x", "--lr", "inf"], "'inf'"),
    (["serve", "d", "--port", "-1"], "'-1'"),
    (["steer", "--saes", "s", "--prompt", "p", "--temperature", "0"], "'0'"),
    (["nosuchcommand"], "nosuchcommand"),
])
def test_usage_errors_are_one_line(argv, text, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("saecircuits") and "error:" in err, err
    assert text in err


@pytest.mark.parametrize("error", [RuntimeError("boom\nsecond line"), RecursionError("maximum depth"),
                                   MemoryError(), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"),
                                   ConfigError("a bad value 7")])
def test_any_error_in_a_command_is_one_line_exit_2(monkeypatch, capsys, error):
    from saecircuits.commands import serve

    def fail(args):
        raise error
    monkeypatch.setattr(serve, "run", fail)
    assert cli.main(["serve", "somewhere"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("saecircuits serve: error: ") and len(err.splitlines()) == 1, err
    if not isinstance(error, ConfigError):
        assert type(error).__name__ in err
    else:
        assert err.endswith("a bad value 7")
    assert cli.main(["--debug", "serve", "somewhere"]) == 2   # the traceback is extra, same code
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and type(error).__name__ in err
    assert err.strip().splitlines()[-1].startswith("saecircuits serve: error: ")


def test_unsafe_loading_advice_is_never_repeated():
    import pickle

    for text in ("Weights only load failed. Re-running `torch.load` with `weights_only` set to "
                 "`False` will likely succeed", "pass weights_only=False to load it",
                 "use torch.serialization.add_safe_globals([print])"):
        line = cli.error_line("steer", pickle.UnpicklingError(text))
        assert "False" not in line and "safe_globals" not in line and "safetensors" in line, line
