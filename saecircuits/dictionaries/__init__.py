"""The dictionary family: SAEs, transcoders and skip transcoders, one class per architecture.

    Dictionary / DictionaryConfig      one weight layout, config and file format (base.py)
    TrainingDictionary, StepInput, StepOutput   the training interface (training.py)
    REGISTRY, get, names               name -> class (registry.py)
    kernels                            the training steps' sparse kernels

The architectures, one module each (importing a module registers its class):
"""
from . import relu  # noqa: F401
from . import topk  # noqa: F401
from . import batchtopk  # noqa: F401
from . import jumprelu  # noqa: F401
from . import matryoshka  # noqa: F401
from .base import CFG_FILE, WEIGHTS_FILE, Dictionary, DictionaryConfig
from .registry import REGISTRY, get, names
from .training import StepInput, StepOutput, TrainingDictionary

__all__ = ["Dictionary", "DictionaryConfig", "TrainingDictionary", "StepInput", "StepOutput",
           "REGISTRY", "names", "get", "CFG_FILE", "WEIGHTS_FILE"]
