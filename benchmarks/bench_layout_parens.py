"""Issue 12 target 'parens stays >= 0.7 under patch evaluation': attn/mlp layout vs the demo stack.

    python benchmarks/bench_layout_parens.py LAYOUT_DIR DEMO_SAES_DIR OUT.json

LAYOUT_DIR: attn.L/mlp.L SAEs from `benchmarks/gpu_levers.py --steps layout` (its
`<work>/layout-attn-mlp`); DEMO_SAES_DIR: the demo's cached residual SAEs. 32 parens prompts
(generator seed 1), top 60 and 200 feature nodes, positional nodes summed, no edges, patch evaluation.
"""
import json, sys, time, torch
torch.set_num_threads(1)
import saecircuits as sc
from saecircuits.replacement import ReplacementModel
from saecircuits.attribution import trace_circuit
from saecircuits.tasks import make_task
model, tok = sc.load_model(device="cpu")
out = {}
for name, path in [("layout", sys.argv[1]), ("demo", sys.argv[2])]:
    saes = sc.SAESet.load(path, model=model)
    rm = ReplacementModel(model, saes, tok)
    task = make_task(tok, "parens", n=32, seed=1)
    for top_k in (60, 200):
        t = time.time()
        _, s = trace_circuit(rm, tok, saes, task, n=len(task), top_k=top_k, edges=False,
                             eval_ablation="patch", progress=False, batch_size=16)
        row = {k: s.get(k) for k in ("faithfulness", "completeness", "feature_nodes", "error_share", "metric_clean")}
        row["s"] = round(time.time() - t, 1)
        out[f"{name}/parens/top{top_k}"] = row
        print(name, top_k, row, flush=True)
with open(sys.argv[3], "w", encoding="utf-8") as fh:
    json.dump(out, fh, indent=1)
