"""Training a cross-layer transcoder (`saecircuits.dictionaries.crosslayer`) from one harvested
stream of `resid_mid.l` and `mlp.l` at every layer, then converting it to JumpReLU.

    from trainers.clt import CLTTrainConfig, train_clt
    clt = train_clt(model, tok, CLTTrainConfig(tokens=50_000, d_sae=576, k=16, out="clt/"))

Loss: mean over output layers of FVU(mlp.l', Σ_{l<=l'} f_l W_dec[l][l'−l] + b_dec[l']) with TopK
per layer; Adam (fused), the loop's LR schedule (warm-up 1 %, decay over the last 20 %); inputs and
targets normalised per site (mean norm -> sqrt(width)), folded in at the end. Metrics on held-out
text: FVU per layer and the replacement model (every MLP replaced by the CLT, no error terms):
CE-loss score and KL against zero-ablating every MLP. Plain torch hooks for that evaluation
(removed in a `finally`). Single process (no torchrun / resume for CLTs).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from saecircuits import hooks
from saecircuits.dictionaries.crosslayer import CLTConfig, CrossLayerTranscoder
from saecircuits.errors import ConfigError
from saecircuits.fileio import write_json
from saecircuits.models import model_device, model_name_of, unwrap
from saecircuits.precision import resolve as resolve_precision
from saecircuits.progress import bar as progress_bar

from .activations import ActivationStream
from .corpus import load_corpus
from .evaluate import eval_windows
from .loop import lr_factor


@dataclass
class CLTTrainConfig:
    """tokens / context / batch (default 4 windows); d_sae latents per layer; k per layer;
    lr (None: 2e-3 / sqrt(d_sae·L / 16384)); corpus; eval_tokens (0: none); out folder."""

    tokens: int = 50_000
    d_sae: int = 576
    k: int = 16
    context: int = 256
    batch: int | None = None
    lr: float | None = None
    seed: int = 0
    corpus: str | None = "embedded-mix:0.7"
    eval_tokens: int = 2048
    windows_per_block: int = 16
    out: str | None = None
    precision: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("tokens", "d_sae", "k", "context", "windows_per_block"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"CLTTrainConfig.{name} must be a positive integer, got {value!r}")
        if self.k > self.d_sae:
            raise ConfigError(f"k={self.k} must be <= d_sae={self.d_sae}")


def train_clt(model, tok, cfg: CLTTrainConfig, corpus=None) -> CrossLayerTranscoder:
    L = hooks.n_layers(model)
    reads = [hooks.resolve(model, f"resid_mid.{l}") for l in range(L)]
    writes = [hooks.resolve(model, f"mlp.{l}") for l in range(L)]
    points = sorted(reads + writes, key=lambda hp: hp.order)
    batch = cfg.batch or 4 * (cfg.context - 1)
    steps = cfg.tokens // batch
    if steps < 1:
        raise ConfigError(f"tokens={cfg.tokens} is smaller than one batch of {batch}")
    tc = corpus if corpus is not None else load_corpus(tok, cfg.corpus)
    train_part, eval_part = tc.split(0.02, cfg.seed, min_holdout_tokens=max(cfg.eval_tokens, 1))
    windows = train_part.windows(cfg.context, seed=cfg.seed)
    device = model_device(model)
    prec = resolve_precision(cfg.precision, device)
    stream = ActivationStream(model, points, windows, batch=batch, seed=cfg.seed,
                              windows_per_block=min(cfg.windows_per_block, windows.shape[0]),
                              autocast=prec.dtype)
    if stream.steps_available < steps:
        raise ConfigError(f"the corpus gives {stream.steps_available * batch} activations, fewer than "
                          f"tokens={cfg.tokens}")
    clt = CrossLayerTranscoder(CLTConfig(L, reads[0].width, cfg.d_sae, writes[0].width, k=cfg.k,
                                         model_name=model_name_of(model)), device=device)
    clt.init_parameters(cfg.seed)
    lr = cfg.lr or 2e-3 / math.sqrt(max(1.0, cfg.d_sae * L / 16384))
    opt = torch.optim.Adam(clt.parameters(), lr=lr, betas=(0.9, 0.999), fused=device.type in ("cpu", "cuda"))
    scales: dict[str, float] = {}
    stream.progress = cfg.progress   # a bar per harvested block
    bar = progress_bar(steps * batch, "train CLT", unit="tok", unit_scale=True,
                       enabled=cfg.progress, leave=True)
    began = time.perf_counter()
    stats: dict = {}
    last_x: list[torch.Tensor] = []
    try:
        for step, acts in zip(range(steps), stream.batches()):
            sc = {}
            for hp in points:
                a = acts[hp.name].to(device)
                if hp.name not in scales:
                    scales[hp.name] = float(math.sqrt(a.shape[1]) / a.norm(dim=1).mean().clamp_min(1e-12))
                sc[hp.name] = a * scales[hp.name]
            xs, ys = [sc[r.name] for r in reads], [sc[w.name] for w in writes]
            if step == 0:   # b_dec = the targets' mean
                with torch.no_grad():
                    clt.b_dec.copy_(torch.stack([y.mean(0) for y in ys]))
            for group in opt.param_groups:
                group["lr"] = lr * lr_factor(step, steps)
            opt.zero_grad(set_to_none=True)
            loss, stats = clt.loss(xs, ys)
            if not torch.isfinite(loss):
                raise ConfigError(f"CLT training diverged at step {step}; lower the lr")
            loss.backward()
            opt.step()
            last_x = xs
            bar.update(batch)
            bar.set_postfix_str(f"FVU {stats['fvu']:.3f} L0 {stats['l0']:.1f}")
    finally:
        bar.close()
    clt.to_jumprelu(last_x)
    clt.fold_scales([scales[r.name] for r in reads], [scales[w.name] for w in writes])
    clt.cfg.metadata.update(tokens=cfg.tokens, steps=steps, lr=lr, train_seconds=round(time.perf_counter() - began, 1),
                            final_train_fvu=stats.get("fvu"), final_train_fvu_per_layer=stats.get("fvu_per_layer"),
                            precision=prec.record(), config=asdict(cfg))
    clt.requires_grad_(False)
    if cfg.eval_tokens:
        clt.cfg.metadata["metrics"] = evaluate_clt(model, tok, clt, eval_part, cfg.eval_tokens, cfg.context)
    if cfg.out:
        clt.save(Path(cfg.out))
        write_json(Path(cfg.out) / "metrics.json", clt.cfg.metadata.get("metrics", {}))
    return clt


def _attach(hf, clt: CrossLayerTranscoder, mode: str, store: dict):
    """Hooks replacing every MLP output: mode "clt" (the CLT's prediction), "zero", or "clean"
    (record only). Returns the handles."""
    layers = hf.get_submodule(hooks._layout(hf).layers)
    handles = []
    for l, block in enumerate(layers):
        norm = getattr(block, hooks._layout(hf).mlp_norm)
        mlp = getattr(block, hooks._layout(hf).mlp)

        def pre(module, args, l=l):
            store.setdefault("f", {})[l] = clt.encode(l, args[0][:, :])

        def post(module, args, out, l=l):
            store.setdefault("y", {})[l] = out.detach()
            if mode == "zero":
                return out * 0
            if mode == "clt":
                y_hat = clt.decode(l, store["f"]).to(out.dtype)
                y_hat[:, 0] = out[:, 0]          # the first position keeps its true value
                return y_hat
            return out

        handles.append(norm.register_forward_pre_hook(pre))
        handles.append(mlp.register_forward_hook(post))
    return handles


@torch.no_grad()
def evaluate_clt(model, tok, clt: CrossLayerTranscoder, data, n_tokens: int, context: int = 256) -> dict:
    """FVU per layer (clean inputs) and the replacement model's CE-loss score and KL."""
    hf = unwrap(model)
    windows = eval_windows(tok, data, n_tokens, context, False)
    device = model_device(model)
    sums = {"ce_clean": 0.0, "ce_clt": 0.0, "ce_zero": 0.0, "kl_clt": 0.0, "kl_zero": 0.0, "n": 0}
    sse = torch.zeros(clt.cfg.n_layers, dtype=torch.float64)
    var = torch.zeros(clt.cfg.n_layers, dtype=torch.float64)
    for start in range(0, len(windows), 4):
        ids = windows[start:start + 4].to(device)
        logps = {}
        for mode in ("clean", "clt", "zero"):
            store: dict = {}
            handles = _attach(hf, clt, mode, store)
            try:
                logits = hf(input_ids=ids).logits[:, 1:-1].float()
            finally:
                for h in handles:
                    h.remove()
            logps[mode] = torch.log_softmax(logits, -1)
            if mode == "clean":
                for l in range(clt.cfg.n_layers):
                    y = store["y"][l][:, 1:].reshape(-1, clt.cfg.d_out).double()
                    y_hat = clt.decode(l, {s: f[:, 1:] for s, f in store["f"].items()}).reshape(-1, clt.cfg.d_out).double()
                    sse[l] += (y - y_hat).pow(2).sum().cpu()
                    var[l] += (y - y.mean(0)).pow(2).sum().cpu()
        target = ids[:, 2:]
        for mode in ("clean", "clt", "zero"):
            sums[f"ce_{mode}"] += float(-logps[mode].gather(-1, target.unsqueeze(-1)).sum())
        p = logps["clean"].exp()
        for mode in ("clt", "zero"):
            sums[f"kl_{mode}"] += float((p * (logps["clean"] - logps[mode])).sum())
        sums["n"] += target.numel()
    n = sums["n"]
    ce = {k: sums[k] / n for k in ("ce_clean", "ce_clt", "ce_zero")}
    kl = {k: sums[k] / n for k in ("kl_clt", "kl_zero")}
    return {**ce, **kl, "ce_loss_score": (ce["ce_zero"] - ce["ce_clt"]) / (ce["ce_zero"] - ce["ce_clean"]),
            "kl_score": 1 - kl["kl_clt"] / kl["kl_zero"], "fvu_per_layer": (sse / var).tolist(),
            "explained_variance_median": float((1 - sse / var).median()), "tokens": n}
