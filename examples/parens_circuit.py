"""Trace the closing-parenthesis circuit of SmolLM2 (code and prose with nested brackets).

The metric is log-sum-exp of every token that starts with ")" (SmolLM2 merges "))", ").", ...)
minus the best other token; the patch prompt needs something else at the same length.

    python examples/parens_circuit.py --saes runs/saes --n 32 --out runs/parens
"""
from __future__ import annotations

import argparse

from saecircuits import SAESet, load_model
from saecircuits.attribution import trace_circuit
from saecircuits.demo import top_features
from saecircuits.export import export_graph
from saecircuits.tasks import make_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saes", required=True, help="SAE set directory (e.g. from train_saes.py)")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=60)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    model, tok = load_model()
    saes = SAESet.load(args.saes, model=model)
    task = make_task(tok, "parens", n=args.n)
    print("example clean prompt:", repr(task.clean[0]), "| patch prompt:", repr(task.patch[0]))
    graph, summary = trace_circuit(model, tok, saes, task, method="ig", top_k=args.top_k)
    print(f"metric {summary['metric_clean']:.2f}, accuracy {summary['accuracy_clean']:.2f}, "
          f"faithfulness {summary['faithfulness']:.2f}, {summary['feature_nodes']} feature nodes")
    for hook, feature, effect, label in top_features(graph, 8):
        print(f"  {hook}:{feature}  effect {effect:+.3f}  promotes {label!r}")
    export_graph(graph, args.out, overwrite=True, tokenizer=tok)
    print(f"exported to {args.out}; view with: saecircuits serve {args.out}")


if __name__ == "__main__":
    main()
