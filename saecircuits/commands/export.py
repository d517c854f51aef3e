"""`saecircuits export`: write a feature graph's export directory."""
from __future__ import annotations

import argparse
import sys

HELP = "export a feature graph: Neuronpedia JSON, CSV/Parquet, GraphML, DOT/SVG, HTML viewer"


# export.writer.FORMATS, repeated so that `--help` imports no torch (a test keeps them equal)
FORMATS = ("all", "dot", "svg", "graphml", "nodelink", "csv", "parquet", "neuronpedia", "html")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import add_explanations_argument

    parser.add_argument("graph", metavar="GRAPH_DIR",
                        help="graph to export: a directory or file written by FeatureGraph.save "
                             "(featuregraph.json), an export directory, .graphml or .nodelink.json")
    parser.add_argument("--format", dest="formats", action="append", choices=FORMATS,
                        help="what to write (repeatable; default: all)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--dashboards", default=None,
                        help="dashboards directory (from `saecircuits dashboards`) for the viewer "
                        "(default: none)")
    add_explanations_argument(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> dict:
    from ..errors import ExportError
    from ..export.writer import export_graph, load_graph
    from ..fileio import check_output_dir

    check_output_dir(args.out, overwrite=args.overwrite)
    from ..export.explanations import load_explanation_records
    from ..export.neuronpedia import local_tokenizer

    explanations = load_explanation_records(args.explanations) if args.explanations else None

    graph = load_graph(args.graph)
    formats = args.formats or ["all"]
    tokenizer = None if graph.meta.get("prompt_tokens") else local_tokenizer(graph.meta.get("model"))
    summary = export_graph(graph, args.out, overwrite=args.overwrite,
                           dashboards=args.dashboards, formats=formats, tokenizer=tokenizer,
                           explanations=explanations)
    if "svg_error" in summary:
        if "svg" in formats:
            raise ExportError(f"{summary['svg_error']} (the other files are in {args.out})")
        print(f"saecircuits export: warning: {summary['svg_error']}", file=sys.stderr)
    if not args.json:
        print(f"wrote {', '.join(summary['files'])} to {args.out}")
    return {"out": args.out, **{k: v for k, v in summary.items() if k != "meta"}}
