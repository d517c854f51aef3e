"""saecircuits: sparse autoencoders, feature circuits and steering on any HF causal LM.

Data flow: corpus -> activations -> `trainers` -> SAE files -> `ReplacementModel` (model +
SAEs bound once; `splice`) -> `attribution` -> `FeatureGraph` (`graph`) -> `export` / `steering`. The heavier sub-packages are imported lazily on
first use of one of their names (`saecircuits.trace_circuit`, `saecircuits.steer`, ...).
"""
import sys
import types
from importlib import import_module

from .errors import (ConfigError, ExportError, GraphError, HookPointError, InterventionError,
                     ModelLoadError, SAEFormatError, SaecircuitsError, ShapeError, TaskError,
                     TrainingError)

__version__ = "0.1.0"

_LAZY = {  # public name -> sub-module that defines it (nothing imports torch until used)
    "HookPoint": "hooks", "hook_points": "hooks", "resolve": "hooks",
    "DEFAULT_MODEL": "models", "load_model": "models",
    "SAE": "sae", "SAEConfig": "sae", "SAESet": "sae",
    "ReplacementModel": "replacement", "Node": "graph", "FeatureGraph": "graph",
    "Spliced": "splice", "splice": "splice", "spliced_logits": "splice",
    "load_sae": "formats", "load_sae_set": "sae",
    "make_task": "tasks", "load_jsonl": "tasks", "Task": "tasks", "task_accuracy": "tasks",
    "TraceConfig": "attribution", "trace_circuit": "attribution",
    "node_scores": "attribution", "faithfulness_curve": "attribution",
    "steer": "steering", "Intervention": "steering", "SteerResult": "steering",
    "parse_spec": "steering",
    "export_graph": "export", "load_graph": "export",
    "top_contexts": "export.dashboards", "write_dashboards": "export.dashboards",
}

__all__ = ["SaecircuitsError",
           "ConfigError", "ExportError", "GraphError", "HookPointError", "InterventionError",
           "ModelLoadError", "SAEFormatError", "ShapeError", "TaskError", "TrainingError",
           *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'saecircuits' has no attribute {name!r}")


class _Package(types.ModuleType):
    """Keeps `saecircuits.splice` the function: importing the `saecircuits.splice` submodule
    (lazily, from anywhere) would otherwise rebind the package attribute to the module."""

    def __setattr__(self, name: str, value) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
