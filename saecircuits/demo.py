"""The end-to-end demo: train (or reuse) SAEs, trace two circuits, steer, export.

    load model ─► SAEs (cached by recipe) ─► IOI + parens circuits (+ warnings)
               ─► basis comparison (SAE vs PCA vs raw) ─► top features (one logit lens) + contexts
               ─► steering: among parens-circuit features and those whose addition raises
                  log P(")") most (gradient x corpus max), the one with the largest MEASURED P(")"),
                  chosen on selection prompts, reported on disjoint held-out prompts ─► exports

`run_demo(DemoConfig(...))` is what `saecircuits demo` calls; every step prints what it did.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, ExportError, SAEFormatError
from .fileio import atomic_dir, remove_stale_temps, write_json
from .models import cache_dir, load_model, model_name_of
from .progress import bar as progress_bar, status, track
from .replacement import ReplacementModel
from .configs import DemoConfig  # noqa: F401 (re-exported: saecircuits.demo.DemoConfig)
from .sae import SAESet

DEMO_MARKER = "demo.json"
EXPLAIN = ("faithfulness = share of the clean-vs-patch metric gap the circuit alone recovers "
           "(1 = all of it; > 0.5 is good); completeness = the share left when only the circuit "
           "is ablated (near 0 = nothing important is missing)")
ERROR_SHARE_WARN = 0.5  # warn when SAE error nodes hold more of the circuit's |effect| than this
SELECT_PROMPTS = [  # prompts where ")" is not due, used to CHOOSE the steering feature and lever
    "The train left the station and",
    "values = [1, 2, 3]\nbest =",
    "In the morning we walked to",
    "The committee decided that the",
    "class Point:\n    x =",
    "He looked at the sky and said",
]
NOT_DUE_PROMPTS = [  # held-out prompts (disjoint from SELECT_PROMPTS) for the reported numbers
    "The weather in Paris today is",
    "def greet(name):\n    message =",
    "She opened the door and",
    "for item in items:\n    total +=",
    "The results of the experiment were",
    "import os\nimport sys\n\nPATH =",
]


def _say(message: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:6.1f}s] {message}", flush=True)


def _prepare_out(out: Path) -> None:
    """Refuse to replace a directory that is not an earlier demo's output."""
    if out.exists() and any(out.iterdir()) and not (out / DEMO_MARKER).is_file():
        raise ExportError(f"output directory {str(out)!r} exists and is not a saecircuits demo "
                          "output; choose another --out")


def demo_saes(model, tok, cfg: DemoConfig, start: float) -> tuple[SAESet, SAESet | None]:
    """(SAEs, transcoders or None): loaded from the cache, or trained from one harvest (then
    cached; the transcoders live in the set's `transcoders/` folder)."""
    from trainers import train_saes
    from trainers.train import TRANSCODERS

    d_model = model.config.hidden_size if hasattr(model, "config") else None
    train_cfg = cfg.train_config()
    recipe = {"model": model_name_of(model), "d_model": d_model, **{
        k: v for k, v in asdict(train_cfg).items() if k not in ("out", "progress", "device", "resume")}}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:12]
    folder = cache_dir() / "saes" / f"demo-{key}"

    def load():
        saes = SAESet.load(folder, model=model, hooks=list(cfg.hooks))
        tcs = SAESet.load(folder / TRANSCODERS, model=model) if cfg.transcoders else None
        return saes, tcs

    if folder.is_dir() and not cfg.retrain:
        try:
            out = load()
            _say(f"reusing cached dictionaries from {folder}", start)
            return out
        except SAEFormatError:
            _say(f"cached dictionaries at {folder} are incomplete; training again", start)
    what = f"TopK SAEs (k={cfg.k}, d_sae={cfg.expansion}x) at {', '.join(cfg.hooks)}"
    if cfg.transcoders:
        what += f" and skip transcoders (TopK k={cfg.tc_k}, d_sae={cfg.tc_expansion}x) at every MLP"
    _say(f"training {what} from one harvest of {cfg.tokens:,} tokens of "
         f"{cfg.corpus or 'the embedded corpus'}", start)
    remove_stale_saes(folder.parent)
    with atomic_dir(folder, overwrite=True) as tmp:  # a killed run leaves only a temp (removed on
        train_cfg.out = str(tmp)                    # SIGTERM/Ctrl-C or by the next run)
        train_saes(model, tok, train_cfg)
    _say(f"trained dictionaries cached at {folder} (a rerun reuses them; --retrain trains again)", start)
    return load()


def transcoder_summary(tcs: SAESet) -> dict | None:
    """Per-layer EV (median, min) and the joint replacement-model scores from the training run's
    metrics (None when the run was not evaluated)."""
    evs = [t.cfg.metadata.get("metrics", {}).get("explained_variance") for t in tcs.values()]
    joint = next(iter(tcs.values())).cfg.metadata.get("joint_metrics")
    if any(v is None for v in evs) or not joint:
        return None
    evs.sort()
    return {"ev_median": evs[len(evs) // 2], "ev_min": evs[0], "ce_loss_score": joint["ce_loss_score"],
            "kl": joint["kl_joint"], "kl_zero": joint["kl_zero"]}


def top_path(fg, start: str, top: int = 12) -> list[str]:
    """From node `start` (a logit), follow the incoming edge with the largest |weight| back until
    a token embedding: the strongest explained chain tokens -> features -> answer. The first hop
    goes to a feature where the logit has one (the token's own direct edge through frozen
    attention is reported beside it); error nodes have no inputs to follow and are passed over."""
    path, node, seen = [start], start, {start}
    g = fg.graph
    while len(path) < top:
        preds = [(abs(d["weight"]), u) for u, _, d in g.in_edges(node, data=True)
                 if u not in seen and g.nodes[u]["kind"] != "error"]
        if node == start and any(g.nodes[u]["kind"] == "feature" for _, u in preds):
            preds = [p for p in preds if g.nodes[p[1]]["kind"] == "feature"]   # through a feature
        if not preds:
            break
        node = max(preds)[1]
        path.append(node)
        seen.add(node)
        if g.nodes[node]["kind"] == "embed":
            break
    return path[::-1]


def replacement_graphs(model, tok, tcs: SAESet, cfg: DemoConfig, out_graphs: dict, start: float) -> dict:
    """One replacement graph per held-out prompt (IOI, parens): scores, the top features with
    their logit-lens labels, the strongest path from a token to the answer, the linearity check
    and the unfrozen-model intervention check. Fills `out_graphs` with exportable graphs."""
    from .attribution.graphs import attribute, intervention_check, to_feature_graph
    from .configs import IOI_GRAPH_PROMPT, PARENS_GRAPH_PROMPT

    summary = {}
    for task, prompt in (("ioi", IOI_GRAPH_PROMPT), ("parens", PARENS_GRAPH_PROMPT)):
        _say(f"replacement graph ({task}): {prompt!r} (attention and norms frozen, every MLP a transcoder)", start)
        g = attribute(model, tok, tcs, prompt, cfg.graph_config())
        rep, comp = g.scores()
        fg = to_feature_graph(g, model, tok, tcs)
        check = intervention_check(model, tok, tcs, g, top=10)
        info = {"prompt": prompt, "replacement_score": rep, "completeness_score": comp,
                "error_share": g.error_share(), "features": g.n_features,
                "active_features": g.meta["active_features"], "seconds": g.meta["seconds"],
                "linearity_error": g.linearity_error(), "logits": g.logit_labels,
                "intervention_pearson": check["pearson_total"], "kept_nodes": fg.graph.number_of_nodes(),
                "kept_edges": fg.graph.number_of_edges(), "warnings": fg.meta["warnings"]}
        _say(f"  replacement score {rep:.2f}, completeness {comp:.2f} (circuit-tracer's scores: the share of "
             f"influence on the logits from tokens rather than error nodes, and how much of every node's "
             f"input the graph explains); {g.n_features} features, {info['kept_nodes']} nodes kept, "
             f"{g.meta['seconds']:.0f} s; top logit {g.logit_labels[0]!r} (p={float(g.logit_probs[0]):.2f})",
             start)
        feats = sorted(((d["effect"], nid, d) for nid, d in fg.graph.nodes(data=True) if d["kind"] == "feature"),
                       reverse=True)[:5]
        print("    top features by influence (layer, token, what the decoder row promotes):")
        for eff, nid, d in feats:
            print(f"      {d['hook']:>6s} #{d['feature']:<5d} at {d.get('token', '')!r:<10} influence {eff:.3f}  "
                  f"{d.get('label', '')}")
        logit = next(n for n, d in fg.graph.nodes(data=True) if d["kind"] == "logit")
        chain = [fg.graph.nodes[n] for n in top_path(fg, logit)]
        text = " -> ".join(repr(d.get("token")) if d["kind"] == "embed" else
                           (d["label"] if d["kind"] == "logit" else
                            f"{d['hook']}#{d['feature']}" if d["kind"] == "feature" else f"{d['hook']} err")
                           for d in chain)
        print(f"    strongest path: {text}")
        exactness = (" (bf16 edges: rounding; --precision fp32 checks to ~1e-6)"
                     if g.meta.get("precision", {}).get("precision") == "bf16" else "")
        print(f"    checks: incoming edges + biases reproduce every target to {info['linearity_error']:.1e} "
              f"(relative){exactness}; ablating the top 10 features in the real model moves the logit as the graph "
              f"predicts, Pearson r {check['pearson_total'] if check['pearson_total'] is not None else float('nan'):.2f}")
        for w in info["warnings"]:
            print(f"    warning: {w}", flush=True)
        info["strongest_path"] = text
        summary[task] = info
        out_graphs[f"graph-{task}"] = fg
    return summary


def remove_stale_saes(folder: Path) -> list[Path]:
    """Remove what killed demo trainings left in the SAE cache `folder`: `atomic_dir`
    temporaries (`fileio.remove_stale_temps`) and the `demo-KEY.tmp-PID` directories of older
    versions, when their process is gone. Returns the removed paths."""
    from .fileio import _pid_alive

    removed = remove_stale_temps(folder, depth=0)
    for old in sorted(folder.glob("demo-*.tmp-*")) if folder.is_dir() else []:
        pid = old.name.rsplit("-", 1)[1]
        if old.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
    return removed


def top_features(graph, n: int) -> list[tuple[str, int, float, str]]:
    """The `n` features with the largest |effect| in `graph`: (hook, feature, effect, label)."""
    best: dict[tuple[str, int], tuple[float, str]] = {}
    for _, d in graph.nodes(data=True):  # a feature may appear at several positions
        if d["kind"] == "feature":
            key = (d["hook"], int(d["feature"]))
            if abs(d["effect"]) > abs(best.get(key, (0.0, ""))[0]):
                best[key] = (float(d["effect"]), d.get("label") or "")
    rows = [(h, f, e, label) for (h, f), (e, label) in best.items()]
    return sorted(rows, key=lambda r: -abs(r[2]))[:n]


def lens_note(rm: ReplacementModel, tok, hook: str, feat: int, token_id: int | None = None,
              top: int = 3) -> str:
    """What the feature's decoder row promotes through the ONE logit lens (`rm.lens`): its top
    tokens and, if `token_id` is given, its logit change for that token and that token's rank."""
    row = rm.lens(hook, [feat])[0]  # [vocab]
    label = "↑ " + " ".join(repr(tok.decode([i])) for i in row.topk(top).indices.tolist())
    if token_id is None:
        return label
    value = float(row[token_id])
    rank = int((row > value).sum()) + 1
    return f"{label}; {tok.decode([token_id])!r} {value:+.2f} (rank {rank:,} of {row.numel():,})"


def basis_headline(model, tok, saes: SAESet, cfg: DemoConfig) -> dict[str, Any]:
    """SAE vs PCA vs raw at the middle hook on a small IOI set (`saecircuits.bases`): the
    recovered share of the clean→patch metric change when the top n units are patched, and the
    units / edit magnitude needed to bring KL(edited ‖ counterfactual) under a threshold."""
    from .bases import DEFAULT_NS, build_bases, compare_bases, headline
    from .tasks import make_task

    hook = cfg.hooks[len(cfg.hooks) // 2]
    task = make_task(tok, "ioi", n=cfg.basis_prompts, seed=cfg.seed)
    bases = build_bases(model, tok, hook, ["sae", "pca", "raw"], sae=saes[hook], fit_tokens=2048,
                        seed=cfg.seed)
    result = compare_bases(model, tok, task, hook, bases, ns=DEFAULT_NS)
    return {**result.to_dict(), "headline": headline(result)}


def _p_close(rm: ReplacementModel, prompts: list[str], close: list[int], interventions=None) -> float:
    """Mean P(next token starts with ')') over `prompts` at the first generated step."""
    from .splice import encode_inputs
    from .steering import steer

    if not interventions:
        logits, _ = rm.run(encode_inputs(rm.tokenizer, prompts), last=True, splice=False)
        return float(logits.float().softmax(-1)[:, close].sum(-1).mean())
    result = steer(rm, None, prompts, interventions, max_new_tokens=1, baseline=False, track=close)
    return float(result.steered_probs[:, 0].sum(-1).mean())


LEVERS = [("set", 6.0, "all"), ("set", 12.0, "all"), ("set", 24.0, "all"), ("add", 12.0, "all"),
          ("set", 24.0, "last"), ("set", 48.0, "last")]  # (mode, x the feature's corpus max, positions)
CANDIDATE_MULTIPLES = (6.0, 12.0, 24.0)  # every candidate is set to these x its corpus max everywhere
COMBINE = (2, 3)  # also try the 2 and 3 best candidates clamped together


def gradient_candidates(rm: ReplacementModel, close: list[int], per_hook: int) -> dict[str, list[tuple[int, float]]]:
    """Per hook, the `per_hook` features whose addition raises log P(')') most to first order on
    SELECT_PROMPTS (`steering.promoting_features`: one forward + backward of the bound model)."""
    from .steering import promoting_features

    return promoting_features(rm, SELECT_PROMPTS, close, top=per_hook)


def choose_steering(rm: ReplacementModel, tok, graph, peaks: dict[tuple[str, int], float],
                    cfg: DemoConfig, grads: dict[str, list[tuple[int, float]]] | None = None) -> dict[str, Any]:
    """Choose the feature and lever by MEASURED effect on P(')') on SELECT_PROMPTS.

    Candidates: the `cfg.steer_candidates` parens-circuit features with the largest positive
    effect, plus the 2 x `cfg.steer_candidates` features with the largest predicted gain
    g x corpus max, where g = d log P(')') / d feature at the last position (`grads`, from
    `gradient_candidates`; computed here when None). Each candidate is set to each of
    CANDIDATE_MULTIPLES x its corpus max at every position (the response is not monotonic: too
    large a clamp breaks the model); the candidate with the highest P(')') is kept, every lever in
    LEVERS is tried on it, and so are the `COMBINE` best candidates clamped together (each at its
    best multiple). The option with the highest P(')') is returned (`interventions`). The
    reported numbers come from NOT_DUE_PROMPTS."""
    from .steering import Intervention
    from .tasks.parens import closing_ids

    close = closing_ids(tok)
    circuit = [(h, f, e, "circuit") for h, f, e, _ in top_features(graph, 10**6) if e > 0][:cfg.steer_candidates]
    seen = {(h, f) for h, f, _, _ in circuit}
    if grads is None:
        grads = gradient_candidates(rm, close, 8 * cfg.steer_candidates)
    gain = sorted(((h, f, g * max(peaks.get((h, f), 0.0), 1.0), "gradient") for h, rows in grads.items()
                   for f, g in rows if g > 0 and (h, f) not in seen), key=lambda r: -r[2])
    candidates = circuit + gain[:2 * cfg.steer_candidates]
    if not candidates:
        raise ConfigError("no feature to steer with: the parens circuit has no feature with a positive "
                          "effect and no feature's addition raises P(')')")

    def intervention(hook, feat, mode, mult, where):
        value = round(mult * max(peaks.get((hook, feat), 0.0), 1.0), 2)
        return Intervention(hook, feat, mode, value, positions=[-1] if where == "last" else where)

    measured: dict[tuple, float] = {}
    combos = sum(1 for n in COMBINE if len(candidates) >= n)
    bar = progress_bar(1 + len(candidates) * len(CANDIDATE_MULTIPLES) + len(LEVERS) + combos,
                       "steering: P(')') per setting", unit="setting")

    def p_close(*settings) -> float:  # settings: (hook, feature, mode, multiple, positions), ...
        if settings not in measured:
            measured[settings] = _p_close(rm, SELECT_PROMPTS, close, [intervention(*x) for x in settings])
        bar.update(1)
        return measured[settings]

    base = _p_close(rm, SELECT_PROMPTS, close)
    bar.update(1)
    tried = []
    for h, f, e, src in candidates:
        sweep = {m: p_close((h, f, "set", m, "all")) for m in CANDIDATE_MULTIPLES}
        m = max(sweep, key=sweep.get)
        tried.append({"feature": f"{h}:{f}", "hook": h, "index": f, "effect": e, "source": src,
                      "p_close": sweep[m], "multiple": m, "sweep": sweep})
    best = max(tried, key=lambda t: t["p_close"])
    levers = [{"mode": mode, "multiple": mult, "positions": where,
               "p_close": p_close((best["hook"], best["index"], mode, mult, where))} for mode, mult, where in LEVERS]
    lever = max(levers, key=lambda lv: lv["p_close"])
    ivs = [intervention(best["hook"], best["index"], lever["mode"], lever["multiple"], lever["positions"])]
    ranked = sorted(tried, key=lambda t: -t["p_close"])
    for n in COMBINE:  # the n best candidates clamped together, each at its best multiple
        if len(ranked) < n:
            break
        settings = tuple((t["hook"], t["index"], "set", t["multiple"], "all") for t in ranked[:n])
        levers.append({"mode": "set", "multiple": [t["multiple"] for t in ranked[:n]], "positions": "all",
                       "features": [t["feature"] for t in ranked[:n]], "p_close": p_close(*settings)})
        if levers[-1]["p_close"] > lever["p_close"]:
            lever, ivs = levers[-1], [intervention(*x) for x in settings]
    bar.close()
    return {"baseline_select": base, "candidates": tried, "levers": levers, "chosen": best,
            "lever": lever, "interventions": ivs, "peak": peaks.get((best["hook"], best["index"]), 0.0)}


def steering_showcase(rm: ReplacementModel, tok, graph, peaks: dict[tuple[str, int], float], cfg: DemoConfig,
                      grads: dict[str, list[tuple[int, float]]] | None = None,
                      start: float | None = None) -> dict[str, Any]:
    """The demo's steering step: `choose_steering` on SELECT_PROMPTS (printed), then 12 greedy
    tokens on the held-out NOT_DUE_PROMPTS with and without the chosen clamp; returns the summary."""
    from .steering import steer
    from .tasks.parens import closing_ids

    start = time.perf_counter() if start is None else start
    choice = choose_steering(rm, tok, graph, peaks, cfg, grads=grads)
    print(f"  P(next token starts with ')') on the selection prompts, baseline {choice['baseline_select']:.4f}; "
          f"each feature set to {'/'.join(f'{m:.0f}' for m in CANDIDATE_MULTIPLES)}x its corpus max at every position:")
    for t in choice["candidates"]:
        mark = "  <- chosen" if t is choice["chosen"] else ""
        what = "circuit effect" if t["source"] == "circuit" else "predicted gain"
        sweep = " / ".join(f"{p:.4f}" for p in t["sweep"].values())
        print(f"    {t['feature']:<14s} {what} {t['effect']:+8.3f}  P {sweep}{mark}")
    print(f"  levers on {choice['chosen']['feature']} (mode, x corpus max {choice['peak']:.1f}, positions), "
          "then the best candidates together:")
    for lv in choice["levers"]:
        mark = "  <- used" if lv is choice["lever"] else ""
        what = f"  {' + '.join(lv['features'])}" if "features" in lv else ""
        mult = "/".join(f"{m:.0f}" for m in lv["multiple"]) if isinstance(lv["multiple"], list) else f"{lv['multiple']:.0f}"
        print(f"    {lv['mode']:<4s} {mult:>4s}x  {lv['positions']:<5s} P {lv['p_close']:.4f}{what}{mark}")
    ivs = choice["interventions"]
    close = closing_ids(tok)
    with status(f"steering: 12 tokens on {len(NOT_DUE_PROMPTS)} held-out prompts"):
        result = steer(rm, None, NOT_DUE_PROMPTS, ivs, max_new_tokens=12, track=close)
    first_before = float(result.baseline_probs[:, 0].sum(-1).mean())
    first_after = float(result.steered_probs[:, 0].sum(-1).mean())
    every = float(result.prob_shift.sum(-1).nanmean())   # NaN: steps after a prompt's EOS
    print(result.format())
    _say(f"  held-out prompts ({len(NOT_DUE_PROMPTS)}, disjoint from the selection prompts): "
         f"P(next token starts with ')') {first_before:.4f} -> {first_after:.4f} at the first step; "
         f"mean shift over all {result.prob_shift.shape[1]} steps {every:+.4f}", start)
    return {**result.to_dict(), "feature": choice["chosen"]["feature"],
            "features": [f"{iv.hook}:{iv.feature}" for iv in ivs], "value": float(ivs[0].value),
            "mode": ivs[0].mode, "positions": choice["lever"]["positions"],
            "candidates": choice["candidates"], "levers": choice["levers"],
            "p_close_before": first_before, "p_close_after": first_after,
            "mean_prob_shift": first_after - first_before, "mean_prob_shift_all_steps": every}


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the demo end to end; returns the summary also written to `<out>/demo.json`."""
    from .attribution import trace_circuit
    from .errors import SaecircuitsError
    from .export import export_graph
    from .export.dashboards import collect_activations, contexts_of, write_dashboards
    from .tasks.parens import closing_ids
    from trainers.corpus import load_documents

    start = time.perf_counter()
    out = Path(cfg.out)
    _prepare_out(out)
    model, tok = load_model(cfg.model, device=cfg.device)
    _say(f"loaded {model_name_of(model)} ({sum(p.numel() for p in model._module.parameters()) / 1e6:.0f}M "
         f"params) on {next(model._module.parameters()).device}", start)
    from .precision import resolve as resolve_precision

    prec = resolve_precision(cfg.precision, next(model._module.parameters()).device)
    _say(f"precision {prec.name} for harvesting, training and edges ({cfg.precision}: {prec.reason})",
         start)
    saes, tcs = demo_saes(model, tok, cfg, start)
    for hook, sae in saes.items():
        metrics = sae.cfg.metadata.get("metrics") or {}
        shown = ", ".join(f"{k} {metrics[k]:.3f}" for k in ("l0", "explained_variance", "dead_fraction",
                                                             "ce_loss_score", "kl_score") if k in metrics)
        _say(f"  SAE {hook}: d_sae {sae.cfg.d_sae}, k {sae.cfg.k}" + (f" ({shown})" if shown else ""), start)
    tc_summary = transcoder_summary(tcs) if tcs is not None else None
    if tc_summary:
        _say(f"  transcoders at {len(tcs)} MLPs: explained variance of the MLP outputs median "
             f"{tc_summary['ev_median']:.2f} (min {tc_summary['ev_min']:.2f}); the replacement model "
             f"(every MLP replaced, no error terms) keeps a CE-loss score of {tc_summary['ce_loss_score']:.2f} "
             f"(KL {tc_summary['kl']:.2f} nats vs {tc_summary['kl_zero']:.2f} with every MLP zeroed)", start)
    rm = ReplacementModel(model, saes, tok)  # every SAE step below uses this one bound model

    summary: dict[str, Any] = {"model": model_name_of(model), "config": asdict(cfg), "circuits": {},
                               "precision": prec.record(), "transcoders": tc_summary}
    graphs = {}
    print(f"\n  ({EXPLAIN})", flush=True)
    for task in ("ioi", "parens"):
        _say(f"tracing the {task} circuit ({cfg.n} prompts, method {cfg.method}, top {cfg.top_k} nodes)", start)
        graph, info = trace_circuit(rm, tok, None, task, cfg.trace_config())
        graphs[task] = graph
        summary["circuits"][task] = info
        scores = ", ".join(f"{k} {v:.2f}" for k, v in sorted(  # faithfulness* first, then completeness*
            info.items(), key=lambda kv: (not kv[0].startswith("faith"), kv[0]))
            if k.startswith(("faithfulness", "completeness")) and isinstance(v, float))
        _say(f"  {task}: clean metric {info['metric_clean']:.2f}, accuracy {info['accuracy_clean']:.2f}, "
             f"{scores}, {info['feature_nodes']} feature + {info['error_nodes']} error nodes, "
             f"{info['edges']} edges ({info.get('eval_ablation', 'mean')} evaluation)", start)
        alone, through = info.get("features_alone"), info.get("share_through_sites")
        if alone is not None or through is not None:
            print(f"    features alone (every error node ablated too): "
                  f"{'n/a' if alone is None else format(alone, '.2f')}; share of the clean->patch change "
                  f"that runs through the SAEs' sites: {'n/a' if through is None else format(through, '.2f')}",
                  flush=True)
        warnings_ = [str(w) for w in (info.get("warnings") or [])]
        share = info.get("error_share") or 0.0       # the trace's own (attribution.evaluate.error_share)
        if share > ERROR_SHARE_WARN and not any("error node" in w for w in warnings_):
            warnings_.append(f"SAE error nodes hold {share:.0%} of the circuit's |effect|: the SAEs "
                             "miss most of what this circuit computes (more training tokens or a "
                             "wider SAE help)")
        for w in warnings_:
            print(f"    warning: {w}", flush=True)
        info["demo_warnings"] = warnings_

    replacement = {}
    if tcs is not None:
        summary["replacement_graphs"] = replacement_graphs(model, tok, tcs, cfg, replacement, start)

    if cfg.compare_bases:
        _say("comparing bases (SAE vs PCA vs raw) on IOI prompts", start)
        try:
            summary["bases"] = basis_headline(model, tok, saes, cfg)
            _say(f"  {summary['bases']['headline']}", start)
        except SaecircuitsError as err:  # an informative extra, never the reason a demo fails
            summary["bases"] = {"error": str(err)}
            _say(f"  basis comparison skipped: {err}", start)

    features = {task: top_features(g, 5) for task, g in graphs.items()}
    all_nodes = sorted({(h, f) for g in graphs.values() for _, d in g.nodes(data=True)
                        if d["kind"] == "feature" for h, f in [(d["hook"], int(d["feature"]))]})
    _say(f"collecting activations of {len(all_nodes)} circuit features over "
         f"{cfg.dashboard_windows} corpus windows", start)
    texts = [d.text for d in load_documents(None)]
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    texts = [texts[i] for i in order[:400]]
    grads = gradient_candidates(rm, closing_ids(tok), 8 * cfg.steer_candidates)  # steering candidates
    wanted = sorted(set(all_nodes) | {(h, f) for h, rows in grads.items() for f, _ in rows})
    acts = collect_activations(rm, tok, None, wanted, texts, max_windows=cfg.dashboard_windows,
                               precision=cfg.precision)
    peaks = {node: float(acts.acts[..., acts.column(node)].max()) for node in wanted}
    paren = tok.encode(")", add_special_tokens=False)
    paren_id = paren[0] if len(paren) == 1 else None
    for task, rows in features.items():
        print(f"\nTop features of the {task} circuit, by |effect| on the metric (logit lens: what the "
              "decoder row promotes; top corpus context, »max token«):")
        shown_rows = []
        for hook, feat, effect, _ in rows:
            note = lens_note(rm, tok, hook, feat, paren_id if task == "parens" else None)
            ctx = contexts_of(acts, tok, (hook, feat), n=1)
            where = ""
            if ctx and ctx[0].max > 0:
                c = ctx[0]
                where = f"  max {c.max:.1f} in {c.marked('»', '«')[-70:]!r}"
            print(f"  {hook}:{feat:<5d} effect {effect:+.3f}  lens {note}{where}")
            shown_rows.append({"hook": hook, "feature": feat, "effect": effect, "label": note})
        summary["circuits"][task]["top_features"] = shown_rows
    print()

    _say(f"steering: choosing among the top {cfg.steer_candidates} parens features (positive effect) "
         f"and the {2 * cfg.steer_candidates} features with the largest predicted gain (d log P(')') / d feature "
         f"x corpus max) by their measured effect on P(')') on {len(SELECT_PROMPTS)} selection prompts", start)
    summary["steering"] = steering_showcase(rm, tok, graphs["parens"], peaks, cfg, grads, start)

    _prepare_out(out)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    with atomic_dir(out, overwrite=True) as tmp:  # an earlier demo output is replaced whole
        write_dashboards(model, tok, saes, all_nodes, None, tmp / "dashboards", activations=acts)
        for task, graph in track([*graphs.items(), *replacement.items()],
                                 "exports (graph files, SVG, viewer)", unit="graph"):
            export_graph(graph, tmp / task, dashboards=tmp / "dashboards" if task in graphs else None,
                         tokenizer=tok)
        write_json(tmp / DEMO_MARKER, summary)
    dash_dir = out / "dashboards"
    made = ", ".join(f"{out}/{name}" for name in [*graphs, *replacement])
    _say(f"wrote {made} (graph.json, nodes.csv sorted by |effect|, edges.csv, graph.graphml, graph.svg, "
         f"index.html, ...) and {dash_dir}", start)
    if replacement:
        print(f"\nOpen the replacement graphs:  saecircuits serve {out}/graph-ioi   (or {out}/graph-parens)")
    print(f"Open the SAE circuits:  saecircuits serve {out}/ioi   (or {out}/parens)")
    return summary
