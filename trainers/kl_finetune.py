"""End-to-end / KL fine-tuning of trained SAEs (Braun et al. 2024 "e2e SAEs"; Karvonen et al.
2025 KL fine-tuning): make the SAEs keep what the model *uses*, not only what has variance.

    from trainers.kl_finetune import KLFinetuneConfig, kl_finetune
    info = kl_finetune(model, tok, saes, KLFinetuneConfig(tokens=20_000))

Per step, on a batch of corpus windows `[b, ctx]`:
    p = softmax(model logits)                     (no SAE; no grad)
    q = softmax(logits with every SAE spliced and *no* error term)
    loss = KL(p ‖ q) (mean over tokens, first position excluded)
           + recon_coef · Σ_hooks FVU(x, x̂)      (‖x − x̂‖² / ‖x − x̄‖², per hook)
Only the SAEs' encoder/decoder weights and biases train (Adam); the model is frozen. Every SAE
is spliced at once, so the SAEs learn to work *together* (a stack of residual SAEs multiplies
its losses otherwise). The first position of every window keeps its true value, as in
harvesting and evaluation.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from saecircuits.dictionaries import Dictionary as SAE
from saecircuits.errors import ConfigError, HookPointError, ShapeError
from saecircuits.models import model_device, unwrap
from saecircuits.precision import check as precision_check, resolve as resolve_precision
from saecircuits.progress import track
from saecircuits.replacement import ReplacementModel

from .corpus import TokenCorpus, default_corpus, load_corpus

TRAINED = ("W_enc", "b_enc", "W_dec", "b_dec")


@dataclass
class KLFinetuneConfig:
    """tokens: fine-tuning tokens (windows × context). lr: Adam learning rate.
    recon_coef: weight of the summed FVU term. batch: windows per step. seed: window order
    (offset from the SAE training seed so the fine-tuning text differs in order)."""

    tokens: int = 20_000
    context: int = 128
    batch: int = 4
    lr: float = 5e-5
    recon_coef: float = 1.0
    seed: int = 1
    progress: bool = True
    precision: str = "auto"   # forwards and SAE matmuls (`saecircuits.precision`); weights stay fp32

    def __post_init__(self) -> None:
        for name in ("tokens", "context", "batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"KL fine-tune {name} must be a positive integer, got {value!r}")
        if self.context < 2:
            raise ConfigError(f"KL fine-tune context must be >= 2, got {self.context}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"KL fine-tune lr must be positive, got {self.lr!r}")
        precision_check(self.precision)
        if not (self.recon_coef >= 0 and math.isfinite(self.recon_coef)):
            raise ConfigError(f"KL fine-tune recon_coef must be >= 0, got {self.recon_coef!r}")


def bind_saes(model, saes: Mapping[str, SAE]) -> ReplacementModel:
    """The model bound to `saes`, after checking every site and width (before any compute)."""
    if not isinstance(saes, Mapping) or not saes:
        raise ConfigError("KL fine-tuning needs a non-empty SAE set")
    skips = sorted(n for n, d in saes.items() if d.W_skip is not None)
    if skips:
        raise ConfigError(f"KL fine-tuning does not train skip terms; {', '.join(skips)} have one")
    try:
        return ReplacementModel(model, saes)
    except HookPointError as err:
        raise HookPointError(f"cannot KL fine-tune: {err}") from None
    except ShapeError as err:
        raise ConfigError(f"cannot KL fine-tune: {err}") from None


def _step_loss(rm: ReplacementModel, inputs, recon_coef: float, precision: str = "fp32"):
    with resolve_precision(precision, rm.device).autocast():
        return _step_loss_in(rm, inputs, recon_coef)


def _step_loss_in(rm: ReplacementModel, inputs, recon_coef: float):
    with torch.no_grad():
        logp = F.log_softmax(rm.hf(**inputs).logits[:, 1:].float(), dim=-1)
    keep = torch.ones(1, inputs["input_ids"].shape[1], 1, device=logp.device)
    keep[:, 0] = 0.0
    fvu: dict[str, torch.Tensor] = {}

    def no_error(site, f, err):
        x_hat = rm.saes[site.name].decode(f, dtype=torch.float32)
        x = x_hat.detach() + err.float()
        sel = keep[..., 0].bool().expand(x.shape[0], -1)
        xs, xh = x[sel], x_hat[sel]
        fvu[site.name] = (xs - xh).pow(2).sum() / (xs - xs.mean(0)).pow(2).sum().clamp_min(1e-12)
        return f, err * (1 - keep).to(err.dtype)

    with rm.model.trace(inputs):
        rm.splice(no_error)
        logits = rm.read_logits().save()
    logq = F.log_softmax(logits[:, 1:].float(), dim=-1)
    kl = (logp.exp() * (logp - logq)).sum(-1).mean()
    recon = sum(fvu.values())
    return kl + recon_coef * recon, float(kl), {h: float(v) for h, v in fvu.items()}


@torch.no_grad()
def spliced_kl(model, saes: Mapping[str, SAE], inputs) -> float:
    """Mean next-token KL(model ‖ model with every SAE spliced, no error term) on `inputs`."""
    _, kl, _ = _step_loss(bind_saes(model, saes), dict(inputs), 0.0)
    return kl


def kl_finetune(model, tok, saes: Mapping[str, SAE], cfg: KLFinetuneConfig | None = None,
                corpus=None) -> dict:
    """Fine-tune `saes` in place (see the module docstring). corpus: a `TokenCorpus`, any
    `load_corpus` source, or None (the embedded default corpus). Returns a log with the first
    and last steps' KL and FVU and the step count."""
    cfg = cfg or KLFinetuneConfig()
    rm = bind_saes(model, saes)
    tc = corpus if isinstance(corpus, TokenCorpus) else (
        default_corpus(tok) if corpus is None else load_corpus(tok, corpus))
    windows = tc.windows(cfg.context, seed=cfg.seed)
    steps = max(1, cfg.tokens // (cfg.batch * cfg.context))
    if windows.shape[0] < cfg.batch:
        raise ConfigError(f"the corpus gives {windows.shape[0]} windows of {cfg.context} tokens, "
                          f"fewer than one batch of {cfg.batch}")
    device = model_device(model)
    params = [getattr(s, name) for s in saes.values() for name in TRAINED]
    frozen = [p for p in unwrap(model).parameters() if p.requires_grad]
    sae_flags = [p.requires_grad for p in params]
    for p in frozen:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999))
    log = {"steps": steps, "tokens": steps * cfg.batch * cfg.context, "kl": [], "fvu": []}
    try:
        for step in track(range(steps), "KL fine-tune", unit="step", enabled=cfg.progress,
                          leave=True):
            rows = windows[(torch.arange(cfg.batch) + step * cfg.batch) % windows.shape[0]]
            ids = rows.to(device)
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            lr = cfg.lr * min(1.0, (steps - step) / max(1, 0.2 * steps))  # linear decay, last 20 %
            for group in opt.param_groups:
                group["lr"] = lr
            loss, kl, fvu = _step_loss(rm, inputs, cfg.recon_coef, cfg.precision)
            if not torch.isfinite(loss):
                raise ConfigError(f"KL fine-tune loss is not finite at step {step}; lower the lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            log["kl"].append(kl)
            log["fvu"].append(fvu)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        for p, flag in zip(params, sae_flags):
            p.requires_grad_(flag)
            p.grad = None
    log["kl_first"], log["kl_last"] = log["kl"][0], log["kl"][-1]
    return log


def finetune_after_training(model, tok, train_cfg, saes: Mapping[str, SAE],
                            kl_cfg: KLFinetuneConfig) -> dict:
    """The `train --kl-finetune-tokens N` stage: fine-tune the main SAE set on the training part
    of the corpus (the evaluation documents stay held out), save it over `train_cfg.out`, and
    re-evaluate. Returns {"log", "metrics_before", "metrics_after"} (metrics: per hook)."""
    from pathlib import Path

    from saecircuits.fileio import write_json

    from .evaluate import evaluate_saes, write_reports

    bind_saes(model, saes)
    tc = (default_corpus(tok) if train_cfg.corpus is None else load_corpus(tok, train_cfg.corpus))
    if train_cfg.holdout > 0 and train_cfg.eval_tokens > 0:
        train_part, eval_part = tc.split(train_cfg.holdout, train_cfg.seed,
                                         min_holdout_tokens=train_cfg.eval_tokens)
    else:
        train_part, eval_part = tc, None
    out = Path(train_cfg.out) if train_cfg.out else None
    scalars = lambda m: {h: {k: v for k, v in d.items() if not isinstance(v, dict)} for h, d in m.items()}
    before = (scalars(evaluate_saes(model, tok, saes, eval_part, train_cfg.eval_tokens,
                                    context=train_cfg.context, progress=kl_cfg.progress))
              if eval_part is not None else {})
    log = kl_finetune(model, tok, saes, kl_cfg, corpus=train_part)
    after = {}
    for sae in saes.values():
        sae.cfg.metadata["kl_finetune"] = {"tokens": log["tokens"], "lr": kl_cfg.lr,
                                           "recon_coef": kl_cfg.recon_coef,
                                           "kl_first": log["kl_first"], "kl_last": log["kl_last"]}
    if eval_part is not None:
        full = evaluate_saes(model, tok, saes, eval_part, train_cfg.eval_tokens,
                             context=train_cfg.context, progress=kl_cfg.progress)
        after = scalars(full)
        if out is not None:
            write_reports(out, full)
    if out is not None:
        for hook, sae in saes.items():
            if hook in after:
                sae.cfg.metadata["metrics"] = after[hook]
            sae.save(out / hook)
        write_json(out / "kl_finetune.json", {"config": vars(kl_cfg), "log": log,
                                              "metrics_before": before, "metrics_after": after})
    return {"log": log, "metrics_before": before, "metrics_after": after}
