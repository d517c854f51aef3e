"""`saecircuits trace`: trace a feature circuit for a contrastive task and write it to --out."""
from __future__ import annotations

import argparse
from .saes_args import add_saes_arguments, load_saes

HELP = "trace a feature circuit (node effects, edges, pruning, faithfulness) for a task"


TRACE_FIELDS = ["n", "method", "ablation", "edge_influence", "positional", "steps", "batch_size",
                "chunk_tokens", "eval_ablation", "mean_from", "mean_n", "length", "edge_eval",
                "edge_precision", "seed"]
RULE_FIELDS = ["node_threshold", "top_k", "influence"]        # one of them (mutually exclusive)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import add_explanations_argument, add_model_arguments
    from ..config_args import add_config_arguments
    from ..configs import TraceConfig

    add_model_arguments(parser)
    add_saes_arguments(parser)
    parser.add_argument("--hooks", default=None, help="only these hook points (comma-separated; default: all in the set)")
    parser.add_argument("--task", required=True, help="ioi | parens | sva | FILE.jsonl")
    add_config_arguments(parser, TraceConfig, TRACE_FIELDS)       # options from TraceConfig's fields
    add_config_arguments(parser.add_mutually_exclusive_group(), TraceConfig, RULE_FIELDS)
    parser.add_argument("--per-prompt", action="store_true",
                        help="also trace each prompt alone: one graph per prompt in "
                             "--out/prompts/NNN plus the aggregate, and the faithfulness "
                             "distribution in summary.json")
    add_explanations_argument(parser)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def _options(args: argparse.Namespace) -> dict:
    from ..config_args import config_kwargs

    return config_kwargs(args, TRACE_FIELDS + RULE_FIELDS)


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
        single_cfg = trace_config(cfg, n=1, length=None)
        single_plans = [plan_trace(rm, tok, task.take([i]), single_cfg)   # every check before
                        for i in range(len(task))]                         # any model pass
    graph, summary = trace_circuit(rm, tok, None, task, cfg, plan=plan)
    if args.per_prompt:
        from ..progress import track

        for i in track(range(len(task)), "per-prompt traces", unit="prompt", leave=True):
            try:
                g, s = trace_circuit(rm, tok, None, None, single_cfg, plan=single_plans[i])
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
