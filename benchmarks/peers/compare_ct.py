"""Our attribution graph against circuit-tracer's, edge for edge, on the same transcoder files.

    python benchmarks/peers/compare_ct.py --ct-out CT_OUT --transcoders TC_DIR \
        [--prompt TEXT] [--threads 1] [--batch-size 64] [--json OUT.json]

CT_OUT: the output folder of `benchmarks/peers/ct_worker.py` (circuit-tracer 0.5.0 in its own venv)
on the same prompt and transcoders (TC_DIR, circuit-tracer's file layout, read by saecircuits'
`formats.circuit_tracer`). Reports: whether the active features are the same (layer, pos, index),
the Pearson r of the two adjacency matrices (all entries, and the entries either graph makes
non-zero), the largest |difference| relative to the largest |edge|, replacement/completeness of
both, the pruned node masks' agreement, and our time per graph next to circuit-tracer's (both
recorded with the thread count; compare only runs on the same machine and load).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def pearson(a: np.ndarray, b: np.ndarray, chunk: int = 1 << 22) -> float:
    """r of two equally shaped arrays, accumulated in float64 over chunks (no big temporaries)."""
    a, b = a.reshape(-1), b.reshape(-1)
    n = a.size
    sa = sb = saa = sbb = sab = 0.0
    for s in range(0, n, chunk):
        x, y = a[s:s + chunk].astype(np.float64), b[s:s + chunk].astype(np.float64)
        sa += x.sum(); sb += y.sum(); saa += (x * x).sum(); sbb += (y * y).sum(); sab += (x * y).sum()
    cov = sab / n - (sa / n) * (sb / n)
    va, vb = saa / n - (sa / n) ** 2, sbb / n - (sb / n) ** 2
    return float(cov / np.sqrt(va * vb))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ct-out", required=True)
    p.add_argument("--transcoders", required=True)
    p.add_argument("--prompt", default="When Mary and John went to the store, John gave a drink to")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--max-feature-nodes", type=int, default=None,
                   help="as circuit-tracer's run (the same --batch-size too: it sets the re-ranking queue)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from saecircuits import load_model
    from saecircuits.attribution.graphs import attribute
    from saecircuits.sae import load_replacement

    ct = Path(args.ct_out)
    meta = json.loads((ct / "meta.json").read_text())
    nodes = json.loads((ct / "nodes.json").read_text())
    model, tok = load_model()
    tcs = load_replacement(args.transcoders, model=model)
    began = time.perf_counter()
    g = attribute(model, tok, tcs, args.prompt, batch_size=args.batch_size, precision=args.precision,
                  max_feature_nodes=args.max_feature_nodes)
    ours_s = time.perf_counter() - began
    ours_feats = g.features.numpy()
    theirs_feats = np.stack([nodes["features"][k] for k in ("layer", "pos", "feature")], 1)
    same_tokens = g.tokens.tolist() == meta["input_tokens"]
    same_features = ours_feats.shape == theirs_feats.shape and bool((ours_feats == theirs_feats).all())
    out = {"prompt": args.prompt, "same_tokens": same_tokens, "same_features": same_features,
           "n_features": {"ours": g.n_features, "circuit_tracer": int(theirs_feats.shape[0])},
           "active_features": {"ours": g.meta["active_features"],
                               "circuit_tracer": nodes.get("n_active_features")},
           "cpu_threads": args.threads, "batch_size": args.batch_size, "precision": args.precision}
    ours_scores = g.scores()
    out["scores"] = {"ours": {"replacement": ours_scores[0], "completeness": ours_scores[1]},
                     "circuit_tracer": meta["scores"]}
    out["seconds"] = {"ours_attribute": round(ours_s, 1),
                      "circuit_tracer_attribute": round(meta["timings_s"]["attribute"], 1),
                      "circuit_tracer_threads": meta.get("torch_threads")}
    if same_features:
        theirs = np.load(ct / "adjacency.npy", mmap_mode="r")
        ours = g.adjacency.numpy()
        out["adjacency_pearson"] = pearson(ours, np.asarray(theirs))
        nz = (ours != 0) | (np.asarray(theirs) != 0)
        out["adjacency_pearson_nonzero"] = pearson(ours[nz], np.asarray(theirs)[nz])
        out["max_abs_diff_over_max_abs"] = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
        their_mask = np.load(ct / "node_mask.npy")
        our_mask = g.prune()[0].numpy()
        out["pruned_nodes"] = {"ours": int(our_mask.sum()), "circuit_tracer": int(their_mask.sum()),
                               "agree": float((our_mask == their_mask).mean())}
    out["linearity_error"] = g.linearity_error()
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
