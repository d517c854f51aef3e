"""Attribution engine: node effects, edges, feature graphs, pruning and evaluation."""
from .graph import FeatureGraph, node_id

__all__ = ["FeatureGraph", "node_id"]
