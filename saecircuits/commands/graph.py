"""`saecircuits graph`: the attribution graph of one prompt on the frozen replacement model."""
from __future__ import annotations

import argparse

HELP = ("attribution graph of one prompt with transcoders at every MLP (circuit-tracer's method): "
        "replacement / completeness scores, pruned graph, viewer")


GRAPH_FIELDS = ["max_n_logits", "desired_logit_prob", "target", "batch_size", "max_feature_nodes",
                "node_threshold", "edge_threshold", "allow_partial", "prepend_bos", "zero_first", "precision"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import add_explanations_argument, add_model_arguments
    from ..config_args import add_config_arguments
    from ..configs import GraphConfig
    from .saes_args import add_saes_arguments

    add_model_arguments(parser)
    add_saes_arguments(parser)
    parser.add_argument("--prompt", required=True, help="the prompt to attribute")
    add_config_arguments(parser, GraphConfig, GRAPH_FIELDS)       # options from GraphConfig's fields
    add_explanations_argument(parser)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> dict:
    import sys

    from ..attribution.graphs import GraphConfig, attribute, to_feature_graph
    from ..export import export_graph
    from ..export.explanations import load_explanation_records, with_explanations
    from ..fileio import atomic_dir, check_output_dir, write_json
    from ..models import load_model

    check_output_dir(args.out, overwrite=args.overwrite)
    from ..config_args import config_kwargs

    cfg = GraphConfig(**config_kwargs(args, GRAPH_FIELDS))
    explanations = load_explanation_records(args.explanations) if args.explanations else {}
    model, tok = load_model(args.model, device=args.device)
    from ..sae import load_replacement

    saes = load_replacement(args.saes, model=model, format=getattr(args, "format", "auto"))
    graph = attribute(model, tok, saes, args.prompt, cfg)
    fg = to_feature_graph(graph, model, tok, saes)
    if explanations:
        fg = with_explanations(fg, explanations)
    replacement, completeness = graph.scores()
    summary = {"prompt": args.prompt, "replacement_score": replacement,
               "completeness_score": completeness, "error_share": graph.error_share(),
               "linearity_error": graph.linearity_error(), "features": graph.n_features,
               "nodes": graph.adjacency.shape[0], "kept_nodes": fg.graph.number_of_nodes(),
               "kept_edges": fg.graph.number_of_edges(), "logits": graph.logit_labels,
               "seconds": graph.meta["seconds"], "warnings": fg.meta["warnings"],
               "precision": graph.meta["precision"], "partial": graph.meta["partial"]}
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        graph.save(tmp / "attribution")
        export_graph(fg, tmp / "graph", tokenizer=tok)
        write_json(tmp / "summary.json", summary)
    stream = sys.stderr if getattr(args, "json", False) else sys.stdout
    print(f"replacement score {replacement:.3f}, completeness {completeness:.3f}, error share "
          f"{summary['error_share']:.0%}; {graph.n_features} active features, kept "
          f"{summary['kept_nodes']} nodes / {summary['kept_edges']} edges ({graph.meta['seconds']:.1f} s) "
          f"-> {args.out} (view: saecircuits serve {args.out}/graph)", file=stream)
    for w in summary["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    return summary
