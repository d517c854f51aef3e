"""`saecircuits trace`: trace a feature circuit for a contrastive task and write it to --out."""
from __future__ import annotations

import argparse
from .saes_args import add_saes_arguments, load_saes

HELP = "trace a feature circuit (node effects, edges, pruning, faithfulness) for a task"


def _length(text: str):
    if text == "common":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2 or 'common', got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import (add_explanations_argument, add_model_arguments, add_precision_argument,
                       nonnegative_float,
                       positive_int, unit_float)

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
    parser.add_argument("--chunk-tokens", type=positive_int, default=256,
                        help="at most this many padded tokens per model pass (fewer prompts than "
                             "--batch-size when they are long; at least one prompt); bounds memory "
                             "(default 256)")
    parser.add_argument("--eval-ablation", default=None, choices=("mean", "zero", "resample", "patch"),
                        help="ablation of the circuit's complement in faithfulness (default: patch "
                             "when the task has patch prompts, else mean)")
    parser.add_argument("--mean-from", default=None, metavar="FILE|TASK",
                        help="take mean-ablation means from this reference set (a .jsonl file or "
                             "ioi|parens|sva; default: the traced prompts themselves); it needs "
                             "prompts of every token length traced")
    parser.add_argument("--mean-n", type=positive_int, default=64,
                        help="prompts of a built-in --mean-from task (default 64)")
    parser.add_argument("--length", type=_length, default=None, metavar="L|common",
                        help="keep only the prompts of this many tokens, or of the most common "
                             "length (e.g. for --positional, which needs one length; default: all prompts)")
    parser.add_argument("--per-prompt", action="store_true",
                        help="also trace each prompt alone: one graph per prompt in "
                             "--out/prompts/NNN plus the aggregate, and the faithfulness "
                             "distribution in summary.json")
    parser.add_argument("--no-edge-eval", action="store_true",
                        help="skip the exact edge ablation of the final circuit")
    add_precision_argument(parser, "fp32", "the edge pass (node scores and faithfulness are always "
                           "fp32: exact); bf16 runs attention on the math kernel on CPU (~2x faster "
                           "edges where bf16 is fast; edge weights r > 0.9999 vs fp32 on IOI)",
                           flags=("--precision", "--edge-precision"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the task's prompts and resampling")
    add_explanations_argument(parser)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def _options(args: argparse.Namespace) -> dict:
    return dict(method=args.method, ablation=args.ablation, n=args.n, top_k=args.top_k,
                node_threshold=args.node_threshold, influence=args.influence,
                edge_influence=args.edge_influence, positional=args.positional, steps=args.steps,
                batch_size=args.batch_size, chunk_tokens=args.chunk_tokens,
                eval_ablation=args.eval_ablation,
                mean_from=args.mean_from, mean_n=args.mean_n, length=args.length, seed=args.seed,
                edge_eval=not args.no_edge_eval, edge_precision=args.precision)


def _distribution(values: list) -> dict:
    import statistics

    vals = sorted(v for v in values if v is not None)
    if not vals:
        return {"n": 0, "undefined": len(values)}
    q = lambda f: vals[min(len(vals) - 1, int(round(f * (len(vals) - 1))))]
    return {"n": len(vals), "undefined": len(values) - len(vals), "mean": statistics.fmean(vals),
            "min": vals[0], "q25": q(0.25), "median": q(0.5), "q75": q(0.75), "max": vals[-1]}


def run(args: argparse.Namespace) -> dict:
    import sys

    from ..attribution import trace_circuit
    from ..attribution.circuit import check_saes, plan_trace, trace_config
    from ..export.tables import write_csv
    from ..errors import SaecircuitsError, TaskError
    from ..fileio import atomic_dir, check_output_dir, write_json
    from ..models import load_model

    from ..export.explanations import load_explanation_records, with_explanations

    check_output_dir(args.out, overwrite=args.overwrite)  # before any model pass
    explanations = load_explanation_records(args.explanations) if args.explanations else {}
    for name, spec in (("--task", args.task), ("--mean-from", args.mean_from)):
        if spec is not None and spec not in ("ioi", "parens", "sva"):
            from pathlib import Path

            if not Path(spec).is_file():
                raise TaskError(f"{name} {spec!r} is neither ioi, parens, sva nor an existing "
                                ".jsonl file")
    model, tok = load_model(args.model, device=args.device)
    hooks = [h.strip() for h in args.hooks.split(",")] if args.hooks else None
    saes = load_saes(args, model=model, hooks=hooks)
    opts = _options(args)
    cfg = trace_config(None, **opts)
    rm = check_saes(model, saes)
    plan = plan_trace(rm, tok, args.task, cfg)       # every check before the first model pass
    task = plan.task
    singles = []
    if args.per_prompt:
        if len(task) == 0:
            raise TaskError(f"--per-prompt: task {args.task!r} has no prompts")
        for i in range(len(task)):   # each single-prompt trace is checked before any pass
            plan_trace(rm, tok, task.take([i]), trace_config(cfg, n=1, length=None))
    graph, summary = trace_circuit(rm, tok, None, task, cfg, n=len(task), length=None)
    if args.per_prompt:
        for i in range(len(task)):
            try:
                g, s = trace_circuit(rm, tok, None, task.take([i]), cfg, n=1, length=None)
            except SaecircuitsError as err:   # e.g. pruning left nothing for this prompt
                singles.append((i, None, {"prompt": task.clean[i], "error": str(err)}))
                continue
            singles.append((i, g, s))
        summary["per_prompt"] = {
            "faithfulness": _distribution([s.get("faithfulness") for _, _, s in singles]),
            "edge_faithfulness": _distribution([s.get("edge_faithfulness") for _, _, s in singles]),
            "prompts": [{"index": i, "prompt": task.clean[i], "faithfulness": s.get("faithfulness"),
                         "edge_faithfulness": s.get("edge_faithfulness"),
                         "warnings": s.get("warnings", []), **({"error": s["error"]} if "error" in s
                                                                else {})}
                        for i, _, s in singles]}
    if explanations:  # feature nodes carry `explanation`: nodes.csv, featuregraph.json, export
        graph = with_explanations(graph, explanations)
        singles = [(i, g if g is None else with_explanations(g, explanations), s)
                   for i, g, s in singles]
        summary["explained_nodes"] = sum(1 for _, d in graph.graph.nodes(data=True)
                                         if d.get("explanation") is not None)
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        write_json(tmp / "summary.json", summary)
        write_csv(graph, tmp)
        graph.save(tmp)
        for i, g, s in singles:
            if g is None:
                continue
            d = tmp / "prompts" / f"{i:03d}"
            d.mkdir(parents=True)
            write_json(d / "summary.json", s)
            write_csv(g, d)
            g.save(d)
    faith = summary["faithfulness"]
    edge = summary.get("edge_faithfulness")
    stream = sys.stderr if getattr(args, "json", False) else sys.stdout
    print(f"{summary['task']}: {summary['feature_nodes']} feature nodes, {summary['error_nodes']} "
          f"error nodes, {summary['edges']} edges, faithfulness "
          f"{'undefined' if faith is None else format(faith, '.3f')} ({summary['eval_ablation']})"
          + ("" if edge is None else f", edge faithfulness {edge:.3f}") + f" -> {args.out}",
          file=stream)
    if args.per_prompt:
        d = summary["per_prompt"]["faithfulness"]
        if d["n"]:
            print(f"per prompt: faithfulness median {d['median']:.3f} (min {d['min']:.3f}, max "
                  f"{d['max']:.3f}) over {d['n']} prompts", file=stream)
    for w in summary["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    return summary
