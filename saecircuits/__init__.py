"""saecircuits: sparse autoencoders, feature circuits and steering on any HF causal LM."""
from .errors import (ConfigError, GraphError, HookPointError, ModelLoadError, SAEFormatError,
                     SaecircuitsError, ShapeError, TaskError)
from .hooks import HookPoint, hook_points, resolve
from .models import DEFAULT_MODEL, load_model
from .sae import SAE, SAEConfig, SAESet
from .splice import Spliced, splice, spliced_logits

__version__ = "0.1.0"
__all__ = ["SAE", "SAEConfig", "SAESet", "HookPoint", "Spliced", "load_model", "hook_points",
           "resolve", "splice", "spliced_logits", "DEFAULT_MODEL", "SaecircuitsError",
           "ConfigError", "GraphError", "HookPointError", "ModelLoadError", "SAEFormatError",
           "ShapeError", "TaskError"]
