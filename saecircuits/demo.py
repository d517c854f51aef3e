"""The end-to-end demo: train (or reuse) SAEs, trace two circuits, steer, export.

    load model ─► SAEs (cached by config) ─► IOI + parens circuits ─► top features + contexts
               ─► clamp the top parens feature during generation ─► exports + viewer

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
NOT_DUE_PROMPTS = [  # held-out prompts where ")" is not the natural next token
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
    tokens / expansion / k: SAE training budget, width (d_sae = expansion·d_model), TopK k.
    n: prompts per task; top_k: feature nodes kept per circuit; method: attrib | ig | exact.
    quick: a much smaller run (< 5 min) for a first look.
    """

    model: str | None = None
    device: str | None = None
    hooks: list[str] = field(default_factory=lambda: ["resid.4", "resid.10", "resid.16", "resid.23"])
    tokens: int = 200_000
    expansion: int = 4
    k: int = 32
    n: int = 32
    top_k: int = 60
    method: str = "attrib"
    out: str = "saecircuits-demo"
    retrain: bool = False
    quick: bool = False
    seed: int = 0
    dashboard_windows: int = 192

    def __post_init__(self) -> None:
        if isinstance(self.hooks, str):
            self.hooks = [h.strip() for h in self.hooks.split(",") if h.strip()]
        if not self.hooks:
            raise ConfigError("demo needs at least one hook point (--hooks)")
        if self.quick:
            self.tokens, self.n, self.top_k = min(self.tokens, 40_000), min(self.n, 16), min(self.top_k, 30)
            self.dashboard_windows = min(self.dashboard_windows, 64)
            self.method = "attrib"
        for name in ("tokens", "expansion", "k", "n", "top_k", "dashboard_windows"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"demo {name} must be a positive integer, got {value!r}")

    def train_config(self):
        """The `trainers.TrainConfig` of the demo's SAEs."""
        from trainers import TrainConfig

        return TrainConfig(hooks=list(self.hooks), architecture="topk", k=self.k,
                           expansion=self.expansion, tokens=self.tokens, seed=self.seed,
                           device=self.device, eval_tokens=2048 if self.quick else 4096)

    def trace_config(self):
        """The `TraceConfig` of the demo's circuits."""
        from .attribution import TraceConfig

        return TraceConfig(method=self.method, n=self.n, top_k=self.top_k, seed=self.seed)


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
         f"on {cfg.tokens:,} tokens of the embedded corpus", start)
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    train_cfg.out = str(tmp)
    try:
        train_saes(model, tok, train_cfg)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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


def steering_feature(rm: ReplacementModel, graph, token_ids) -> tuple[str, int, float]:
    """The circuit feature to clamp: among features with a positive effect on the metric, the
    one whose decoder row most promotes `token_ids` (mean logit-lens value); (hook, feature, value)."""
    ids = torch.as_tensor(list(token_ids), dtype=torch.long)
    positive: dict[str, list[int]] = {}
    for hook, feat, effect, _ in top_features(graph, 10**6):
        if effect > 0:
            positive.setdefault(hook, []).append(feat)
    best: tuple[str, int, float] | None = None
    for hook, feats in positive.items():  # one logit-lens product per hook
        promotes = rm.lens(hook, feats)[:, ids].mean(1)
        i = int(promotes.argmax())
        if best is None or float(promotes[i]) > best[2]:
            best = (hook, feats[i], float(promotes[i]))
    if best is None:
        raise ConfigError("the parens circuit has no feature with a positive effect to steer with")
    return best


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the demo end to end; returns the summary also written to `<out>/demo.json`."""
    from .attribution import trace_circuit
    from .export import export_graph
    from .export.dashboards import collect_activations, contexts_of, write_dashboards
    from .steering import Intervention, steer
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
    for task in ("ioi", "parens"):
        _say(f"tracing the {task} circuit ({cfg.n} prompts, method {cfg.method}, top {cfg.top_k} nodes)", start)
        graph, info = trace_circuit(rm, tok, None, task, cfg.trace_config())
        graphs[task] = graph
        summary["circuits"][task] = info
        _say(f"  {task}: clean metric {info['metric_clean']:.2f}, accuracy {info['accuracy_clean']:.2f}, "
             f"faithfulness {info['faithfulness']:.2f}, completeness {info['completeness']:.2f}, "
             f"{info['feature_nodes']} feature + {info['error_nodes']} error nodes, {info['edges']} edges "
             f"({info['eval_ablation']} evaluation)", start)
        for warning in info.get("warnings", []):
            _say(f"  warning: {warning}", start)

    features = {task: top_features(g, 5) for task, g in graphs.items()}
    all_nodes = sorted({(h, f) for g in graphs.values() for _, d in g.nodes(data=True)
                        if d["kind"] == "feature" for h, f in [(d["hook"], int(d["feature"]))]})
    _say(f"collecting activations of {len(all_nodes)} circuit features over "
         f"{cfg.dashboard_windows} corpus windows", start)
    texts = [d.text for d in load_documents(None)]
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    texts = [texts[i] for i in order[:400]]
    acts = collect_activations(model, tok, saes, all_nodes, texts, max_windows=cfg.dashboard_windows)
    for task, rows in features.items():
        print(f"\nTop features of the {task} circuit (effect on the metric; top context, »max token«):")
        for hook, feat, effect, label in rows:
            ctx = contexts_of(acts, tok, (hook, feat), n=1)
            where = ""
            if ctx and ctx[0].max > 0:
                c = ctx[0]
                text = c.marked("»", "«")
                where = f"  max {c.max:.1f} in {text[-70:]!r}"
            print(f"  {hook}:{feat:<5d} effect {effect:+.3f}  promotes {label!r}{where}")
        summary["circuits"][task]["top_features"] = [
            {"hook": h, "feature": f, "effect": e, "label": lab} for h, f, e, lab in rows]
    print()

    hook, feat, promotes = steering_feature(rm, graphs["parens"], closing_ids(tok))
    peak = float(acts.acts[..., acts.column((hook, feat))].max())
    value = max(3.0 * peak, 1.0)
    _say(f"steering: clamping parens feature {hook}:{feat} (circuit effect > 0, decoder promotes ')' "
         f"by {promotes:+.2f} logits per unit) to {value:.1f} (3x its corpus max) on prompts where "
         "')' is not due", start)
    result = steer(rm, None, NOT_DUE_PROMPTS, [Intervention(hook, feat, "set", value, positions="all")],
                   max_new_tokens=12, track=closing_ids(tok))
    shift = result.steered_probs[:, 0].sum(-1) - result.baseline_probs[:, 0].sum(-1)
    print(result.format())
    every = float(result.prob_shift.sum(-1).mean())
    _say(f"  P(next token starts with ')'): first step {result.baseline_probs[:, 0].sum(-1).mean():.4f}"
         f" -> {result.steered_probs[:, 0].sum(-1).mean():.4f} (mean shift {shift.mean():+.4f}); "
         f"mean over all {result.prob_shift.shape[1]} steps shifts {every:+.4f}", start)
    summary["steering"] = {**result.to_dict(), "feature": f"{hook}:{feat}", "value": value,
                           "decoder_promotes_close": promotes,
                           "mean_prob_shift": float(shift.mean()), "mean_prob_shift_all_steps": float(every)}

    _prepare_out(out)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    with atomic_dir(out, overwrite=True) as tmp:  # an earlier demo output is replaced whole
        write_dashboards(model, tok, saes, all_nodes, None, tmp / "dashboards", activations=acts,
                         progress=False)
        for task, graph in graphs.items():
            export_graph(graph, tmp / task, dashboards=tmp / "dashboards", tokenizer=tok)
        write_json(tmp / DEMO_MARKER, summary)
    dash_dir = out / "dashboards"
    _say(f"wrote {out}/ioi, {out}/parens (graph.json, nodes.csv, edges.csv, graph.graphml, graph.svg, "
         f"index.html, ...) and {dash_dir}", start)
    print(f"\nOpen the circuits:  saecircuits serve {out}/ioi   (or {out}/parens)")
    return summary
