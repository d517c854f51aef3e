"""Trace the indirect-object-identification circuit of SmolLM2 through its SAE features.

    python examples/ioi_circuit.py --saes runs/saes --n 32 --out runs/ioi
    saecircuits serve runs/ioi
"""
from __future__ import annotations

import argparse

from saecircuits import SAESet, load_model
from saecircuits.attribution import trace_circuit
from saecircuits.demo import top_features
from saecircuits.export import export_graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saes", required=True, help="SAE set directory (e.g. from train_saes.py)")
    parser.add_argument("--n", type=int, default=32, help="IOI prompts (ABBA and BABA templates)")
    parser.add_argument("--top-k", type=int, default=60, help="feature nodes kept")
    parser.add_argument("--method", default="ig", choices=("attrib", "ig", "exact"))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    model, tok = load_model()
    saes = SAESet.load(args.saes, model=model)
    graph, summary = trace_circuit(model, tok, saes, "ioi", method=args.method, n=args.n, top_k=args.top_k)
    print(f"logit(IO) - logit(S) = {summary['metric_clean']:.2f}, accuracy {summary['accuracy_clean']:.2f}")
    print(f"{summary['feature_nodes']} feature nodes, {summary['edges']} edges, "
          f"faithfulness {summary['faithfulness']:.2f}, completeness {summary['completeness']:.2f}")
    for hook, feature, effect, label in top_features(graph, 8):
        print(f"  {hook}:{feature}  effect {effect:+.3f}  promotes {label!r}")
    export_graph(graph, args.out, overwrite=True, tokenizer=tok)
    print(f"exported to {args.out}; view with: saecircuits serve {args.out}")


if __name__ == "__main__":
    main()
