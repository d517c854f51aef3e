"""A cross-layer transcoder on SmolLM2 with real text, end to end (issue 26).

    python benchmarks/bench_clt_smollm2.py [--tokens 40800] [--d-sae 576] [--k 16] [--threads 1]
        [--out DIR] [--json OUT.json]

Trains a CLT (every `resid_mid.l` -> `mlp.l'` for l' >= l, TopK then JumpReLU) on
`embedded-mix:0.7`, reports its held-out metrics (FVU per layer, the replacement model's CE-loss
score and KL against zero-ablating every MLP), then draws the attribution graph of the demo's
held-out IOI prompt through it (scores, linearity error; the intervention check does not take a
CLT yet).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=40_800)
    p.add_argument("--d-sae", type=int, default=576)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--trained", default=None, help="a CLT folder trained earlier: skip training")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from saecircuits import load_model
    from saecircuits.attribution.graphs import attribute
    from saecircuits.configs import IOI_GRAPH_PROMPT
    from saecircuits.sae import load_replacement
    from trainers.clt import CLTTrainConfig, train_clt

    model, tok = load_model(device="cpu")
    out = args.trained or args.out or tempfile.mkdtemp(prefix="clt-")
    began = time.perf_counter()
    if args.trained:
        clt = load_replacement(out, model=model)
        train_s = clt.cfg.metadata.get("train_seconds")
    else:
        clt = train_clt(model, tok, CLTTrainConfig(tokens=args.tokens, d_sae=args.d_sae, k=args.k, out=out,
                                                   progress=False))
        train_s = time.perf_counter() - began
    metrics = json.loads((Path(out) / "metrics.json").read_text())
    began = time.perf_counter()
    g = attribute(model, tok, clt, IOI_GRAPH_PROMPT, max_feature_nodes=2048, precision="fp32", progress=False)
    rep, comp = g.scores()
    # intervention_check ablates per-layer transcoder features; a CLT's write to several layers
    report = {"tokens": args.tokens, "d_sae": args.d_sae, "k": args.k, "threads": args.threads,
              "train_seconds": train_s, "metrics": metrics,
              "graph": {"prompt": IOI_GRAPH_PROMPT, "replacement": rep, "completeness": comp,
                        "error_share": g.error_share(), "features": g.n_features,
                        "active_features": g.meta.get("active_features"), "top_logit": g.logit_labels[0],
                        "linearity_error": g.linearity_error(), 
                        "seconds": round(time.perf_counter() - began, 1)}}
    print(json.dumps(report, indent=1, default=str)[:4000])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
