"""Attribution benchmark on SmolLM2 with real residual SAEs (IOI and closing parentheses).

    python benchmarks/bench_attribution.py --saes /work/saes/smol-topk --n 32

Per task: full-model accuracy; node effects by attribution patching and integrated gradients
(patch ablation); faithfulness curve over circuit sizes (complement mean-ablated); IG and
attrib vs exact patching on the top-100 IG nodes (Pearson r, sign agreement); cost of the
graph (nodes + edges of the top-200 circuit) as a ratio to one forward+backward over the same
batch and to exact patching of the same nodes; the top features with logit-lens labels and
their top-activating corpus contexts. Writes a JSON next to the markdown results.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saecircuits import load_model  # noqa: E402
from saecircuits.attribution import ablation as ab  # noqa: E402
from saecircuits.attribution.circuit import feature_labels  # noqa: E402
from saecircuits.attribution.edges import compute_edges  # noqa: E402
from saecircuits.attribution.evaluate import Evaluator, agreement, circuit_by_size, faithfulness_curve  # noqa: E402
from saecircuits.attribution.nodes import attrib_scores, exact_effects, ig_scores  # noqa: E402
from saecircuits.replacement import ReplacementModel  # noqa: E402
from saecircuits.sae import SAESet  # noqa: E402
from saecircuits.tasks import make_task, task_accuracy  # noqa: E402


def timed(fn, *a, **k):
    t = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t


def fwd_bwd(model, saes, chunk) -> float:
    """Seconds of one spliced forward + backward (gradients to every hook) over the chunk."""
    t = time.perf_counter()
    store: dict = {}
    rm = ReplacementModel(model, saes)
    logits, _ = rm.run(chunk.clean, edit=ab.grad_edit(rm, store), grad=True, last=True)
    chunk.task.metric(logits).sum().backward()
    return time.perf_counter() - t


def contexts(model, tok, saes, feats, docs):
    from saecircuits.export.dashboards import top_contexts

    found = top_contexts(model, tok, saes, feats, docs, n=3, context=48)
    out = {}
    for f, ctxs in found.items():
        out[f"{f[0]}:{f[1]}"] = [c.marked(before=10, after=3) for c in ctxs]
    return out


def cost_summary(args, chunks, n_exact, n_nodes, n_edges, t_fb, t_prep, t_attrib, t_ig, t_edges,
                 t_exact) -> dict:
    """Graph cost as ratios to one forward+backward; exact patching is linear in the node count,
    so its cost for the graph's nodes is extrapolated from the n_exact nodes actually patched."""
    per_node_exact = t_exact / n_exact
    attrib_graph = t_prep + t_attrib + t_edges
    return {
        "prompts": args.n, "tokens_per_prompt": int(chunks[0].clean["input_ids"].shape[1]),
        "fwd_bwd_s": t_fb, "prepare_s": t_prep, "attrib_nodes_s": t_attrib, "ig_nodes_s": t_ig,
        "edges_s": t_edges, "graph_nodes": n_nodes, "graph_edges": n_edges,
        "attrib_graph_over_fwd_bwd": attrib_graph / t_fb,
        "ig_graph_over_fwd_bwd": (t_prep + t_ig + t_edges) / t_fb,
        "exact_nodes_timed": n_exact, "exact_s_per_node": per_node_exact,
        "exact_same_nodes_s_extrapolated": per_node_exact * n_nodes,
        "exact_over_attrib_graph": per_node_exact * n_nodes / attrib_graph,
    }


def run_task(model, tok, saes, hooks, name, args, docs) -> dict:
    res: dict = {"task": name, "n": args.n}
    task = make_task(tok, name, n=args.n, seed=args.seed)
    res["full_model"] = task_accuracy(model, tok, task)
    chunks = ab.chunks(tok, task, args.n)          # one batch: the cost ratios use the same batch
    (states, t_prep) = timed(ab.prepare, model, saes, chunks, "patch")
    t_fb = statistics.median(fwd_bwd(model, saes, chunks[0]) for _ in range(3))
    attrib, t_attrib = timed(attrib_scores, states, hooks)
    ig, t_ig = timed(ig_scores, model, saes, states, hooks, steps=args.steps, max_rows=args.ig_rows)
    if args.cost_only:
        top = [n for n in ig.nodes() if n[2] != "err"][:args.top_agree]
        _, t_exact = timed(exact_effects, model, saes, states, top, max_rows=args.exact_rows)
        circuit = circuit_by_size(ig, args.graph_k)
        edges, t_edges = timed(compute_edges, model, saes, states, hooks, circuit)
        res["cost"] = cost_summary(args, chunks, len(top), len(circuit), len(edges), t_fb, t_prep,
                                   t_attrib, t_ig, t_edges, t_exact)
        return res
    ev = Evaluator(model, saes, states, "mean")
    res["F_model"], res["F_empty_mean"] = ev.f_model, ev.f_empty
    res["curve_ig"] = faithfulness_curve(ev, ig, args.sizes)
    res["curve_attrib"] = faithfulness_curve(ev, attrib, args.sizes)
    res["curve_ig_features_only"] = faithfulness_curve(ev, ig, args.sizes, errors=False)
    res["curve_ig_all_errors"] = faithfulness_curve(ev, ig, args.sizes, errors="all")
    res["curve_attrib_all_errors"] = faithfulness_curve(ev, attrib, args.sizes, errors="all")
    ev_patch = Evaluator(model, saes, states, "patch")  # complement patched from the patch prompts
    res["F_empty_patch"] = ev_patch.f_empty
    res["curve_ig_patch_eval"] = faithfulness_curve(ev_patch, ig, args.sizes, errors="all")
    top = [n for n in ig.nodes() if n[2] != "err"][:args.top_agree]
    exact, t_exact = timed(exact_effects, model, saes, states, top, max_rows=args.exact_rows)
    res["agreement_ig"] = agreement(ig, exact)
    res["agreement_attrib"] = agreement(attrib, exact)
    circuit = circuit_by_size(ig, args.graph_k)
    edges, t_edges = timed(compute_edges, model, saes, states, hooks, circuit)
    res["cost"] = cost_summary(args, chunks, len(top), len(circuit), len(edges), t_fb, t_prep,
                               t_attrib, t_ig, t_edges, t_exact)
    feats = [n for n in circuit if n[2] != "err"][:args.show]
    labels = feature_labels(ReplacementModel(model, saes), tok, feats)
    ctx = contexts(model, tok, saes, [(h, int(i)) for h, _, i in feats], docs) if docs else {}
    res["top_features"] = [{"node": f"{h}/*/{i}", "ig_effect": ig.effect((h, p, i)),
                            "exact_effect": exact.get((h, p, i)), "label": labels[(h, p, i)],
                            "contexts": ctx.get(f"{h}:{i}", [])} for h, p, i in feats]
    res["error_nodes"] = {h: ig.effect((h, None, "err")) for h in hooks}
    return res


def semantics_task(model, tok, saes, hooks, name, args) -> dict:
    """Issue 13: error nodes (attrib / IG vs exact), agreement incl. error nodes, exact edge
    faithfulness beside node faithfulness (patch and mean evaluation), baseline spans."""
    from saecircuits.attribution.edges import compute_edges
    from saecircuits.attribution.evaluate import edge_faithfulness_linear
    from saecircuits.attribution.nodes import node_scores
    from saecircuits.graph import Node

    res: dict = {"task": name, "n": args.n}
    task = make_task(tok, name, n=args.n, seed=args.seed)
    chunks = ab.chunks(tok, task, args.n)
    states, res["t_prepare_s"] = timed(ab.prepare, model, saes, chunks, "patch")
    attrib = attrib_scores(states, hooks)
    ig, res["t_ig_s"] = timed(ig_scores, model, saes, states, hooks, steps=args.steps,
                              max_rows=args.ig_rows, progress=False)
    errs = [Node.error(h, None) for h in hooks]
    exact_err, res["t_exact_errors_s"] = timed(exact_effects, model, saes, states, errs,
                                               max_rows=args.exact_rows, progress=False)
    res["error_nodes"] = {
        e.hook: {"exact": exact_err[e], "attrib": attrib.effect(e), "ig": ig.effect(e)} for e in errs}
    rel = lambda est: max(abs(est.effect(e) - exact_err[e]) / max(abs(exact_err[e]), 1e-9)
                          for e in errs)
    res["error_max_rel_err"] = {"attrib": rel(attrib), "ig": rel(ig), "default (exact)": 0.0}
    for label, est in (("ig", ig), ("attrib", attrib)):
        top = [nd for nd in est.nodes() if not nd.is_error][:args.top_agree]
        exact = exact_effects(model, saes, states, top, max_rows=args.exact_rows, progress=False)
        res[f"agreement_{label}_top{len(top)}_{label}_features"] = {
            "ig": agreement(ig, exact), "attrib": agreement(attrib, exact)}
        both = {**exact, **exact_err}
        res[f"agreement_{label}_features_plus_errors"] = {
            "ig": agreement(ig, both), "attrib": agreement(attrib, both)}
    scores = node_scores(model, saes, states, hooks, "attrib", progress=False)  # default ranking
    circuit = circuit_by_size(scores, args.top_agree)
    edges, res["t_edges_s"] = timed(compute_edges, model, saes, states, hooks, circuit,
                                    progress=False)
    total, acc, kept = sum(abs(w) for w in edges.values()), 0.0, set()
    for e, w in sorted(edges.items(), key=lambda kv: -abs(kv[1])):   # prune_edges' rule, 0.98
        if acc >= 0.98 * total:
            break
        kept.add(e)
        acc += abs(w)
    for abl in ("patch", "mean"):
        ev = Evaluator(model, saes, states, abl)
        node_f = ev.faithfulness(circuit)
        edge_f, t = timed(ev.edge_faithfulness, circuit, kept)
        res[f"{abl}_eval"] = {
            "F_model": ev.f_model, "F_empty": ev.f_empty, "baseline_span": ev.span_ratio(),
            "node_faithfulness": node_f, "edge_faithfulness_exact": edge_f, "t_edge_eval_s": t,
            "edge_faithfulness_linear": edge_faithfulness_linear(ev, circuit, edges, kept),
            "completeness": ev.completeness(circuit)}
    res["circuit"] = {"features": sum(1 for nd in circuit if not nd.is_error),
                      "errors": sum(1 for nd in circuit if nd.is_error), "edges": len(edges),
                      "edges_kept_0.98": len(kept)}
    return res


def cost_line(c: dict) -> str:
    return (f"Cost ({c['prompts']} prompts x {c['tokens_per_prompt']} tokens, graph of "
            f"{c['graph_nodes']} nodes / {c['graph_edges']} edges): one forward+backward "
            f"{c['fwd_bwd_s']:.1f} s (median of 3); attrib graph (clean+patch runs, nodes, edges) = "
            f"{c['attrib_graph_over_fwd_bwd']:.1f}x forward+backward; with IG nodes "
            f"{c['ig_graph_over_fwd_bwd']:.1f}x; exact patching of the same nodes (batched, "
            f"{c['exact_s_per_node']:.2f} s/node measured on {c.get('exact_nodes_timed', 'the top')} "
            f"nodes, linear in the node count) = {c['exact_over_attrib_graph']:.1f}x the attrib graph.")


def render_md(out: dict, command: str) -> str:
    """Markdown summary of the benchmark JSON."""
    lines = ["# Attribution benchmark (SmolLM2-135M-Instruct, CPU)", "", f"Command: `{command}`", "",
             f"SAEs: `{out['saes']}` at {', '.join(out['hooks'])}. Patch ablation for node effects; "
             "faithfulness with the complement mean-ablated; each prompt's first token is never "
             "ablated. 2-core CPU: absolute seconds are noisy, ratios are measured side by side "
             "in one run.", ""]
    for name in out["args"]["tasks"].split(","):
        if name not in out:
            continue
        r = out[name]
        fm = r["full_model"]
        if "curve_ig" not in r:                       # --cost-only
            lines += [f"## {name} (n={r['n']}), cost only", "", cost_line(r["cost"]), ""]
            continue
        lines += [f"## {name} (n={r['n']})", "",
                  f"Full model: accuracy {fm['accuracy']:.3f}, mean metric {fm['mean_metric']:.3f} "
                  f"(patch prompts {fm.get('patch_mean_metric', float('nan')):.3f}). "
                  f"F(M) {r['F_model']:.3f}, F(∅) mean-ablated {r['F_empty_mean']:.3f}.", "",
                  "Circuit = top-k feature nodes + error nodes at least as large as the k-th "
                  "(feature-circuits threshold rule); then with every error node kept; last "
                  "column: no error nodes (all ablated).", "",
                  "| k | error nodes | faithfulness (IG ranking) | (attrib ranking) | all errors kept (IG) | (attrib) | features only (IG) |",
                  "|---|---|---|---|---|---|---|"]
        for a, b, c, d, e in zip(r["curve_ig"], r["curve_attrib"], r["curve_ig_all_errors"],
                                 r["curve_attrib_all_errors"], r["curve_ig_features_only"]):
            lines.append(f"| {a['features']} | {a['errors']} | {a['faithfulness']:.3f} | "
                         f"{b['faithfulness']:.3f} (errors {b['errors']}) | {c['faithfulness']:.3f} | "
                         f"{d['faithfulness']:.3f} | {e['faithfulness']:.3f} |")
        if "curve_ig_patch_eval" in r:
            lines += ["", f"Complement patched from the patch prompts instead (F(∅) = patch metric "
                      f"{r['F_empty_patch']:.3f}), IG ranking, every error node kept: " + ", ".join(
                          f"k={c['features']}: {c['faithfulness']:.3f}" for c in r["curve_ig_patch_eval"])]
        ai, aa = r["agreement_ig"], r["agreement_attrib"]
        lines += ["", f"Agreement with exact patching on the top-{ai['n']} IG feature nodes: "
                  f"IG Pearson r {ai['pearson_r']:.3f}, sign agreement {ai['sign_agreement']:.3f}; "
                  f"attribution patching r {aa['pearson_r']:.3f}, sign {aa['sign_agreement']:.3f}.", ""]
        lines += [cost_line(r["cost"]), "",
                  "Top features (IG effect, exact effect, logit-lens label, top corpus contexts):", ""]
        for f in r["top_features"]:
            ex = "n/a" if f["exact_effect"] is None else f"{f['exact_effect']:+.3f}"
            lines.append(f"- `{f['node']}` IG {f['ig_effect']:+.3f}, exact {ex}, {f['label']}")
            for ctx in f["contexts"]:
                lines.append(f"    - `{ctx!r}`")
        lines += ["", "Error nodes (IG effect): " + ", ".join(
            f"{h} {v:+.2f}" for h, v in r["error_nodes"].items()), ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--saes", required=True, help="SAE set trained on SmolLM2 (e.g. the demo's)")
    ap.add_argument("--tasks", default="ioi,parens")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--sizes", default="5,10,20,50,100,200")
    ap.add_argument("--top-agree", type=int, default=100)
    ap.add_argument("--graph-k", type=int, default=200)
    ap.add_argument("--show", type=int, default=8)
    ap.add_argument("--docs", type=int, default=60, help="corpus documents for top contexts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ig-rows", type=int, default=80, help="rows per IG forward (prompts x alphas)")
    ap.add_argument("--exact-rows", type=int, default=128, help="rows per exact-patching forward")
    ap.add_argument("--cost-only", action="store_true",
                    help="only the graph-cost ratios (e.g. --tasks ioi --n 64 --top-agree 20)")
    ap.add_argument("--semantics", action="store_true",
                    help="issue-13 measurements only (error nodes, agreement incl. errors, exact "
                         "edge faithfulness); writes --json only")
    ap.add_argument("--json", default="benchmarks/results_attribution.json")
    ap.add_argument("--md", default="benchmarks/results_attribution.md")
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    model, tok = load_model(device="cpu")
    saes = SAESet.load(args.saes, model=model)
    hooks = ab.ordered_hooks(model, saes)
    if args.semantics:
        out = {"saes": args.saes, "hooks": hooks, "args": vars(args)}
        for name in args.tasks.split(","):
            out[name] = semantics_task(model, tok, saes, hooks, name, args)
            print(json.dumps(out[name], indent=1))
            Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        return
    docs = []
    if args.docs and not args.cost_only:
        from trainers.corpus import default_corpus

        corpus = default_corpus(tok).split(0.02, 0)[1]
        pieces = [corpus.document(i)[s:s + 256] for i in range(len(corpus))
                  for s in range(0, len(corpus.document(i)) - 255, 256)]
        docs = [tok.decode(p) for p in pieces[:args.docs]]
    out = {"saes": args.saes, "hooks": hooks, "args": {k: v for k, v in vars(args).items()}}
    for name in args.tasks.split(","):
        r = run_task(model, tok, saes, hooks, name, args, docs)
        out[name] = r
        print(json.dumps({k: v for k, v in r.items() if k != "top_features"}, indent=1))
        for f in r.get("top_features", []):
            print(f"  {f['node']:>18} IG {f['ig_effect']:+.3f} exact {f['exact_effect'] if f['exact_effect'] is None else round(f['exact_effect'], 3)}  {f['label']}")
            for c in f["contexts"]:
                print(f"        {c!r}")
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        Path(args.md).write_text(render_md(out, "python " + " ".join(sys.argv)))


if __name__ == "__main__":
    main()
