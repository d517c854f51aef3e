"""Bring your own SAEs (native, SAELens, sparsify, dictionary_learning or Gemma Scope files) and
your own contrastive task file, and trace a circuit.

Task file: one JSON object per line (the feature-circuits convention):
    {"clean_prefix": "...", "patch_prefix": "...", "clean_answer": " X", "patch_answer": " Y"}

    python examples/own_saes_and_task.py --saes path/to/saes --task my_task.jsonl --out runs/mine
"""
from __future__ import annotations

import argparse

from saecircuits import load_model
from saecircuits.attribution import trace_circuit
from saecircuits.demo import top_features
from saecircuits.sae import load_sae_set
from saecircuits.tasks import load_jsonl, task_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saes", required=True, help="folder with one SAE subfolder per hook point")
    parser.add_argument("--task", required=True, help="contrastive JSONL file")
    parser.add_argument("--model", default=None, help="HF model id/path (default: SmolLM2)")
    parser.add_argument("--top-k", type=int, default=40)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    model, tok = load_model(args.model)
    saes = load_sae_set(args.saes)  # format detected per folder; checked against the model below
    saes.check(model)
    task = load_jsonl(tok, args.task)
    print(f"{len(task)} prompts; full model: {task_accuracy(model, tok, task)}")
    graph, summary = trace_circuit(model, tok, saes, task, method="ig", top_k=args.top_k)
    print(f"faithfulness {summary['faithfulness']:.2f}, {summary['feature_nodes']} feature nodes")
    for hook, feature, effect, label in top_features(graph, 5):
        print(f"  {hook}:{feature}  effect {effect:+.3f}  promotes {label!r}")
    graph.save(args.out)
    print(f"saved {args.out}/featuregraph.json; export it with: saecircuits export {args.out} --out {args.out}-export")


if __name__ == "__main__":
    main()
