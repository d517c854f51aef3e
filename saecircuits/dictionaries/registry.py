"""The registry: architecture name -> its `Dictionary` class.

Each architecture module decorates its class with `@register`; `dictionaries/__init__.py`
imports every architecture module (one line each), so a new architecture is one new module plus
one import line. Consumers (training, splicing, attribution, formats, the CLI's choices) only
read the classes' attributes (`uses_k`, `has_threshold`, `foreign`, `activate`, `active_mask`,
`loss`); no architecture name is resolved anywhere else.
"""
from __future__ import annotations

from ..errors import ConfigError

REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make `cls` the architecture called `cls.name`."""
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"architecture name {cls.name!r} is empty or taken")
    REGISTRY[cls.name] = cls
    return cls


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get(name: str) -> type:
    """The class of architecture `name` (its own name, or a name another library uses)."""
    if name in REGISTRY:
        return REGISTRY[name]
    for cls in REGISTRY.values():
        if name in cls.foreign:
            return cls
    raise ConfigError(f"unknown dictionary architecture {name!r}; expected one of {', '.join(REGISTRY)}")
