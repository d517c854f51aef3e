"""Training: many dictionaries from one harvested stream, checkpoints, resume, final metrics.

    from trainers import TrainConfig, train_saes
    saes = train_saes(model, tok, TrainConfig(hooks=["resid.3", "resid.9"], tokens=500_000,
                                              out="saes/run1"))
    tcs = train_saes(model, tok, TrainConfig(hooks="all", transcoder=True, skip=True, ...))

SAEs read and write their hook point; transcoders (`transcoder=True`) read `mlp_in.L` and write
`mlp.L` for every `mlp.L` in `hooks` ("all": every layer). Every read and write site is harvested
in the same forward pass; each dictionary trains on its own (read, write) pair, normalised by
each site's scale (mean norm -> sqrt(width)), folded into the saved weights.

Output directory (an SAE set, loadable with `SAESet.load(out)`):
    <hook>/cfg.json, sae.safetensors, metrics.json, density.svg   one per hook point
    variants/<name>/<hook>/...     extra sizes / k values at the same hook points (if asked)
    train_config.json, metrics.json, checkpoint.safetensors
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from saecircuits import hooks
from saecircuits.dictionaries import DictionaryConfig, get as get_architecture, names as architectures
from saecircuits.errors import ConfigError, HookPointError, TrainingError
from saecircuits.fileio import remove_stale_temps, write_json, write_safetensors
from saecircuits.models import model_device, model_name_of
from saecircuits.progress import bar as progress_bar
from saecircuits.sae import SAESet

from .activations import ActivationCache, ActivationStream, windows_key
from saecircuits import precision
from saecircuits.formats import TRANSCODERS_DIR as TRANSCODERS, VARIANTS_DIR  # side sets of a run

from . import distributed
from .config import TrainConfig, TranscoderRecipe, _lst  # noqa: F401 (re-exported)
from .loop import Trainer
from .corpus import TokenCorpus, default_corpus, load_corpus

CHECKPOINT = "checkpoint.safetensors"
BLOCK_BYTES = 5 << 28     # 1.25 GiB: the largest harvested shuffle block (fp32, all sites)
# Fields that may change between a run and its resumption.
RESUMABLE = {"out", "resume", "device", "cache_activations", "eval_tokens", "checkpoint_every",
             "stop_at_step", "progress", "model_batch"}


@dataclass
class DictionarySpec:
    """One dictionary to train: its config, its name in the output set and its optimiser
    settings (lr None: the architecture's default; sparsity: l1 / l0 coefficient)."""

    cfg: DictionaryConfig
    name: str
    lr: float | None = None
    sparsity: float | None = None

    @property
    def read(self) -> str:
        return self.cfg.hook

    @property
    def write(self) -> str:
        return self.cfg.write_site

    @property
    def variant(self) -> str:
        return self.name.rsplit("/", 1)[0] if "/" in self.name else ""


def _sites(model, cfg: TrainConfig) -> list[tuple[str, str]]:
    """(read site, write site) per dictionary: SAEs read and write their hook, transcoders
    `mlp_in.L -> mlp.L`."""
    names = cfg.hooks
    if not cfg.transcoder:
        if "all" in names:
            raise ConfigError('hooks="all" means every MLP of a transcoder run (transcoder=True); '
                              "name the SAEs' hook points")
        return [(h, h) for h in names]
    return transcoder_sites(model, names)


def transcoder_sites(model, names: list[str]) -> list[tuple[str, str]]:
    """(mlp_in.L, mlp.L) for each `mlp.L` in `names` ("all": every layer)."""
    if names == ["all"]:
        names = [f"mlp.{i}" for i in range(hooks.n_layers(model))]
    out = []
    for name in names:
        if not (name.startswith("mlp.") and name[4:].isdigit()):
            raise ConfigError(f"a transcoder writes an MLP's output: name its write site as mlp.L, "
                              f"got {name!r}")
        out.append((f"mlp_in.{name[4:]}", name))
    return out


def build_specs(model, cfg: TrainConfig) -> list[DictionarySpec]:
    """Dictionary specs (first variant first) for every site, checked against the model."""
    for hook in cfg.hook_options:
        unknown = set(cfg.hook_options.get(hook, {})) - {"k", "lr", "l1", "d_sae", "expansion"}
        if unknown:
            raise ConfigError(f"hook_options[{hook!r}] has unknown keys {sorted(unknown)}")
    pairs = _sites(model, cfg)
    writes = hooks.sort_by_forward_order(model, [w for _, w in pairs])
    read_of = dict((w, r) for r, w in pairs)
    uses_k = get_architecture(cfg.architecture).uses_k
    variants = [(k, e) for e in _lst(cfg.expansion) for k in _lst(cfg.k)]
    specs = []
    for i, (k, expansion) in enumerate(variants):
        for hp in writes:
            read = hooks.resolve(model, read_of[hp.name])
            opt = cfg.hook_options.get(hp.name, {})
            d_sae = opt.get("d_sae") or cfg.d_sae or int(opt.get("expansion", expansion) * read.width)
            kk = opt.get("k", k) if uses_k else None
            if kk is not None and not 0 < kk <= d_sae:
                raise ConfigError(f"k={kk} for {hp.name} must be in 1..d_sae={d_sae}")
            name = hp.name if i == 0 else f"{VARIANTS_DIR}/k{kk}-x{d_sae // read.width}/{hp.name}"
            dcfg = DictionaryConfig(cfg.architecture, read.width, int(d_sae), k=kk, hook=read.name,
                                    write_hook=hp.name if cfg.transcoder else None,
                                    d_out=hp.width if cfg.transcoder else None, skip=cfg.skip)
            specs.append(DictionarySpec(dcfg, name, lr=opt.get("lr", cfg.lr),
                                        sparsity=opt.get("l1", cfg.l1)))
    recipe = cfg.transcoders
    if recipe is not None:
        uses_k = get_architecture(recipe.architecture).uses_k
        pairs = transcoder_sites(model, list(recipe.sites))
        for hp in hooks.sort_by_forward_order(model, [w for _, w in pairs]):
            read = hooks.resolve(model, f"mlp_in.{hp.name[4:]}")
            dcfg = DictionaryConfig(recipe.architecture, read.width, recipe.expansion * read.width,
                                    k=recipe.k if uses_k else None, hook=read.name, write_hook=hp.name,
                                    d_out=hp.width, skip=recipe.skip)
            specs.append(DictionarySpec(dcfg, f"{TRANSCODERS}/{hp.name}", lr=recipe.lr))
    return specs


def make_trainer(spec: DictionarySpec, total_steps: int, seed: int, dead_tokens: int, device,
                 compute_dtype: torch.dtype | None = None) -> Trainer:
    return Trainer(spec.cfg, total_steps, seed=seed, dead_tokens=dead_tokens, device=device,
                   lr=spec.lr, sparsity=spec.sparsity, compute_dtype=compute_dtype)


# -- checkpoints ---------------------------------------------------------------------------
def _config_fingerprint(cfg: TrainConfig, corpus_key: str) -> dict:
    data = {k: v for k, v in cfg.to_dict().items() if k not in RESUMABLE}
    data["corpus_key"] = corpus_key
    return json.loads(json.dumps(data, default=str))


def save_checkpoint(path: Path, trainers: dict[str, Trainer], step: int, scales: dict[str, float],
                    fingerprint: dict) -> None:
    tensors: dict[str, torch.Tensor] = {}
    groups = {}
    for name, tr in trainers.items():
        for key, value in tr.state_tensors().items():
            tensors[f"{name}::{key}"] = value
        groups[name] = tr.param_groups()
    meta = {"step": step, "scales": scales, "config": fingerprint, "param_groups": groups}
    try:
        write_safetensors(path, tensors, metadata={"saecircuits": json.dumps(meta)})
    except OSError as err:
        raise TrainingError(f"cannot write checkpoint {str(path)!r} at step {step}: {err}; "
                            "the previous checkpoint is intact") from err


def load_checkpoint(path: Path, trainers: dict[str, Trainer], fingerprint: dict) -> tuple[int, dict]:
    """Restore trainers in place; returns (step, scales). Refuses a changed config."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["saecircuits"])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        old = meta["config"]
        int(meta["step"]), dict(meta["scales"]), meta["param_groups"]  # KeyError if absent
        if not isinstance(old, dict):
            raise TypeError("config is not an object")
    except KeyError as err:
        raise TrainingError(f"cannot resume from {str(path)!r}: it lacks {err} (not a saecircuits "
                            "checkpoint); delete it or use a new --out") from None
    except (Exception) as err:  # noqa: BLE001 - truncated / corrupt file of any kind
        raise TrainingError(f"cannot resume from {str(path)!r}: the checkpoint is unreadable "
                            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                            "delete it or use a new --out") from None
    diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
    if diff:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {fingerprint.get(k)!r}" for k in diff)
        raise ConfigError(f"cannot resume from {str(path)!r}: the config changed ({detail}); "
                          "use the original settings or a new --out directory")
    absent = sorted({f"{name}::{key}" for name, tr in trainers.items() for key in tr.required_keys()}
                    - set(tensors))
    if absent:
        raise TrainingError(f"cannot resume from {str(path)!r}: it lacks tensors {absent[:3]}")
    for name, tr in trainers.items():
        prefix = f"{name}::"
        own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        tr.load_state_tensors(own, meta["param_groups"][name])
    return int(meta["step"]), {k: float(v) for k, v in meta["scales"].items()}


# -- the loop ----------------------------------------------------------------------------------
def _corpus_for(tok, cfg: TrainConfig, corpus) -> TokenCorpus:
    if isinstance(corpus, TokenCorpus):
        return corpus
    if corpus is None and cfg.corpus is None:
        return default_corpus(tok)
    return load_corpus(tok, corpus if corpus is not None else cfg.corpus)


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"output directory {str(out)!r} is not writable: {err}") from None


def train_saes(model, tok, cfg: TrainConfig, corpus=None) -> SAESet:
    """Train SAEs at `cfg.hooks` from one harvested stream; write and return the main set.

    corpus: a `TokenCorpus`, any `load_documents` source, or None (cfg.corpus / default).
    Writes `cfg.out` (if set): the SAE set, metrics, density pictures and a checkpoint.
    """
    distributed.init_from_env()
    rank, n_ranks = distributed.world()
    out = Path(cfg.out) if cfg.out else None
    if cfg.resume and out is None:
        raise ConfigError("resume needs an output directory (cfg.out) holding a checkpoint")
    specs = build_specs(model, cfg)
    from saecircuits.limits import check_tokens

    check_tokens(model, cfg.context, "a training window (context)")
    points = hooks.sort_by_forward_order(model, sorted({h for s in specs for h in (s.read, s.write)}))
    batch = cfg.batch_size
    total_steps = cfg.tokens // (batch * n_ranks)  # under torchrun the budget is shared
    if total_steps < 1:
        raise ConfigError(f"tokens={cfg.tokens} is smaller than one batch of {batch} activations; "
                          "raise --tokens or lower --batch")
    tc = _corpus_for(tok, cfg, corpus)
    if cfg.holdout > 0 and cfg.eval_tokens > 0:
        train_corpus, eval_corpus = tc.split(cfg.holdout, cfg.seed, min_holdout_tokens=cfg.eval_tokens)
    else:
        train_corpus, eval_corpus = tc, None
    windows = train_corpus.windows(cfg.context, seed=cfg.seed, prepend_bos=cfg.prepend_bos)
    windows = windows[rank::n_ranks]  # each rank harvests its own shard (all of it when alone)
    per_window = cfg.context - 1
    # a harvested block holds every site's fp32 activations: with many sites (the demo's 68) a
    # 64-window block is 2.6 GB and its copies pushed the demo to 17 GB; fewer windows keep it
    # under BLOCK_BYTES (a few sites keep the configured block)
    site_bytes = per_window * sum(hp.width for hp in points) * 4
    wpb = min(cfg.windows_per_block, windows.shape[0],
              max(-(-batch // per_window), BLOCK_BYTES // site_bytes))
    if wpb * per_window < batch:
        raise ConfigError(f"corpus is too short: {windows.shape[0]} windows of {cfg.context} tokens "
                          f"hold fewer than one batch of {batch} activations")
    device = model_device(model) if cfg.device is None else torch.device(cfg.device)
    harvest_precision = precision.resolve(cfg.precision, model_device(model))
    step_precision = precision.resolve(cfg.precision, device)
    stream = ActivationStream(model, points, windows, batch=batch, seed=cfg.seed,
                              windows_per_block=wpb, model_batch=cfg.model_batch,
                              autocast=harvest_precision.dtype)
    if stream.steps_available < total_steps:
        raise ConfigError(f"corpus is too short for tokens={cfg.tokens}: its {windows.shape[0]} "
                          f"training windows give {stream.steps_available * batch} activations")
    windows = windows[: stream.blocks_for(total_steps) * wpb]
    stream.windows = windows
    stream.progress = cfg.progress and rank == 0  # a bar per harvested block
    key = windows_key(windows)
    if cfg.cache_activations:
        cache_dir = Path(cfg.cache_activations) / (f"rank{rank}-of-{n_ranks}" if n_ranks > 1 else "")
        stream.cache = ActivationCache.open(cache_dir, {
            "model": model_name_of(model), "hooks": [p.name for p in points], "dtype": "bfloat16",
            "windows_key": key, "windows_per_block": wpb,
            "harvest_precision": harvest_precision.name})
    dead_tokens = cfg.dead_tokens or int(min(10_000_000, max(20_000, cfg.tokens // 10)))
    trainers = {s.name: make_trainer(s, total_steps, cfg.seed + i, dead_tokens, device,
                                     step_precision.dtype)
                for i, s in enumerate(specs)}
    fingerprint = {**_config_fingerprint(cfg, key), "harvest_precision": harvest_precision.name}
    created = out is not None and not out.exists()
    if out is not None:  # only now, so that a bad config leaves no directory behind
        _check_writable(out)
        remove_stale_temps(out)  # temp files of a killed or failed earlier write
    if cfg.cache_activations:
        remove_stale_temps(cfg.cache_activations)
    try:
        return _train(model, tok, cfg, specs, stream, trainers, fingerprint, tc, eval_corpus,
                      total_steps, batch, out, rank, key, device,
                      {"harvest": harvest_precision, "step": step_precision})
    except BaseException:
        if out is not None and rank == 0:
            remove_stale_temps(out)
            if created and out.is_dir() and {p.name for p in out.iterdir()} <= {"train_config.json"}:
                shutil.rmtree(out)  # a failed first run leaves no (near-)empty directory
        raise


def _train(model, tok, cfg, specs, stream, trainers, fingerprint, tc, eval_corpus,
           total_steps, batch, out, rank, key, device, precisions) -> SAESet:
    from .evaluate import JOINT, evaluate_saes, write_reports

    start, scales = 0, {}
    ckpt = out / CHECKPOINT if out is not None else None
    writer = out is not None and rank == 0  # under torchrun only rank 0 writes files
    if cfg.resume:
        if not ckpt.is_file():
            raise ConfigError(f"--resume: no checkpoint at {str(ckpt)!r}")
        start, scales = load_checkpoint(ckpt, trainers, fingerprint)
        if start >= total_steps:
            raise ConfigError(f"--resume: the checkpoint {str(ckpt)!r} is at step {start} of "
                              f"{total_steps}: that run already finished; nothing to resume")
    if writer and not cfg.resume:
        write_json(out / "train_config.json", {
            **cfg.to_dict(), "steps": total_steps, "batch_size": batch, "corpus_key": key,
            "resolved_precision": {k: p.record() for k, p in precisions.items()}})
    by_sites: dict[tuple[str, str], list[tuple[str, Trainer]]] = {}
    for spec in specs:
        by_sites.setdefault((spec.read, spec.write), []).append((spec.name, trainers[spec.name]))
    stats: dict[str, dict] = {}
    bar = progress_bar(total_steps * batch, "train SAEs", initial=start * batch, unit="tok",
                       unit_scale=True, enabled=cfg.progress and rank == 0, leave=True)
    began, last_step = time.perf_counter(), start
    step = start
    try:
        for step, acts in zip(range(start, total_steps), stream.batches(start)):
            scaled: dict[str, torch.Tensor] = {}
            for (read, write), group in by_sites.items():
                for site in (read, write):
                    if site not in scaled:
                        a = acts[site].to(device)
                        if site not in scales:
                            norm = a.norm(dim=1).mean().reshape(1)
                            distributed.mean_([norm])
                            scales[site] = float(math.sqrt(a.shape[1]) / norm.clamp_min(1e-12))
                        scaled[site] = a * scales[site]
                for name, tr in group:
                    stats[name] = tr.step(scaled[read], scaled[write], step)
                    if not math.isfinite(stats[name]["fvu"]):
                        raise TrainingError(f"training diverged at {write!r} (dictionary {name}) "
                                            f"at step {step}: loss is not finite; the last good "
                                            "checkpoint is intact")
            bar.update(batch)
            if step == start and step + 1 < total_steps:  # the first batch carries set-up (corpus,
                done = bar.n                               # first activation block): the ETA starts after it
                bar.reset(total=total_steps * batch)
                bar.initial = bar.n = done
            if cfg.progress and (step % 10 == 0 or step + 1 == total_steps):
                bar.set_postfix_str("  ".join(
                    f"{n}: L0 {s['l0']:.0f} EV {1 - s['fvu']:.3f} dead {s['dead']:.1%}"
                    for n, s in stats.items() if "/" not in n))
            last_step = step + 1
            if writer and (last_step % cfg.checkpoint_every == 0 or last_step == total_steps
                                     or last_step == cfg.stop_at_step):
                save_checkpoint(ckpt, trainers, last_step, scales, fingerprint)
            if cfg.stop_at_step is not None and last_step >= cfg.stop_at_step:
                break
    finally:
        bar.close()
    elapsed = time.perf_counter() - began
    model_name = model_name_of(model)
    saes = {}
    for spec in specs:
        meta = {"tokens": cfg.tokens, "steps_done": last_step, "batch": batch, "context": cfg.context,
                "lr": trainers[spec.name].lr, "seed": cfg.seed, "corpus": tc.fingerprint,
                "trainer": spec.cfg.architecture,
                "precision": {k: p.record() for k, p in precisions.items()},
                "final_train_ev": 1 - stats.get(spec.name, {"fvu": 1})["fvu"],
                "train_seconds": round(elapsed, 1),
                "train_tokens_per_s": round((last_step - start) * batch / max(elapsed, 1e-9), 1)}
        saes[spec.name] = trainers[spec.name].finished(
            scales[spec.read], scales[spec.write] if spec.cfg.is_transcoder else None, model_name, meta)
    main = SAESet({s.write: saes[s.name] for s in specs if not s.variant})
    if writer:
        for name, sae in saes.items():
            sae.save(out / name)
    if eval_corpus is not None and writer and last_step == total_steps:
        for variant in sorted({s.variant for s in specs}):
            group = {s.write: saes[s.name] for s in specs if s.variant == variant}
            eval_began = time.perf_counter()
            metrics = evaluate_saes(model, tok, group, eval_corpus, cfg.eval_tokens,
                                    context=cfg.context, prepend_bos=cfg.prepend_bos,
                                    progress=cfg.progress,
                                    joint=any(d.is_transcoder for d in group.values()),
                                    per_site_ce=not any(d.is_transcoder for d in group.values()),
                                    precision=precisions["harvest"])  # score on what was harvested
            eval_seconds = round(time.perf_counter() - eval_began, 1)
            write_reports(out / variant if variant else out, metrics)
            joint = {k: v for k, v in metrics.get(JOINT, {}).items()
                     if isinstance(v, (int, float)) and math.isfinite(v)}
            for spec in specs:
                if spec.write in metrics and spec.variant == variant:
                    scalars = {k: v for k, v in metrics[spec.write].items()
                               if isinstance(v, (int, float)) and math.isfinite(v)}
                    saes[spec.name].cfg.metadata["metrics"] = scalars
                    if joint:   # the replacement model of the whole group (transcoders)
                        saes[spec.name].cfg.metadata["joint_metrics"] = joint
                    saes[spec.name].cfg.metadata["eval_seconds"] = eval_seconds  # vs train_seconds
                    saes[spec.name].save(out / spec.name)
    return main
