"""The demo's steering showcase alone, on cached demo SAEs and a demo's parens graph (issue 16).

    python benchmarks/bench_steer_showcase.py --saes ~/.cache/saecircuits/saes/demo-<key> \
        --graph saecircuits-demo/parens [--json out.json]

Runs exactly the demo's step (`saecircuits.demo.steering_showcase`): candidates from the parens
circuit and from `steering.promoting_features` (gradient x corpus max, corpus max over the same
192 windows of the same 400 shuffled corpus documents as the demo), chosen by measured
P(next token starts with ')') on SELECT_PROMPTS, reported on the disjoint NOT_DUE_PROMPTS.
Lets a steering change be measured without re-tracing both circuits (~50 min on a busy 2-core CPU).
"""
from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--saes", required=True)
    ap.add_argument("--graph", required=True, help="the demo's parens export directory or graph file")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import saecircuits as sc
    from saecircuits.demo import DemoConfig, gradient_candidates, steering_showcase
    from saecircuits.export.dashboards import collect_activations
    from saecircuits.export.writer import load_graph
    from saecircuits.replacement import ReplacementModel
    from saecircuits.tasks.parens import closing_ids
    from trainers.corpus import load_documents

    cfg = DemoConfig()
    model, tok = sc.load_model()
    saes = sc.SAESet.load(args.saes, model=model)
    rm = ReplacementModel(model, saes, tok)
    graph = load_graph(args.graph)
    grads = gradient_candidates(rm, closing_ids(tok), 8 * cfg.steer_candidates)
    circuit = {(d["hook"], int(d["feature"])) for _, d in graph.nodes(data=True) if d["kind"] == "feature"}
    wanted = sorted(circuit | {(h, f) for h, rows in grads.items() for f, _ in rows})
    texts = [d.text for d in load_documents(None)]
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    acts = collect_activations(model, tok, saes, wanted, [texts[i] for i in order[:400]],
                               max_windows=cfg.dashboard_windows)
    peaks = {node: float(acts.acts[..., acts.column(node)].max()) for node in wanted}
    result = steering_showcase(rm, tok, graph, peaks, cfg, grads)
    keep = ("feature", "features", "value", "mode", "positions", "candidates", "levers",
            "p_close_before", "p_close_after", "mean_prob_shift_all_steps")
    print(json.dumps({k: result[k] for k in keep}, indent=1))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({k: result[k] for k in keep}, fh, indent=1)


if __name__ == "__main__":
    main()
