"""Command-line options generated from config dataclasses: one definition of every option.

A field becomes `--field-name` (or `cli_flags`) with the field's default, its type's argparse
converter and `help` from the field's metadata:

    tokens: int = field(default=500_000, metadata=cli("training activations per hook"))

metadata keys (`cli(...)` builds them): help, flags (tuple of option strings), type (an argparse
converter; default: from the annotation), choices, metavar, skip (not an option). Bool fields
become `--x / --no-x` switches. This module imports no torch, so `--help` stays fast; config
modules keep their heavy imports inside methods.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Callable


def cli(help: str, *, flags: tuple[str, ...] | None = None, type: Callable | None = None,
        choices: tuple | None = None, metavar: str | None = None, skip: bool = False,
        required: bool = False) -> dict:
    """Field metadata for `add_config_arguments`."""
    return {"help": help, "flags": flags, "type": type, "choices": choices, "metavar": metavar,
            "skip": skip, "required": required}


def _converter(annotation: Any) -> Callable | None:
    """The argparse converter of a simple annotation (int, float, str and their Optionals)."""
    from .cli import positive_float, positive_int

    if isinstance(annotation, str):      # `from __future__ import annotations`
        text = annotation.replace(" ", "")
        for name, conv in (("int", positive_int), ("float", positive_float), ("str", str)):
            if text in (name, f"{name}|None", f"None|{name}", f"Optional[{name}]"):
                return conv
        return None
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Union and len(args) == 1:
        annotation = args[0]
    return {int: positive_int, float: positive_float, str: str}.get(annotation)


def add_config_arguments(parser: argparse.ArgumentParser, cls, fields: list[str] | None = None,
                         defaults: dict[str, Any] | None = None) -> list[str]:
    """Add one option per field of dataclass `cls` (those in `fields`, in that order; default:
    every field with `cli` metadata that is not skipped). `defaults` override the dataclass's.
    Returns the field names added (`config_kwargs` reads them back)."""
    defaults = defaults or {}
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    names = fields if fields is not None else [f.name for f in dataclasses.fields(cls)
                                               if f.metadata.get("help") and not f.metadata.get("skip")]
    for name in names:
        f = by_name[name]
        meta = f.metadata
        if not meta.get("help"):
            raise TypeError(f"{cls.__name__}.{name} has no `cli` metadata (help text)")
        if name in defaults:
            default = defaults[name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        flags = meta.get("flags") or (f"--{name.replace('_', '-')}",)
        help_text = meta["help"]
        if "default" not in help_text.lower():
            help_text += " (default: %(default)s)"
        kwargs = {"dest": name, "default": default, "help": help_text}
        if f.type in (bool, "bool"):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            conv = meta.get("type") or _converter(f.type)
            if conv is not None:
                kwargs["type"] = conv
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
            if meta.get("metavar"):
                kwargs["metavar"] = meta["metavar"]
            if isinstance(default, (list, tuple)):
                kwargs["default"] = ",".join(str(v) for v in default)
        if meta.get("required"):
            kwargs["required"] = True
            kwargs.pop("default")
        parser.add_argument(*flags, **kwargs)
    return names


def config_kwargs(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """The parsed values of the fields `add_config_arguments` added."""
    return {name: getattr(args, name) for name in names}
