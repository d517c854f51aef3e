"""Attribution engine: node effects, edges, feature graphs, pruning and evaluation."""
from .circuit import TraceConfig, trace_circuit
from .evaluate import Evaluator, agreement, faithfulness_curve
from ..graph import FeatureGraph, Node, node_id
from .nodes import NodeScores, exact_effects, node_scores
from .prune import prune_edges, prune_nodes, remove_dangling

__all__ = ["FeatureGraph", "Node", "node_id", "trace_circuit", "TraceConfig", "NodeScores", "node_scores",
           "exact_effects", "Evaluator", "agreement", "faithfulness_curve", "prune_nodes",
           "prune_edges", "remove_dangling"]
