"""Feature dashboards: top-activating contexts, activation histogram and frequency, and the
output tokens a feature promotes / suppresses, as one self-contained HTML page per feature
set plus Neuronpedia / circuit-tracer feature JSON.

Activations over the corpus are computed once (`collect_activations`: one nnsight trace
per batch that reads the SAEs' hook points in forward order and stops after the deepest)
and stored as safetensors (`FeatureActivations.save/load`); everything else is computed
from the stored tensors. Position 0 of every window is left out (an attention sink with
outlier norms, as in training), as are padding positions.

    contexts = top_contexts(model, tok, saes, [("resid.12", 1234)], texts)
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import hooks
from ..errors import ConfigError, ExportError
from ..fileio import atomic_dir, file_in, read_safetensors, write_json, write_safetensors, write_text
from ..models import model_name_of
from ..precision import resolve as resolve_precision
from ..progress import bar as progress_bar
from ..replacement import ReplacementModel, logit_lens
from ..dictionaries import Dictionary as SAE
from .explanations import ExplanationsLike, as_explanations, dashboards_with_explanations
from .viewer import asset, fill_page

Feature = tuple[str, int]
ACTIVATIONS_FILE = "activations.safetensors"
DASHBOARDS_FILE = "dashboards.json"


def feature_key(hook: str, index: int) -> str:
    """`"hook:index"`, the key of a dashboard (and the CLI spelling of a feature)."""
    return f"{hook}:{int(index)}"


def parse_features(spec: str | Sequence[str]) -> list[Feature]:
    """`"resid.12:1234,mlp.3:7"` (or a list of such items) -> [("resid.12", 1234), ...]."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[Feature] = []
    for item in (i.strip() for i in items):
        hook, sep, index = item.rpartition(":")
        if not sep or not hook or not index.isdigit():
            raise ConfigError(f"bad feature {item!r}: expected HOOK:INDEX such as resid.12:1234")
        out.append((hook, int(index)))
    if not out:
        raise ConfigError("no features given")
    return out


def _check_features(saes: Mapping[str, SAE], features: Sequence[Feature]) -> list[Feature]:
    features = [(str(h), int(i)) for h, i in features]
    if not features:
        raise ConfigError("no features given")
    for hook, index in features:
        if hook not in saes:
            raise ConfigError(f"feature {feature_key(hook, index)!r}: no SAE at hook {hook!r} "
                              f"(SAEs: {sorted(saes)})")
        d_sae = saes[hook].cfg.d_sae
        if not 0 <= index < d_sae:
            raise ConfigError(f"feature {feature_key(hook, index)!r} is out of range: the SAE at "
                              f"{hook!r} has {d_sae} features")
    if len(set(features)) != len(features):
        raise ConfigError("the feature list has duplicates")
    return features


def windows_of(tok, texts: Sequence[str], context: int = 64, max_windows: int | None = None,
               min_tokens: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut texts into token windows: ids `[n, context]` (right-padded) and mask `[n, context]`."""
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
        raise ConfigError("texts must be a non-empty list of strings")
    if context < 2:
        raise ConfigError(f"context must be at least 2 tokens, got {context}")
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    rows: list[list[int]] = []
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), context):
            chunk = ids[start:start + context]
            if len(chunk) >= min_tokens:
                rows.append(chunk)
            if max_windows is not None and len(rows) >= max_windows:
                break
        if max_windows is not None and len(rows) >= max_windows:
            break
    if not rows:
        raise ConfigError(f"the texts give no window of at least {min_tokens} tokens")
    ids = torch.full((len(rows), context), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), context), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = True
    return ids, mask


@dataclass
class FeatureActivations:
    """Stored activations of selected features over a corpus.

    tokens: `[n, ctx]` token ids; mask: `[n, ctx]` bool (False at padding and position 0);
    acts: `[n, ctx, F]` float32 activations of `features[j]` in column j.
    """

    features: list[Feature]
    tokens: torch.Tensor
    mask: torch.Tensor
    acts: torch.Tensor
    model: str = ""

    def column(self, feature: Feature) -> int:
        try:
            return self.features.index((feature[0], int(feature[1])))
        except ValueError:
            raise ConfigError(f"feature {feature_key(*feature)!r} was not collected "
                              f"(have {[feature_key(*f) for f in self.features]})") from None

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        write_safetensors(path, {"tokens": self.tokens, "mask": self.mask.to(torch.uint8),
                                 "acts": self.acts.float()},
                          metadata={"features": json.dumps(self.features), "model": self.model})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureActivations":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ExportError(f"no stored activations at {str(path)!r}")
        try:
            with safe_open(str(path), "pt") as fh:
                meta = fh.metadata() or {}
            data = read_safetensors(path)
            features = [(str(h), int(i)) for h, i in json.loads(meta["features"])]
            tokens, mask, acts = data["tokens"], data["mask"].bool(), data["acts"]
        except Exception as err:  # safetensors raises several types on corrupt files
            raise ExportError(f"corrupt activations file {str(path)!r}: {err}") from err
        if acts.shape != (*tokens.shape, len(features)) or mask.shape != tokens.shape:
            raise ExportError(f"activations file {str(path)!r} has inconsistent shapes "
                              f"{tuple(tokens.shape)}, {tuple(acts.shape)}")
        return cls(features, tokens, mask, acts, meta.get("model", ""))


def collect_activations(model, tok, saes: Mapping[str, SAE], features: Sequence[Feature],
                        texts: Sequence[str], context: int = 64, max_windows: int | None = None,
                        batch_size: int = 8, progress: bool = True,
                        precision: str = "auto") -> FeatureActivations:
    """Run the corpus once through the model and keep the chosen features' activations.

    model: an nnsight model, or the `ReplacementModel` already bound to the dictionaries (then
    `saes` may be None and nothing is resolved again). Transcoders are encoded at their read site.
    precision: the forwards' matmul precision (`saecircuits.precision`; auto = bf16 where
    measured faster): it only ranks contexts, the activations are returned in fp32."""
    if isinstance(model, ReplacementModel):
        rm, saes = model, (saes if saes is not None else model.saes)
        model = rm.model
    else:
        rm = None
    features = _check_features(saes, features)
    ids, mask = windows_of(tok, texts, context, max_windows)
    needed = sorted({h for h, _ in features})
    if rm is None:
        rm = ReplacementModel(model, {h: saes[h] for h in needed}, tok)
    points = [rm.sites[h] for h in sorted(needed, key=lambda h: rm.sites[h].order)]
    reads = {hp.name: rm.reads[hp.name] for hp in points}
    columns = {hp.name: [j for j, (h, _) in enumerate(features) if h == hp.name] for hp in points}
    index = {name: torch.tensor([features[j][1] for j in cols]) for name, cols in columns.items()}
    device = rm.device
    prec = resolve_precision(precision, device)
    acts = torch.zeros((*ids.shape, len(features)), dtype=torch.float32)
    bar = progress_bar(len(ids), "feature activations", unit="window", enabled=progress,
                       leave=True)
    try:
        for start in range(0, len(ids), batch_size):
            batch = {"input_ids": ids[start:start + batch_size].to(device),
                     "attention_mask": mask[start:start + batch_size].long().to(device)}
            got: dict[str, torch.Tensor] = {}
            with torch.no_grad(), prec.autocast(), model.trace(batch) as tracer:
                _encode_points(model, rm.saes, points, index, got, tracer, reads)
            for name, cols in columns.items():
                acts[start:start + batch_size, :, cols] = got[name].float().cpu()
            bar.update(len(batch["input_ids"]))
    finally:
        bar.close()
    keep = mask.clone()
    keep[:, 0] = False
    acts[~keep] = 0.0
    return FeatureActivations(features, ids, keep, acts, model_name_of(model))


def _encode_points(model, saes, points, index, out: dict, tracer, reads=None) -> None:
    """Inside a trace: encode each dictionary at its read site (forward order), keep chosen
    columns, stop."""
    for hp in points:
        sae = saes[hp.name]
        x = hooks.read(model, (reads or {}).get(hp.name, hp))
        out[hp.name] = sae.encode(x.to(sae.dtype))[..., index[hp.name].to(x.device)].detach()
    tracer.stop()


@dataclass
class Context:
    """One top-activating context: tokens around the max, their activations, where it is."""

    tokens: list[str]
    acts: list[float]
    argmax: int
    max: float
    window: int
    pos: int

    def marked(self, left: str = "[[", right: str = "]]", before: int | None = None,
               after: int | None = None) -> str:
        """The context as text with the max-activating token wrapped in `left`/`right`;
        `before`/`after` limit how many tokens are kept on each side."""
        lo = 0 if before is None else max(0, self.argmax - before)
        hi = len(self.tokens) if after is None else self.argmax + after + 1
        return ("".join(self.tokens[lo:self.argmax]) + left + self.tokens[self.argmax] + right
                + "".join(self.tokens[self.argmax + 1:hi]))


def _decode_tokens(tok, ids: Sequence[int]) -> list[str]:
    return tok.batch_decode([[int(i)] for i in ids])


def contexts_of(fa: FeatureActivations, tok, feature: Feature, n: int = 10, left: int = 24,
                right: int = 8, windows: torch.Tensor | None = None) -> list[Context]:
    """The `n` windows with the highest max activation of `feature` (or `windows`' ones)."""
    col = fa.acts[..., fa.column(feature)]
    per_window = col.max(dim=1)
    if windows is None:
        order = torch.argsort(per_window.values, descending=True, stable=True)
        windows = order[per_window.values[order] > 0][:n]
    out = []
    for w in windows.tolist():
        p = int(per_window.indices[w])
        lo = max(0, p - left)
        valid = int(fa.mask[w].nonzero().max()) + 1 if fa.mask[w].any() else p + 1
        hi = min(valid, p + right + 1)
        out.append(Context(_decode_tokens(tok, fa.tokens[w, lo:hi].tolist()),
                           [float(f"{float(v):.6g}") for v in col[w, lo:hi]], p - lo,
                           float(col[w, p]), int(w), p))
    return out


def top_contexts(model, tok, saes: Mapping[str, SAE], features: Sequence[Feature],
                 texts: Sequence[str], n: int = 10, context: int = 64,
                 max_windows: int | None = None, batch_size: int = 8,
                 progress: bool = False, precision: str = "auto") -> dict[Feature, list[Context]]:
    """Top-`n` activating contexts of each feature over `texts` (one pass over the corpus)."""
    fa = collect_activations(model, tok, saes, features, texts, context, max_windows,
                             batch_size, progress, precision)
    return {f: contexts_of(fa, tok, f, n) for f in fa.features}


def output_effects(model, sae: SAE, indices: Sequence[int]) -> torch.Tensor:
    """Direct effect of each feature's decoder row on the logits: `[len(indices), vocab]`
    (the model's one logit lens, `saecircuits.replacement.logit_lens`: final norm applied)."""
    rows = sae.W_dec.detach()[torch.as_tensor(list(indices), dtype=torch.long)]
    return logit_lens(model, rows)


def _histogram(values: torch.Tensor, bins: int) -> dict[str, list[float]]:
    nonzero = values[values > 0]
    if nonzero.numel() == 0:
        return {"edges": [], "counts": []}
    hi = float(nonzero.max())
    counts = torch.histc(nonzero, bins=bins, min=0.0, max=hi)
    edges = torch.linspace(0.0, hi, bins + 1)
    return {"edges": [round(float(e), 6) for e in edges], "counts": [int(c) for c in counts]}


def dashboard_data(fa: FeatureActivations, tok, feature: Feature, logit_row: torch.Tensor | None,
                   n_contexts: int = 10, n_logits: int = 10, bins: int = 32,
                   label: str = "") -> dict[str, Any]:
    """Everything one dashboard shows (the viewer's format; see `neuronpedia_feature`)."""
    col = fa.acts[..., fa.column(feature)]
    values = col[fa.mask]
    active = values > 0
    contexts = contexts_of(fa, tok, feature, n_contexts)
    data: dict[str, Any] = {
        "hook": feature[0], "index": int(feature[1]), "label": label,
        "n_tokens": int(values.numel()),
        "activation_frequency": float(active.float().mean()) if values.numel() else 0.0,
        "act_max": float(values.max()) if values.numel() else 0.0,
        "act_min": float(values.min()) if values.numel() else 0.0,
        "histogram": _histogram(values, bins),
        "contexts": [c.__dict__ for c in contexts],
        "quantiles": _quantile_examples(fa, tok, feature, col),
    }
    if logit_row is not None:
        top = torch.topk(logit_row, n_logits)
        bottom = torch.topk(-logit_row, n_logits)
        data["top_logits_values"] = [[t, round(float(v), 4)] for t, v in
                                     zip(_decode_tokens(tok, top.indices.tolist()), top.values)]
        data["bottom_logits_values"] = [[t, round(-float(v), 4)] for t, v in
                                        zip(_decode_tokens(tok, bottom.indices.tolist()),
                                            bottom.values)]
    if not data["label"]:
        data["label"] = short_description(data)
    return data


def short_description(data: dict[str, Any], n: int = 3) -> str:
    """A few words for graph labels: the tokens at the top contexts' maxima (most common
    first), else the top promoted output tokens."""
    counts: dict[str, int] = {}
    for c in data.get("contexts", []):
        t = c["tokens"][c["argmax"]]
        counts[t] = counts.get(t, 0) + 1
    tokens = sorted(counts, key=lambda t: -counts[t])[:n]
    if not tokens:
        tokens = [t for t, _ in data.get("top_logits_values", [])[:n]]
        return ("→ " + " ".join(repr(t) for t in tokens)) if tokens else ""
    return " ".join(repr(t) for t in tokens)


def _quantile_examples(fa, tok, feature, col, n_quantiles: int = 4, per: int = 3) -> list[dict]:
    """A few windows from each quantile band of the per-window max activation (active only)."""
    maxes = col.max(dim=1).values
    active = torch.nonzero(maxes > 0).flatten()
    if active.numel() == 0:
        return []
    order = active[torch.argsort(maxes[active], descending=True, stable=True)]
    bands = torch.tensor_split(order, n_quantiles)
    out = []
    for q, band in enumerate(bands):
        if band.numel() == 0:
            continue
        pick = band[torch.linspace(0, band.numel() - 1, min(per, band.numel())).long()]
        out.append({"name": f"Quantile {q + 1}/{n_quantiles}", "lower": float(maxes[band].min()),
                    "contexts": [c.__dict__ for c in contexts_of(fa, tok, feature, windows=pick)]})
    return out


def neuronpedia_feature(data: dict[str, Any], source: str = "") -> dict[str, Any]:
    """circuit-tracer / Neuronpedia feature JSON from `dashboard_data` output."""
    def example(c: dict) -> dict:
        return {"tokens": c["tokens"], "tokens_acts_list": c["acts"],
                "train_token_ind": c["argmax"], "is_repeated_datapoint": False}

    quantiles = [{"quantile_name": "Top activations",
                  "examples": [example(c) for c in data["contexts"]]}]
    quantiles += [{"quantile_name": q["name"], "examples": [example(c) for c in q["contexts"]]}
                  for q in data["quantiles"]]
    return {"transcoder_id": source or data["hook"], "index": data["index"],
            "examples_quantiles": quantiles,
            "top_logits": [t for t, _ in data.get("top_logits_values", [])],
            "bottom_logits": [t for t, _ in data.get("bottom_logits_values", [])],
            "act_min": data["act_min"], "act_max": data["act_max"],
            "quantile_values": [q["lower"] for q in data["quantiles"]],
            "histogram": data["histogram"]["counts"],
            "activation_frequency": data["activation_frequency"]}


def build_dashboards(model, tok, saes: Mapping[str, SAE], fa: FeatureActivations,
                     n_contexts: int = 10, n_logits: int = 10,
                     progress: bool = True) -> dict[str, dict[str, Any]]:
    """Dashboards for every feature in `fa`, keyed `"hook:index"`."""
    out: dict[str, dict[str, Any]] = {}
    with progress_bar(len(fa.features), "dashboards", unit="feature", enabled=progress) as bar:
        for hook in dict.fromkeys(h for h, _ in fa.features):
            idx = [i for h, i in fa.features if h == hook]
            rows = output_effects(model, saes[hook], idx)
            for i, row in zip(idx, rows):
                out[feature_key(hook, i)] = dashboard_data(fa, tok, (hook, i), row, n_contexts,
                                                           n_logits)
                bar.update(1)
    return out


def render_dashboards_html(dashboards: Mapping[str, Any], about: str = "") -> str:
    """One self-contained HTML page showing every dashboard."""
    return fill_page(asset("dashboards.html"), asset("dashboard.js"),
                     {"dashboards": dict(dashboards), "about": about})


def write_dashboards(model, tok, saes: Mapping[str, SAE], features: Sequence[Feature],
                     texts: Sequence[str] | None, out_dir: str | os.PathLike, *,
                     overwrite: bool = False, context: int = 64, max_windows: int | None = None,
                     batch_size: int = 8, n_contexts: int = 10,
                     activations: FeatureActivations | None = None,
                     progress: bool = True,
                     explanations: ExplanationsLike = None,
                     precision: str = "auto") -> dict[str, Any]:
    """Write a dashboards directory atomically: `dashboards.html`, `dashboards.json`,
    `features/<hook>_<index>.json` (Neuronpedia) and `activations.safetensors`.

    Pass `activations` (e.g. `FeatureActivations.load(old_dir / ACTIVATIONS_FILE)`) to
    reuse stored activations instead of running the model again. `explanations` (an
    explain run's explanations.json / --out directory, or `"hook:index" -> text`) adds
    `explanation` and `explanation_score` to the dashboards of the features it explains.
    """
    expl = as_explanations(explanations)  # a bad file fails before the model runs
    for name, value, low in (("context", context, 2), ("max_windows", max_windows, 1),
                             ("batch_size", batch_size, 1), ("n_contexts", n_contexts, 1)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            raise ConfigError(f"dashboards {name} must be an integer >= {low}, got {value!r}")
    if activations is None:
        if texts is None:
            raise ConfigError("give texts (a corpus) or stored activations")
        activations = collect_activations(model, tok, saes, features, texts, context,
                                          max_windows, batch_size, progress, precision)
    else:
        missing = [feature_key(*f) for f in _check_features(saes, features)
                   if f not in activations.features]
        if missing:
            raise ConfigError(f"stored activations lack feature(s) {missing}")
    dashboards = build_dashboards(model, tok, saes, activations, n_contexts, progress=progress)
    dashboards = {feature_key(*f): dashboards[feature_key(*f)] for f in features}
    dashboards = dashboards_with_explanations(dashboards, expl)
    n_tokens = int(activations.mask.sum())
    about = (f"{len(dashboards)} features of {model_name_of(model)} over {n_tokens} tokens "
             f"({activations.tokens.shape[0]} windows of {activations.tokens.shape[1]})")
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        activations.save(tmp / ACTIVATIONS_FILE)
        write_json(tmp / DASHBOARDS_FILE, {"about": about, "dashboards": dashboards})
        for key, data in dashboards.items():
            name = key.replace(":", "_").replace("/", "_")
            write_json(tmp / "features" / f"{name}.json", neuronpedia_feature(data))
        write_text(tmp / "dashboards.html", render_dashboards_html(dashboards, about))
    return {"out": str(out_dir), "features": list(dashboards), "n_tokens": n_tokens,
            "about": about, "explained": [k for k, d in dashboards.items() if "explanation" in d]}


def load_dashboards(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Dashboards (`"hook:index" -> data`) from a dashboards directory or its JSON file."""
    path = file_in(path, DASHBOARDS_FILE, "no dashboards at {path} (write them with "
                   "`saecircuits dashboards`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        dashboards = data["dashboards"]
        if not isinstance(dashboards, dict):
            raise TypeError("'dashboards' is not an object")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise ExportError(f"corrupt dashboards file {str(path)!r}: {err}") from err
    return dashboards
