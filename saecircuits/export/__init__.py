"""Export feature graphs (Neuronpedia JSON, CSV/Parquet, GraphML, node-link, DOT/SVG, HTML
viewer) and build feature dashboards."""
from .dot import render_svg, to_dot
from .explanations import (Explanation, load_explanation_records, load_explanations,
                           with_explanations)
from .neuronpedia import graph_json, graph_metadata
from .networkx_io import (from_networkx, node_link, read_graphml, read_node_link, to_networkx,
                          write_graphml, write_node_link)
from .tables import (edges_df, from_dataframes, nodes_df, read_csv, read_parquet, write_csv,
                     write_parquet)
from .writer import FORMATS, export_graph, load_graph, summarize

__all__ = ["Explanation", "FORMATS", "edges_df", "export_graph", "from_dataframes",
           "from_networkx", "graph_json", "graph_metadata", "load_explanation_records",
           "load_explanations", "load_graph", "node_link", "nodes_df", "read_csv",
           "read_graphml", "read_node_link", "read_parquet", "render_svg", "summarize",
           "to_dot", "to_networkx", "with_explanations", "write_csv", "write_graphml",
           "write_node_link", "write_parquet"]

from ..graph import register_exporter as _register  # noqa: E402

_register(export_graph)  # FeatureGraph.export without an import from the graph up to export
