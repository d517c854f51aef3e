"""Trace an IOI circuit on SmolLM2, build dashboards for its features and export everything:
Neuronpedia graph.json + feature JSON, CSV, GraphML, DOT/SVG and the self-contained viewer.

    python examples/export_neuronpedia.py --saes /path/to/smol-saes --out runs/ioi-export
    saecircuits serve runs/ioi-export/graph --port 8000     # then open the printed URL
"""
from __future__ import annotations

import argparse
from pathlib import Path

from saecircuits import load_model
from saecircuits.attribution import trace_circuit
from saecircuits.export import export_graph
from saecircuits.export.dashboards import write_dashboards
from saecircuits.models import model_device
from saecircuits.sae import SAESet
from trainers.corpus import load_documents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saes", required=True, help="SAE set directory trained on SmolLM2")
    parser.add_argument("--out", required=True, help="output folder (graph/ and dashboards/)")
    parser.add_argument("--task", default="ioi", help="ioi | parens | sva | a .jsonl file")
    parser.add_argument("--n", type=int, default=32, help="task prompts")
    parser.add_argument("--top-k", type=int, default=60, help="nodes kept in the circuit")
    parser.add_argument("--windows", type=int, default=256, help="corpus windows for dashboards")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()

    model, tok = load_model()
    saes = SAESet.load(args.saes, model=model, device=model_device(model))
    graph, summary = trace_circuit(model, tok, saes, args.task, n=args.n, top_k=args.top_k,
                                   positional=True, length="common")
    print(f"circuit: {summary['feature_nodes']} features, {summary['error_nodes']} error nodes, "
          f"{summary['edges']} edges, faithfulness {summary['faithfulness']:.3f}")
    features = sorted({(d["hook"], d["feature"]) for _, d in graph.nodes(data=True)
                       if d["kind"] == "feature"})
    texts = [d.text for d in load_documents(None, max_documents=400)]
    out = Path(args.out)
    write_dashboards(model, tok, saes, features, texts, out / "dashboards",
                     overwrite=args.overwrite, max_windows=args.windows)
    result = export_graph(graph, out / "graph", overwrite=args.overwrite,
                          dashboards=out / "dashboards", tokenizer=tok)
    print(f"wrote {', '.join(result['files'])} to {out / 'graph'}")
    print(f"view it: saecircuits serve {out / 'graph'}")


if __name__ == "__main__":
    main()
