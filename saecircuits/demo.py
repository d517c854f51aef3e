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
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, ExportError, SAEFormatError
from .fileio import atomic_dir, write_json
from .models import cache_dir, load_model, model_name_of
from .replacement import ReplacementModel
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


@dataclass
class DemoConfig:
    """Settings of `saecircuits demo` (defaults: a full run on a 2-core CPU in < 20 min).

    hooks: residual hook points that straddle SmolLM2's IOI step at layer 23.
    tokens / expansion / k / corpus: the SAE recipe: training budget, width
        (d_sae = expansion·d_model), TopK k, training corpus (None: the embedded default;
        any `trainers.corpus.load_documents` source, e.g. "embedded-mix:0.7").
    n: prompts per task; top_k: feature nodes kept per circuit; method: attrib | ig | exact.
    compare_bases: run the SAE vs PCA vs raw basis comparison at the middle hook on
        `basis_prompts` IOI prompts (None: on, except with `quick`).
    steer_candidates: parens-circuit features, and as many gradient-ranked ones, tried (by measured
        P(")")) for the steering showcase.
    quick: a much smaller run (< 5 min) for a first look.
    """

    model: str | None = None
    device: str | None = None
    hooks: list[str] = field(default_factory=lambda: ["resid.4", "resid.10", "resid.16", "resid.23"])
    tokens: int = 200_000
    expansion: int = 8
    k: int = 128
    corpus: str | None = "embedded-mix:0.7"
    n: int = 32
    top_k: int = 60
    method: str = "attrib"
    out: str = "saecircuits-demo"
    retrain: bool = False
    quick: bool = False
    seed: int = 0
    dashboard_windows: int = 192
    compare_bases: bool | None = None
    basis_prompts: int = 16
    steer_candidates: int = 6

    def __post_init__(self) -> None:
        if isinstance(self.hooks, str):
            self.hooks = [h.strip() for h in self.hooks.split(",") if h.strip()]
        if not self.hooks:
            raise ConfigError("demo needs at least one hook point (--hooks)")
        if self.compare_bases is None:  # ~140 s measured on a loaded 2-core CPU: full runs only
            self.compare_bases = not self.quick
        if self.quick:
            self.tokens, self.n, self.top_k = min(self.tokens, 40_000), min(self.n, 16), min(self.top_k, 30)
            self.dashboard_windows = min(self.dashboard_windows, 64)
            self.method = "attrib"
        for name in ("tokens", "expansion", "k", "n", "top_k", "dashboard_windows", "basis_prompts",
                     "steer_candidates"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"demo {name} must be a positive integer, got {value!r}")

    def train_config(self):
        """The `trainers.TrainConfig` of the demo's SAEs."""
        from trainers import TrainConfig

        return TrainConfig(hooks=list(self.hooks), architecture="topk", k=self.k,
                           expansion=self.expansion, tokens=self.tokens, seed=self.seed,
                           corpus=self.corpus,
                           device=self.device, eval_tokens=2048 if self.quick else 4096)

    def trace_config(self):
        """The `TraceConfig` of the demo's circuits."""
        from .attribution import TraceConfig

        # edges in bf16 where the hardware has fast bf16: 2.1x less graph time on an AMX CPU,
        # edge weights r = 0.999998 against fp32 (benchmarks/RESULTS.md, issue 17)
        return TraceConfig(method=self.method, n=self.n, top_k=self.top_k, seed=self.seed,
                           edge_precision="auto")


def _say(message: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:6.1f}s] {message}", flush=True)


def _prepare_out(out: Path) -> None:
    """Refuse to replace a directory that is not an earlier demo's output."""
    if out.exists() and any(out.iterdir()) and not (out / DEMO_MARKER).is_file():
        raise ExportError(f"output directory {str(out)!r} exists and is not a saecircuits demo "
                          "output; choose another --out")


def demo_saes(model, tok, cfg: DemoConfig, start: float) -> SAESet:
    """Load the demo's SAEs from the cache, or train them (then cache them)."""
    from trainers import train_saes

    d_model = model.config.hidden_size if hasattr(model, "config") else None
    train_cfg = cfg.train_config()
    recipe = {"model": model_name_of(model), "d_model": d_model, **{
        k: v for k, v in asdict(train_cfg).items() if k not in ("out", "progress", "device", "resume")}}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:12]
    folder = cache_dir() / "saes" / f"demo-{key}"
    if folder.is_dir() and not cfg.retrain:
        try:
            saes = SAESet.load(folder, model=model, hooks=list(cfg.hooks))
            _say(f"reusing cached SAEs from {folder}", start)
            return saes
        except SAEFormatError:
            _say(f"cached SAEs at {folder} are incomplete; training again", start)
    _say(f"training TopK SAEs (k={cfg.k}, d_sae={cfg.expansion}x) at {', '.join(cfg.hooks)} "
         f"on {cfg.tokens:,} tokens of {cfg.corpus or 'the embedded corpus'}", start)
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    train_cfg.out = str(tmp)
    try:
        train_saes(model, tok, train_cfg)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _say(f"trained SAEs cached at {folder} (a rerun reuses them; --retrain trains again)", start)
    return SAESet.load(folder, model=model, hooks=list(cfg.hooks))


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


def error_share(graph) -> float:
    """Share of the circuit's total |effect| (feature, error and embedding nodes) held by SAE
    error nodes; 0 for a graph without effects."""
    err = total = 0.0
    for _, d in graph.nodes(data=True):
        effect = d.get("effect")
        if d["kind"] in ("metric", "logit") or effect is None or effect != effect:
            continue
        total += abs(float(effect))
        if d["kind"] == "error":
            err += abs(float(effect))
    return err / total if total > 0 else 0.0


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

    def p_close(*settings) -> float:  # settings: (hook, feature, mode, multiple, positions), ...
        if settings not in measured:
            measured[settings] = _p_close(rm, SELECT_PROMPTS, close, [intervention(*x) for x in settings])
        return measured[settings]

    base = _p_close(rm, SELECT_PROMPTS, close)
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
    saes = demo_saes(model, tok, cfg, start)
    for hook, sae in saes.items():
        metrics = sae.cfg.metadata.get("metrics") or {}
        shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))
        _say(f"  SAE {hook}: d_sae {sae.cfg.d_sae}, k {sae.cfg.k}" + (f" ({shown})" if shown else ""), start)
    rm = ReplacementModel(model, saes, tok)  # every step below uses this one bound model

    summary: dict[str, Any] = {"model": model_name_of(model), "config": asdict(cfg), "circuits": {}}
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
        warnings_ = [str(w) for w in (info.get("warnings") or [])]
        share = error_share(graph)
        info["error_share"] = share
        if share > ERROR_SHARE_WARN and not any("error node" in w for w in warnings_):
            warnings_.append(f"SAE error nodes hold {share:.0%} of the circuit's |effect|: the SAEs "
                             "miss most of what this circuit computes (more training tokens or a "
                             "wider SAE help)")
        for w in warnings_:
            print(f"    warning: {w}", flush=True)
        info["demo_warnings"] = warnings_

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
    acts = collect_activations(model, tok, saes, wanted, texts, max_windows=cfg.dashboard_windows)
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
        write_dashboards(model, tok, saes, all_nodes, None, tmp / "dashboards", activations=acts,
                         progress=False)
        for task, graph in graphs.items():
            export_graph(graph, tmp / task, dashboards=tmp / "dashboards", tokenizer=tok)
        write_json(tmp / DEMO_MARKER, summary)
    dash_dir = out / "dashboards"
    _say(f"wrote {out}/ioi, {out}/parens (graph.json, nodes.csv sorted by |effect|, edges.csv, "
         f"graph.graphml, graph.svg, index.html, ...) and {dash_dir}", start)
    print(f"\nOpen the circuits:  saecircuits serve {out}/ioi   (or {out}/parens)")
    return summary
