"""Steering: clamp, scale, add or ablate SAE features (or directions) during generation."""
from .generate import SteerResult, steer, track_ids
from .select import attribution_features, contrastive_features, feature_activations, promoting_features
from .spec import ABLATIONS, MODES, Intervention, parse_spec

__all__ = ["Intervention", "SteerResult", "steer", "parse_spec", "track_ids", "attribution_features", "contrastive_features",
           "feature_activations", "promoting_features", "MODES", "ABLATIONS"]
