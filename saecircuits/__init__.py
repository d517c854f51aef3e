"""saecircuits: sparse autoencoders, feature circuits and steering on any HF causal LM.

Data flow: corpus -> activations -> `trainers` -> SAE files -> `ReplacementModel` (model +
SAEs bound once; `splice`) -> `attribution` -> `FeatureGraph` (`graph`) -> `export` / `steering`. The heavier sub-packages are imported lazily on
first use of one of their names (`saecircuits.trace_circuit`, `saecircuits.steer`, ...).
"""
from importlib import import_module

from .errors import (ConfigError, ExportError, GraphError, HookPointError, InterventionError,
                     ModelLoadError, SAEFormatError, SaecircuitsError, ShapeError, TaskError,
                     TrainingError)
from .hooks import HookPoint, hook_points, resolve
from .graph import FeatureGraph, Node
from .models import DEFAULT_MODEL, load_model
from .replacement import ReplacementModel
from .sae import SAE, SAEConfig, SAESet
from .splice import Spliced, splice, spliced_logits

__version__ = "0.1.0"

_LAZY = {  # public name -> sub-module that defines it
    "load_sae": "formats", "load_sae_set": "formats",
    "make_task": "tasks", "load_jsonl": "tasks", "Task": "tasks", "task_accuracy": "tasks",
    "TraceConfig": "attribution", "trace_circuit": "attribution",
    "node_scores": "attribution", "faithfulness_curve": "attribution",
    "steer": "steering", "Intervention": "steering", "SteerResult": "steering",
    "parse_spec": "steering",
    "export_graph": "export", "load_graph": "export",
    "top_contexts": "export.dashboards", "write_dashboards": "export.dashboards",
}

__all__ = ["SAE", "SAEConfig", "SAESet", "HookPoint", "Spliced", "ReplacementModel", "Node",
           "FeatureGraph", "load_model", "hook_points",
           "resolve", "splice", "spliced_logits", "DEFAULT_MODEL", "SaecircuitsError",
           "ConfigError", "ExportError", "GraphError", "HookPointError", "InterventionError",
           "ModelLoadError", "SAEFormatError", "ShapeError", "TaskError", "TrainingError",
           *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'saecircuits' has no attribute {name!r}")
