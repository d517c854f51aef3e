"""Train TopK SAEs on SmolLM2's residual stream from the embedded corpus (stdlib code + pydoc).

    python examples/train_saes.py --hooks resid.10,resid.23 --tokens 200000 --out runs/saes
    saecircuits eval --saes runs/saes          # SAEBench core metrics on held-out text
"""
from __future__ import annotations

import argparse

from saecircuits import load_model
from trainers import TrainConfig, train_saes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hooks", default="resid.10,resid.23")
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--arch", default="topk", choices=("relu", "topk", "batchtopk", "jumprelu"))
    parser.add_argument("--expansion", type=int, default=4)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    model, tok = load_model()
    cfg = TrainConfig(hooks=args.hooks, architecture=args.arch, expansion=args.expansion,
                      tokens=args.tokens, out=args.out, eval_tokens=2048)
    saes = train_saes(model, tok, cfg)
    for hook, sae in saes.items():
        print(hook, sae, sae.cfg.metadata.get("metrics", {}))
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
