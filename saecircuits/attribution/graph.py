"""Kept for imports written before the move: `FeatureGraph` and the node vocabulary live in
`saecircuits.graph` (the floor below attribution and export)."""
from ..graph import GRAPH_FILE, NODE_KINDS, FeatureGraph, Node, node_id  # noqa: F401
