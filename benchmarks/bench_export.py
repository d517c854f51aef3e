"""Export and dashboard speed on SmolLM2.

1. Dashboard activations: `collect_activations` (one nnsight trace per batch, stops after the
   deepest hook) vs a plain HF forward with `output_hidden_states=True` followed by the same
   SAE encode, on the same token windows, interleaved round-robin; medians over --runs.
2. Export: `export_graph` (all formats, SVG rendered by `dot`) for graphs of 50/200 nodes.

    python benchmarks/bench_export.py --runs 3 [--hook resid.6] [--windows 32]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pydoc_data.topics
import torch

from saecircuits import load_model
from saecircuits.export import export_graph
from saecircuits.export.dashboards import collect_activations, windows_of
from saecircuits.models import unwrap
from saecircuits.sae import SAE, SAEConfig, SAESet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_export import make_graph  # noqa: E402  (the tests' layered graph builder)


def plain(model, tok, saes, hook, layer, texts, windows, batch):
    ids, mask = windows_of(tok, texts, 64, windows)
    hf = unwrap(model)
    out = []
    with torch.no_grad():
        for s in range(0, len(ids), batch):
            hs = hf(input_ids=ids[s:s + batch], attention_mask=mask[s:s + batch].long(),
                    output_hidden_states=True).hidden_states[layer + 1]
            out.append(saes[hook].encode(hs)[..., :8])
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--hook", default="resid.6")
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    model, tok = load_model(device="cpu")
    layer = int(args.hook.split(".")[1])
    saes = SAESet({args.hook: SAE.random(SAEConfig("topk", 576, 4608, k=32, hook=args.hook))})
    texts = list(pydoc_data.topics.topics.values())
    feats = [(args.hook, i) for i in range(8)]
    times = {"collect_activations (stop after hook)": [], "HF forward + hidden_states": []}
    for _ in range(args.runs):
        t = time.perf_counter()
        fa = collect_activations(model, tok, saes, feats, texts, 64, args.windows, args.batch,
                                 progress=False)
        times["collect_activations (stop after hook)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ref = plain(model, tok, saes, args.hook, layer, texts, args.windows, args.batch)
        times["HF forward + hidden_states"].append(time.perf_counter() - t)
    keep = fa.mask
    assert torch.allclose(fa.acts[keep], ref[keep], atol=1e-4), "activations differ"
    n_tok = int(fa.tokens.numel())
    base = statistics.median(times["HF forward + hidden_states"])
    print(f"dashboard activations, SmolLM2 {args.hook}, {args.windows} windows x 64 tokens "
          f"({n_tok} tokens), batch {args.batch}, {torch.get_num_threads()} threads, "
          f"medians of {args.runs}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"  {name:40s} {m:7.2f} s  {n_tok / m:8.0f} tok/s  speed-up x{base / m:.2f}")
    print("export_graph, all formats (graph.json, csv, graphml, node-link, dot, svg, html)")
    for n_layers, n_pos, per in ((3, 4, 3), (6, 8, 3)):
        g = make_graph(n_layers=n_layers, n_pos=n_pos, per=per)
        ts = []
        for r in range(args.runs):
            with tempfile.TemporaryDirectory() as d:
                t = time.perf_counter()
                export_graph(g, Path(d) / "e")
                ts.append(time.perf_counter() - t)
        print(f"  {len(g):4d} nodes {g.graph.number_of_edges():4d} edges  "
              f"{statistics.median(ts):6.2f} s")


if __name__ == "__main__":
    main()
