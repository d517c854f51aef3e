"""`saecircuits dashboards`: feature dashboards (HTML + Neuronpedia JSON) over a corpus."""
from __future__ import annotations

import argparse
from .saes_args import add_saes_arguments, load_saes

HELP = "build feature dashboards: top contexts, histograms, output tokens (HTML + JSON)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import (add_explanations_argument, add_model_arguments, add_precision_argument,
                       positive_int)

    add_model_arguments(parser)
    add_saes_arguments(parser)
    parser.add_argument("--features", required=True,
                        help="comma-separated HOOK:INDEX list, e.g. resid.12:1234,mlp.3:7")
    add_precision_argument(parser, "auto", "the forwards that collect feature activations")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--corpus", default=None,
                        help="text source: .txt/.jsonl file or directory, hf:<dataset> "
                             "(default: the embedded stdlib + pydoc corpus)")
    parser.add_argument("--max-docs", type=positive_int, default=400, help="documents read (default 400)")
    parser.add_argument("--windows", type=positive_int, default=256,
                        help="token windows to run through the model (default 256)")
    parser.add_argument("--context", type=positive_int, default=64, help="tokens per window (default 64)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="windows per model pass")
    parser.add_argument("--activations", default=None,
                        help="reuse stored activations (activations.safetensors of an earlier run; "
                        "default: compute them)")
    add_explanations_argument(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> dict:
    from trainers.corpus import load_documents

    from ..export.dashboards import FeatureActivations, parse_features, write_dashboards
    from ..fileio import check_output_dir
    from ..models import load_model, model_device

    from ..export.explanations import load_explanation_records

    check_output_dir(args.out, overwrite=args.overwrite)
    features = parse_features(args.features)
    explanations = load_explanation_records(args.explanations) if args.explanations else None
    from ..limits import check_tokens

    model, tok = load_model(args.model, device=args.device)
    check_tokens(model, args.context, "--context")
    saes = load_saes(args, model=model, hooks=sorted({h for h, _ in features}),
                        device=model_device(model))
    stored = FeatureActivations.load(args.activations) if args.activations else None
    texts = None
    if stored is None:
        texts = [d.text for d in load_documents(args.corpus, max_documents=args.max_docs)]
    result = write_dashboards(model, tok, saes, features, texts, args.out,
                              overwrite=args.overwrite, context=args.context,
                              max_windows=args.windows, batch_size=args.batch_size,
                              activations=stored, explanations=explanations,
                              precision=args.precision)
    if not args.json:
        print(f"wrote dashboards for {len(result['features'])} features to {args.out} "
              f"({result['about']})" + (f"; {len(result['explained'])} with explanations"
                                        if explanations else ""))
    return result
