"""Steering: clamp, scale, add or ablate SAE features (or directions) during generation."""
from .generate import SteerResult, steer, tokens_starting_with, track_ids
from .spec import ABLATIONS, MODES, Intervention, parse_spec

__all__ = ["Intervention", "SteerResult", "steer", "parse_spec", "tokens_starting_with",
           "track_ids", "MODES", "ABLATIONS"]
