"""SAEBench "core" metrics of a dictionary set on held-out text, and a feature-density picture.

For a transcoder, x is its read site (the MLP input) and the reconstruction metrics are about its
write site's value y (the MLP output): explained_variance = 1 − FVU of the MLP output; CE/KL
scores splice its prediction (error term removed) in place of the MLP output. With `joint=True`
the result also has a "joint" entry: every dictionary spliced at once without error terms (for
transcoders at every layer: the replacement model) against every write site zero-ablated.

Per hook point, over every position but the first of each window (BOS / attention sink,
which the SAEs never see in training and which is left untouched when splicing):
  l0, explained_variance = 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖², mse (mean over tokens of ‖x − x̂‖²/d),
  cosine_similarity, l2_ratio (‖x̂‖/‖x‖), dead_fraction (never fired), dense_fraction (fires on
  > 10% of tokens), ce_clean / ce_sae / ce_zero and ce_loss_score = (ce_zero − ce_sae) /
  (ce_zero − ce_clean) with the SAE reconstruction spliced in (`saecircuits.splice`, error
  term removed) or the hook point zero-ablated; kl_sae / kl_zero and kl_score = 1 − kl_sae/kl_zero.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch

from saecircuits import hooks
from saecircuits.errors import ConfigError, ShapeError
from saecircuits.fileio import write_json, write_text
from saecircuits.progress import bar as progress_bar
from saecircuits.replacement import ReplacementModel
from saecircuits.dictionaries import Dictionary as SAE

from .corpus import TokenCorpus, load_corpus
from saecircuits.precision import Precision, matmuls_in, resolve
from .suffix import block_output_is_tuple, logits_from_block

DENSE = 0.1
JOINT = "joint"   # the key of the all-dictionaries-at-once metrics
BINS = [-math.inf] + [x / 2 for x in range(-12, 1)]  # log10 frequency bin edges: dead, 1e-6 .. 1


def _sites_in_order(rm: ReplacementModel) -> list:
    """Every read and write site of the set, once each, in forward order."""
    seen = {}
    for hp in list(rm.reads.values()) + rm.points:
        seen.setdefault((hp.module_path, hp.side), hp)
    return sorted(seen.values(), key=lambda hp: hp.order)


def _read_clean(rm: ReplacementModel, acts: dict):
    for hp in _sites_in_order(rm):
        acts[(hp.module_path, hp.side)] = rm.read(hp)
    return rm.read_logits()


def _zero(model, hp, keep_first: torch.Tensor):
    x = hooks.read(model, hp)
    hooks.write(model, hp, x * keep_first.to(x.dtype))


def _is_block_output(model, hp) -> bool:
    """Whether the hook point is a decoder block's output (`resid.L`): its spliced runs can
    then start from the clean forward's value there (`suffix.logits_from_block`)."""
    if hp.layer is None or hp.layer < 0 or hp.side != "output":
        return False
    return hp.module_path == f"{hooks._layout(hooks.unwrap(model)).layers}.{hp.layer}"


def _next_token_stats(logits: torch.Tensor, ids: torch.Tensor, clean_logp: torch.Tensor | None):
    """(sum CE, sum KL(clean‖this), count) over positions 1..T−2 predicting tokens 2..T−1."""
    logp = torch.log_softmax(logits[:, 1:-1].float(), dim=-1)
    target = ids[:, 2:].to(logp.device)
    ce = -logp.gather(-1, target.unsqueeze(-1)).sum()
    kl = torch.zeros(()) if clean_logp is None else \
        (clean_logp.exp() * (clean_logp - logp)).sum()
    return float(ce), float(kl), target.numel(), logp


def eval_windows(tok, data, n_tokens: int, context: int, prepend_bos: bool) -> torch.Tensor:
    """Windows `[n, context]` holding at least `n_tokens` evaluated positions (or all of data)."""
    corpus = data if isinstance(data, TokenCorpus) else load_corpus(tok, data)
    windows = corpus.windows(context, seed=None, prepend_bos=prepend_bos)
    need = max(1, math.ceil(n_tokens / (context - 1)))
    return windows[:need]


@torch.no_grad()
def evaluate_saes(model, tok, saes: Mapping[str, SAE], data, n_tokens: int = 8192, *,
                  context: int = 256, prepend_bos: bool = False, batch: int = 4,
                  progress: bool = True, share_clean: bool = True,
                  precision: str | Precision = "auto", joint: bool = False,
                  per_site_ce: bool = True) -> dict[str, dict]:
    """Core metrics per hook point (see module doc) on `n_tokens` held-out tokens.

    share_clean: at `resid.L` hook points, run the SAE-spliced and the zero-ablated forward
    as one batch that starts at block L+1 from the clean forward's residual (blocks 0..L are
    not recomputed); other hook points (and share_clean=False) get two full traces each.

    precision: "auto" | "fp32" | "bf16" or a resolved `Precision` (`saecircuits.precision`): the
    model's forwards (clean, spliced, zero-ablated alike) run under autocast in its dtype; SAE
    encode/decode, EV and the log-softmax stay fp32. `train` passes its harvesting precision, so
    SAEs are scored on the activations they were trained on. Recorded as each hook's
    `precision` entry.
    data: a `TokenCorpus`, a list of strings, or a corpus path (`trainers.corpus.load_documents`).
    per_site_ce: the CE/KL scores of each dictionary alone (two forwards per dictionary and
    batch); False leaves them out (NaN), e.g. for 30 transcoders whose joint score is the point.
    joint: also splice every dictionary at once without error terms (see the module doc):
    result["joint"] = {ce_clean, ce_joint, ce_zero, ce_loss_score, kl_joint, kl_zero, kl_score}.
    Returns {name: {metric: float, ..., "density_histogram": {"edges", "counts"}}}.
    """
    if not saes:
        raise ConfigError("evaluate_saes needs at least one SAE")
    if n_tokens <= 0:
        raise ConfigError(f"n_tokens must be positive, got {n_tokens}")
    try:
        rm = ReplacementModel(model, saes, tok)  # SAEs moved to their sites' devices
    except ShapeError as err:
        raise ConfigError(str(err)) from err
    points, saes = rm.points, rm.saes
    prec = precision if isinstance(precision, Precision) else resolve(precision, rm.device)
    autocast = prec.dtype
    windows = eval_windows(tok, data, n_tokens, context, prepend_bos)
    device = rm.device
    acc = {hp.name: {"sse": 0.0, "sx": 0.0, "sxx": 0.0, "n": 0, "l0": 0.0, "cos": 0.0, "l2": 0.0,
                     "ce_sae": 0.0, "ce_zero": 0.0, "kl_sae": 0.0, "kl_zero": 0.0,
                     "fires": torch.zeros(saes[hp.name].cfg.d_sae, dtype=torch.int64)} for hp in points}
    ce_clean = count = 0.0
    from_block = {hp.name: share_clean and not saes[hp.name].is_transcoder
                  and _is_block_output(model, hp) for hp in points}
    key = lambda hp: (hp.module_path, hp.side)
    joint_acc = {"ce": 0.0, "ce_zero": 0.0, "kl": 0.0, "kl_zero": 0.0}
    as_tuple = block_output_is_tuple(model) if any(from_block.values()) else False
    sums_x = {hp.name: torch.zeros(hp.width, dtype=torch.float64) for hp in points}
    # one step per model pass: each batch's clean forward, then per hook point the spliced and
    # zero-ablated forwards (one pass at a shared-clean resid hook, else two), then the joint two
    passes = 1 + sum(1 if from_block[hp.name] else 2 for hp in points) + (2 if joint else 0)
    bar = progress_bar(-(-len(windows) // batch) * passes, "evaluate SAEs", unit="pass",
                       enabled=progress, leave=True)
    for start in range(0, len(windows), batch):
        ids = windows[start:start + batch].to(device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        acts: dict[tuple[str, str], torch.Tensor] = {}
        with matmuls_in(autocast, device), model.trace(inputs):
            logits = _read_clean(rm, acts).save()
        ce, _, n, clean_logp = _next_token_stats(logits, ids, None)
        ce_clean += ce
        count += n
        bar.update(1)
        keep_first = torch.zeros(1, ids.shape[1], 1, device=device)
        keep_first[:, 0] = 1
        for hp in points:
            sae, a = saes[hp.name], acc[hp.name]
            read = rm.reads[hp.name]
            x_in = acts[key(read)][:, 1:].reshape(-1, read.width).float()
            x = acts[key(hp)][:, 1:].reshape(-1, hp.width).float()     # the write site's value
            f = sae.encode(x_in)
            x_hat = sae.decode(f, x_in, dtype=torch.float32)
            a["sse"] += float((x - x_hat).pow(2).sum())
            sums_x[hp.name] += x.sum(0).double().cpu()
            a["sxx"] += float(x.double().pow(2).sum())
            a["n"] += x.shape[0]
            active = f > 0
            a["l0"] += float(active.sum())
            a["fires"] += active.sum(0).cpu()
            a["cos"] += float(torch.nn.functional.cosine_similarity(x, x_hat, dim=-1).sum())
            a["l2"] += float((x_hat.norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12)).sum())

            if not per_site_ce:
                continue
            if from_block[hp.name]:  # [spliced; zero-ablated] from block L+1 on, in one batch
                clean = acts[key(hp)]
                spliced = torch.cat([clean[:, :1], x_hat.view(len(ids), -1, hp.width).to(clean.dtype)], 1)
                with matmuls_in(autocast, device):
                    both = logits_from_block(model, ids.repeat(2, 1), hp.layer,
                                             torch.cat([spliced, clean * keep_first.to(clean.dtype)]),
                                             as_tuple=as_tuple)
                logits_sae, logits_zero = both.split(len(ids))
            else:
                def drop_error(site, feats, err):
                    return feats, err * keep_first.to(err.dtype)

                with matmuls_in(autocast, device), model.trace(inputs):
                    rm.splice(drop_error, only=[hp.name])
                    logits_sae = rm.read_logits().save()
            ce, kl, _, _ = _next_token_stats(logits_sae, ids, clean_logp)
            a["ce_sae"] += ce
            a["kl_sae"] += kl
            if not from_block[hp.name]:
                with matmuls_in(autocast, device), model.trace(inputs):
                    _zero(model, hp, keep_first)
                    logits_zero = rm.read_logits().save()
            ce, kl, _, _ = _next_token_stats(logits_zero, ids, clean_logp)
            a["ce_zero"] += ce
            a["kl_zero"] += kl
            bar.update(1 if from_block[hp.name] else 2)
        if joint:
            def drop_all_errors(site, feats, err):
                return feats, err * keep_first.to(err.dtype)

            with matmuls_in(autocast, device), model.trace(inputs):
                rm.splice(drop_all_errors)
                logits_joint = rm.read_logits().save()
            with matmuls_in(autocast, device), model.trace(inputs):
                for hp in points:
                    _zero(model, hp, keep_first)
                logits_zero_all = rm.read_logits().save()
            for name, lg in (("", logits_joint), ("_zero", logits_zero_all)):
                ce, kl, _, _ = _next_token_stats(lg, ids, clean_logp)
                joint_acc["ce" + name] += ce
                joint_acc["kl" + name] += kl
            bar.update(2)
    bar.close()
    results = {}
    for hp in points:
        a, n = acc[hp.name], acc[hp.name]["n"]
        mean = sums_x[hp.name] / n
        total_var = a["sxx"] - n * float(mean.pow(2).sum())
        freq = a["fires"].double() / n
        ce_c, ce_s, ce_z = ce_clean / count, a["ce_sae"] / count, a["ce_zero"] / count
        kl_s, kl_z = a["kl_sae"] / count, a["kl_zero"] / count
        logf = torch.where(freq > 0, freq.clamp_min(1e-30).log10(), torch.full_like(freq, -math.inf))
        counts = [int(((logf >= lo) & (logf < hi)).sum()) for lo, hi in zip(BINS[:-1], BINS[1:])]
        counts[-1] += int((logf >= BINS[-1]).sum())
        results[hp.name] = {
            "tokens": n, "l0": a["l0"] / n, "explained_variance": 1 - a["sse"] / max(total_var, 1e-12),
            "mse": a["sse"] / (n * hp.width), "cosine_similarity": a["cos"] / n, "l2_ratio": a["l2"] / n,
            "dead_fraction": float((freq == 0).double().mean()),
            "dense_fraction": float((freq > DENSE).double().mean()),
            "ce_clean": ce_c, "ce_sae": ce_s, "ce_zero": ce_z,
            "ce_loss_score": (ce_z - ce_s) / (ce_z - ce_c) if ce_z != ce_c else float("nan"),
            "kl_sae": kl_s, "kl_zero": kl_z,
            "kl_score": 1 - kl_s / kl_z if kl_z > 0 else float("nan"),
            "density_histogram": {"edges_log10": [None] + BINS[1:], "counts": counts},
            "precision": prec.record(),
        }
        if not per_site_ce:
            results[hp.name].update({k: float("nan") for k in ("ce_sae", "ce_zero", "ce_loss_score",
                                                               "kl_sae", "kl_zero", "kl_score")})
    if joint:
        ce_j, ce_z = joint_acc["ce"] / count, joint_acc["ce_zero"] / count
        kl_j, kl_z = joint_acc["kl"] / count, joint_acc["kl_zero"] / count
        results[JOINT] = {
            "dictionaries": [hp.name for hp in points], "ce_clean": ce_clean / count,
            "ce_joint": ce_j, "ce_zero": ce_z,
            "ce_loss_score": (ce_z - ce_j) / (ce_z - ce_clean / count) if ce_z != ce_clean / count
            else float("nan"),
            "kl_joint": kl_j, "kl_zero": kl_z, "kl_score": 1 - kl_j / kl_z if kl_z > 0 else float("nan"),
            "precision": prec.record()}
    return results


def density_svg(hook: str, metrics: dict) -> str:
    """A bar chart of log10 feature firing frequency (first bar: dead latents)."""
    hist = metrics["density_histogram"]
    counts, edges = hist["counts"], hist["edges_log10"]
    width, height, left, bottom = 640, 300, 50, 40
    bar_w = (width - left - 10) / len(counts)
    top = max(counts) or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">Feature density at '
             f'{hook} (L0 {metrics["l0"]:.1f}, EV {metrics["explained_variance"]:.3f}, '
             f'dead {metrics["dead_fraction"]:.1%})</text>']
    plot_h = height - bottom - 30
    for i, c in enumerate(counts):
        h = plot_h * c / top
        x = left + i * bar_w
        colour = "#c0392b" if i == 0 else "#2c7fb8"
        parts.append(f'<rect x="{x:.1f}" y="{height - bottom - h:.1f}" width="{bar_w - 2:.1f}" '
                     f'height="{h:.1f}" fill="{colour}"><title>{c}</title></rect>')
        label = "dead" if i == 0 else f"{edges[i]:g}"
        parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{height - bottom + 14}" '
                     f'text-anchor="middle">{label}</text>')
        if c:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{height - bottom - h - 3:.1f}" '
                         f'text-anchor="middle">{c}</text>')
    parts.append(f'<text x="{width / 2}" y="{height - 6}" text-anchor="middle">log10 firing '
                 'frequency (bin start); first bar: never fired</text>')
    parts.append(f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" '
                 'stroke="black"/></svg>')
    return "\n".join(parts) + "\n"


def _clean(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def write_reports(folder: str | Path, metrics: dict[str, dict]) -> None:
    """`<hook>/metrics.json` + `<hook>/density.svg` per SAE and a combined `metrics.json`."""
    folder = Path(folder)
    for hook, m in metrics.items():
        if hook == JOINT:
            continue
        write_json(folder / hook / "metrics.json", _clean(m))
        write_text(folder / hook / "density.svg", density_svg(hook, m))
    write_json(folder / "metrics.json", _clean(metrics))
