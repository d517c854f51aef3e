"""`saecircuits trace`: trace a feature circuit for a contrastive task and write it to --out."""
from __future__ import annotations

import argparse
from .saes_args import add_saes_arguments, load_saes

HELP = "trace a feature circuit (node effects, edges, pruning, faithfulness) for a task"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import add_model_arguments, nonnegative_float, positive_int, unit_float

    add_model_arguments(parser)
    add_saes_arguments(parser)
    parser.add_argument("--hooks", default=None, help="only these hook points (comma-separated; default: all in the set)")
    parser.add_argument("--task", required=True, help="ioi | parens | sva | FILE.jsonl")
    parser.add_argument("--n", type=positive_int, default=64, help="number of prompts (default 64)")
    parser.add_argument("--method", default="attrib", choices=("attrib", "ig", "exact"),
                        help="node attribution: attribution patching, integrated gradients, exact")
    parser.add_argument("--ablation", default="patch", choices=("patch", "zero", "mean", "resample"),
                        help="what a node is ablated to when its effect is measured")
    rule = parser.add_mutually_exclusive_group()
    rule.add_argument("--node-threshold", type=nonnegative_float, default=None,
                      help="keep nodes with |effect| >= T (default: --top-k 100)")
    rule.add_argument("--top-k", type=positive_int, default=None, help="keep the K largest feature nodes "
                      "(default 100)")
    rule.add_argument("--influence", type=unit_float, default=None,
                      help="keep the fewest nodes reaching this share of total |effect| "
                           "(default: --top-k 100)")
    parser.add_argument("--edge-influence", type=unit_float, default=0.98,
                        help="keep the fewest edges reaching this share of total |weight|")
    parser.add_argument("--positional", action="store_true", help="one node per token position "
                        "(default: features summed over positions, pos '*')")
    parser.add_argument("--steps", type=positive_int, default=10, help="integrated-gradients steps")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="prompts per model pass")
    parser.add_argument("--eval-ablation", default="mean", choices=("mean", "zero", "resample", "patch"),
                        help="ablation of the circuit's complement in faithfulness (default mean)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the task's prompts and resampling")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> dict:
    from ..attribution import trace_circuit
    from ..export.tables import write_csv
    from ..errors import TaskError
    from ..fileio import atomic_dir, check_output_dir, write_json
    from ..models import load_model

    check_output_dir(args.out, overwrite=args.overwrite)  # before any model pass
    if args.task not in ("ioi", "parens", "sva"):
        from pathlib import Path

        if not Path(args.task).is_file():
            raise TaskError(f"--task {args.task!r} is neither ioi, parens, sva nor an existing "
                            ".jsonl file")
    model, tok = load_model(args.model, device=args.device)
    hooks = [h.strip() for h in args.hooks.split(",")] if args.hooks else None
    saes = load_saes(args, model=model, hooks=hooks)
    graph, summary = trace_circuit(
        model, tok, saes, args.task, method=args.method, ablation=args.ablation, n=args.n,
        top_k=args.top_k, node_threshold=args.node_threshold, influence=args.influence,
        edge_influence=args.edge_influence, positional=args.positional, steps=args.steps,
        batch_size=args.batch_size, eval_ablation=args.eval_ablation, seed=args.seed)
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        write_json(tmp / "summary.json", summary)
        write_csv(graph, tmp)
        graph.save(tmp)
    print(f"{summary['task']}: {summary['feature_nodes']} feature nodes, {summary['error_nodes']} "
          f"error nodes, {summary['edges']} edges, faithfulness {summary['faithfulness']:.3f} "
          f"-> {args.out}")
    return summary
