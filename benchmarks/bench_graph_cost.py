"""Cost of an attribution graph (nodes + edges) vs one forward+backward, same batch, same run.

    python benchmarks/bench_graph_cost.py --saes DIR [--n 64] [--graph-k 200] [--fb-repeats 3]
        [--paths reference@16,closed,bf16,closed@4] [--seed-batch 8]

Times on one batch of `--n` IOI prompts: one spliced forward+backward (median of
`--fb-repeats`, interleaved before and after the graph), `ablation.prepare` (clean run,
gradients, patch targets), attribution-patching node scores, and `compute_edges` over the
top `--graph-k` feature nodes (+ error nodes) — the attribution graph of `saecircuits trace`.
Edge time is split into the batched backward calls (`torch.autograd.grad`) and the rest.
No IG and no exact patching here (see bench_attribution.py --cost-only for those).
`--paths` times several edge paths on the same states, one after the other: `reference`
(seeds at the SAE's f / err, `closed_form=False`, the code before issue 17), `closed` (the
closed-form seeds, fp32, the default) and `bf16` (closed form under bf16 autocast); each is
compared with the first path listed (largest |difference|, Pearson r of the edge weights).
`path@S` runs that path with seed_batch S (default `--seed-batch`). `closed-math` is fp32 with
the math attention kernel; `bf16` uses the math kernel on CPU (the default there),
`bf16-flash` keeps the fused kernel (the bf16 path before this option).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saecircuits import load_model  # noqa: E402
from saecircuits.attribution import ablation as ab  # noqa: E402
from saecircuits.attribution.edges import compute_edges  # noqa: E402
from saecircuits.attribution.evaluate import circuit_by_size  # noqa: E402
from saecircuits.attribution.nodes import attrib_scores  # noqa: E402
from saecircuits.sae import SAESet  # noqa: E402
from saecircuits.tasks import make_task  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attribution import fwd_bwd  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--saes", required=True)
    ap.add_argument("--task", default="ioi")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--graph-k", type=int, default=200)
    ap.add_argument("--fb-repeats", type=int, default=3)
    ap.add_argument("--paths", default="closed", help="comma list of reference, closed, closed-math, bf16, bf16-flash")
    ap.add_argument("--seed-batch", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    model, tok = load_model(device="cpu")
    saes = SAESet.load(args.saes, model=model)
    hooks = ab.ordered_hooks(model, saes)
    task = make_task(tok, args.task, n=args.n, seed=0)
    chunk = ab.chunks(tok, task, args.n)
    fb = [fwd_bwd(model, saes, chunk[0]) for _ in range(args.fb_repeats // 2 + 1)]
    t = time.perf_counter()
    states = ab.prepare(model, saes, chunk, "patch")
    t_prep = time.perf_counter() - t
    t = time.perf_counter()
    scores = attrib_scores(states, hooks)
    t_nodes = time.perf_counter() - t
    circuit = circuit_by_size(scores, args.graph_k)
    grad_s = [0.0]
    real_grad = torch.autograd.grad

    def timed_grad(*a, **k):
        s = time.perf_counter()
        try:
            return real_grad(*a, **k)
        finally:
            grad_s[0] += time.perf_counter() - s

    runs = []
    for spec in args.paths.split(","):
        path, _, sb = spec.partition("@")
        for sb in [int(sb or args.seed_batch)]:
            kw = {"reference": dict(closed_form=False), "closed": {},
                  "closed-math": dict(math_attention=True),
                  "bf16": dict(precision="bf16"),
                  "bf16-flash": dict(precision="bf16", math_attention=False)}[path]
            grad_s[0] = 0.0
            torch.autograd.grad = timed_grad
            try:
                t = time.perf_counter()
                edges = compute_edges(model, saes, states, hooks, circuit, progress=False,
                                      seed_batch=sb, **kw)
                runs.append((f"{path} (seed_batch {sb})", edges, time.perf_counter() - t, grad_s[0]))
                print(f"  ... {runs[-1][0]}: {runs[-1][2]:.1f} s", flush=True)
            finally:
                torch.autograd.grad = real_grad
    fb += [fwd_bwd(model, saes, chunk[0]) for _ in range(args.fb_repeats - len(fb))]
    t_fb = statistics.median(fb)
    base_name, base, _, _ = runs[0]
    per_hook = {h: sum(1 for nd in circuit if nd[0] == h) for h in hooks}
    print(f"{args.task} n={args.n}, {chunk[0].clean['input_ids'].shape[1]} tokens/prompt, hooks {hooks}, "
          f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    print(f"graph: {len(circuit)} nodes {per_hook}, {len(base)} edges")
    print(f"one forward+backward (median of {len(fb)}): {t_fb:.2f} s  (all: {', '.join(f'{x:.2f}' for x in fb)})")
    print(f"prepare {t_prep:.2f} s ({t_prep / t_fb:.1f}x), attrib nodes {t_nodes:.2f} s ({t_nodes / t_fb:.1f}x)")
    keys = sorted(base, key=str)
    ref = torch.tensor([base[k] for k in keys], dtype=torch.float64)
    for name, edges, t_edges, t_grad in runs:
        graph = t_prep + t_nodes + t_edges
        got = torch.tensor([edges.get(k, 0.0) for k in keys], dtype=torch.float64)
        r = torch.corrcoef(torch.stack([ref, got]))[0, 1].item() if len(keys) > 1 else float("nan")
        print(f"edges [{name}]: {t_edges:.2f} s ({t_edges / t_fb:.1f}x; backward calls {t_grad:.2f} s = "
              f"{t_grad / t_edges:.0%}); graph (nodes + edges) = {graph:.1f} s = "
              f"{graph / t_fb:.1f}x one forward+backward; vs {base_name}: {len(edges)} edges, "
              f"max |diff| {(got - ref).abs().max().item():.2e} (max |w| {ref.abs().max().item():.2e}), "
              f"Pearson r {r:.6f}")


if __name__ == "__main__":
    main()
