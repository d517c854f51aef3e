"""Exception types. Every error the library raises on bad input is a `SaecircuitsError`.

Each subclass also derives from the builtin that best describes it (ValueError, KeyError,
FileNotFoundError, ...) so callers that catch builtins keep working.
"""
from __future__ import annotations


class SaecircuitsError(Exception):
    """Base class of all saecircuits errors."""


class ConfigError(SaecircuitsError, ValueError):
    """A configuration value is invalid (out of range, wrong type, inconsistent)."""


class HookPointError(SaecircuitsError, KeyError):
    """A hook point name does not exist on the model."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class ModelLoadError(SaecircuitsError, RuntimeError):
    """A model could not be loaded (missing package, unknown name, unreadable files)."""


class SAEFormatError(SaecircuitsError, ValueError):
    """SAE files are missing, malformed, or inconsistent with their config."""


class ShapeError(SaecircuitsError, ValueError):
    """A tensor has the wrong shape, dtype or device for the operation."""


class TaskError(SaecircuitsError, ValueError):
    """A contrastive task or dataset is invalid."""


class GraphError(SaecircuitsError, ValueError):
    """A feature graph is invalid, empty where it must not be, or its files are corrupt."""


class InterventionError(SaecircuitsError, ValueError):
    """A steering intervention is invalid."""


class TrainingError(SaecircuitsError, RuntimeError):
    """Training cannot continue (non-finite activations, incompatible resume, ...)."""


class ExportError(SaecircuitsError, RuntimeError):
    """An export could not be written (existing directory, missing renderer, ...)."""
