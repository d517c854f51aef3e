"""`TrainConfig` and `TranscoderRecipe`: what to train, importable without torch (the command
line options of `saecircuits train` are generated from these fields, `config_args`)."""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from saecircuits.config_args import cli
from saecircuits.errors import ConfigError


def _positive_ints(text: str):
    from saecircuits.cli import positive_ints

    return positive_ints(text)


def _nonnegative_float(text: str) -> float:
    from saecircuits.cli import nonnegative_float

    return nonnegative_float(text)


def _nonnegative_int(text: str) -> int:
    from saecircuits.cli import nonnegative_int

    return nonnegative_int(text)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


@dataclass
class TranscoderRecipe:
    """Transcoders trained in the same run as SAEs, from the same harvested stream (written to
    `out/transcoders/`): write sites `mlp.L` ("all": every layer), architecture, k, expansion
    (d_sae = expansion·d_in), skip term, learning rate (None: the architecture's default)."""

    sites: list[str] | str = "all"
    architecture: str = "batchtopk"
    k: int = 32
    expansion: int = 4
    skip: bool = True
    lr: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.sites, str):
            self.sites = [s.strip() for s in self.sites.split(",") if s.strip()]
        if not self.sites:
            raise ConfigError("TranscoderRecipe.sites is empty; name mlp.L sites or 'all'")
        from saecircuits.dictionaries import names as architectures

        if self.architecture not in architectures():
            raise ConfigError(f"unknown transcoder architecture {self.architecture!r}; expected one of "
                              f"{', '.join(architectures())}")
        for name in ("k", "expansion"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"TranscoderRecipe.{name} must be a positive integer, got {value!r}")


@dataclass
class TrainConfig:
    """What to train. Defaults suit SmolLM2-135M on CPU and hit the README's targets.

    hooks: hook points (one SAE set entry each); with `transcoder`, MLP write sites `mlp.L` or
        "all" (every layer). architecture: a registered name (relu | topk | batchtopk | jumprelu ...).
    transcoder: train transcoders `mlp_in.L -> mlp.L` instead of SAEs; skip: with a dense skip
        term W_skip (skip transcoders, Paulo et al. 2025).
    transcoders: a `TranscoderRecipe` to train transcoders beside the SAEs of `hooks` from the
        same harvest (they go to out/transcoders/; `train_saes` returns the SAEs).
    k / expansion: int, or a list to train several sizes at every hook point from the same
        batches (the first combination is the main set, the others go to out/variants/).
    d_sae: latents (overrides expansion). tokens: training tokens (activations, not windows).
    context: window length. batch: activations per step (default 4·(context−1), i.e. four
        windows; each step mixes ~4 windows' worth of tokens from a 64-window shuffle block).
    lr / l1: learning rate and sparsity coefficient (None: architecture defaults).
    hook_options: per-hook overrides, e.g. {"resid.3": {"k": 64, "lr": 1e-3}}.
    corpus: None (embedded default), a file/dir path, "hf:<name>", or a list of strings.
    holdout: fraction of the corpus tokens (whole documents) kept for evaluation.
    eval_tokens: held-out tokens for the final metrics.json (0: skip evaluation).
    cache_activations: directory of an on-disk activation cache (written, then reused).
    resume: continue from out/checkpoint.safetensors (the config must be unchanged).
    stop_at_step: stop after this many steps as if interrupted (checkpoint written).
    precision: "auto" | "fp32" | "bf16" (`saecircuits.precision`): the dtype of the harvesting
        forward, the SAE step's matmuls and the evaluation forwards (bf16: ~2x faster where the
        CPU/GPU has fast bf16, activations within ~0.6% of float32; weights and Adam stay
        float32). auto = bf16 only where bf16 is measured faster. The resolved choice is part of
        the resume fingerprint (it changes the harvested activations).
    """

    hooks: list[str] = field(default_factory=lambda: ["resid.10"], metadata=cli(
        "comma-separated hook points, e.g. resid.3,resid.9; with --transcoder the MLP write sites mlp.L, "
        "or 'all'", type=str))
    architecture: str = field(default="topk", metadata=cli(
        "architecture: relu, topk, batchtopk, jumprelu, matryoshka_topk, ... (saecircuits.dictionaries."
        "names())", flags=("--arch", "--architecture")))
    transcoder: bool = field(default=False, metadata=cli(
        "train transcoders mlp_in.L -> mlp.L (for replacement graphs) instead of SAEs"))
    skip: bool = field(default=False, metadata=cli("give each transcoder a dense skip term W_skip (skip "
                                                    "transcoders)"))
    transcoders: TranscoderRecipe | None = None
    k: int | list[int] = field(default=32, metadata=cli(
        "active latents (topk/batchtopk); a comma list trains one dictionary per value", type=_positive_ints))
    expansion: int | list[int] = field(default=8, metadata=cli(
        "d_sae / d_in (comma list: one dictionary per value)", type=_positive_ints))
    d_sae: int | None = field(default=None, metadata=cli("latents (overrides --expansion; default: expansion "
                                                         "x hook width)"))
    tokens: int = field(default=500_000, metadata=cli("training activations per hook"))
    context: int = field(default=256, metadata=cli("token window length (>= 2)"))
    batch: int | None = field(default=None, metadata=cli("activations per step (default 4 windows)"))
    lr: float | None = field(default=None, metadata=cli("learning rate (default per architecture)"))
    l1: float | None = field(default=None, metadata=cli(
        "sparsity coefficient (relu, jumprelu; default per architecture)", type=_nonnegative_float))
    seed: int = field(default=0, metadata=cli("training seed", type=_int))
    out: str | None = field(default=None, metadata=cli("output directory (a dictionary set)", required=True))
    cache_activations: str | None = field(default=None, metadata=cli(
        "store harvested activations here and reuse them in later runs (default: no cache)", metavar="DIR"))
    resume: bool = field(default=False, metadata=cli("continue from OUT/checkpoint.safetensors"))
    device: str | None = None
    corpus: Any = field(default=None, metadata=cli(
        "text file, .jsonl (text or pre-tokenized input_ids), directory, dataset dir, hf:<name>, embedded, "
        "narrative or embedded-mix[:R] (default: embedded stdlib code + pydoc prose)", type=str))
    prepend_bos: bool = field(default=False, metadata=cli("start every window with BOS"))
    holdout: float = 0.02
    eval_tokens: int = field(default=8192, metadata=cli("held-out tokens for metrics.json (0: skip)",
                                                        type=_nonnegative_int))
    hook_options: dict[str, dict] = field(default_factory=dict)
    windows_per_block: int = 64
    model_batch: int = 16
    dead_tokens: int | None = None
    checkpoint_every: int = field(default=200, metadata=cli("steps between checkpoints"))
    stop_at_step: int | None = None
    progress: bool = True
    precision: str = field(default="auto", metadata=cli(
        "matmul precision of the harvesting forwards, the SAE step and the evaluation forwards: auto "
        "(bf16 only where it is measured faster on this CPU/GPU), fp32, or bf16",
        choices=("auto", "fp32", "bf16")))

    def __post_init__(self) -> None:
        if isinstance(self.hooks, str):
            self.hooks = [h.strip() for h in self.hooks.split(",") if h.strip()]
        if not self.hooks:
            raise ConfigError("TrainConfig.hooks is empty; name at least one hook point")
        from saecircuits import precision
        from saecircuits.dictionaries import names as architectures

        if self.architecture not in architectures():
            raise ConfigError(f"unknown architecture {self.architecture!r}; "
                              f"expected one of {', '.join(architectures())}")
        if self.skip and not self.transcoder:
            raise ConfigError("skip=True (a skip term) needs transcoder=True")
        if isinstance(self.transcoders, dict):
            self.transcoders = TranscoderRecipe(**self.transcoders)
        if self.transcoders is not None and self.transcoder:
            raise ConfigError("give transcoder=True (every hook a transcoder) or a transcoders recipe "
                              "beside SAEs, not both")
        for name in ("tokens", "context", "windows_per_block", "model_batch", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        if self.context < 2:
            raise ConfigError(f"context must be at least 2 tokens, got {self.context}")
        precision.check(self.precision)
        if not 0 <= self.holdout < 1:
            raise ConfigError(f"holdout must be in [0, 1), got {self.holdout}")
        for name in ("k", "expansion"):
            for value in _lst(getattr(self, name)):
                if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                    raise ConfigError(f"TrainConfig.{name} must be a positive integer (or a list of "
                                      f"them), got {value!r}")
        for name in ("d_sae", "batch"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ConfigError(f"TrainConfig.{name} must be a positive integer or None, got {value!r}")
        for name, low in (("lr", "> 0"), ("l1", ">= 0")):
            value = getattr(self, name)
            if value is None:
                continue
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or (value <= 0 if low == "> 0" else value < 0):
                raise ConfigError(f"TrainConfig.{name} must be a finite number {low}, got {value!r}")
        if not isinstance(self.eval_tokens, int) or self.eval_tokens < 0:
            raise ConfigError(f"TrainConfig.eval_tokens must be an integer >= 0, got {self.eval_tokens!r}")

    @property
    def batch_size(self) -> int:
        return self.batch or 4 * (self.context - 1)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if not (out["corpus"] is None or isinstance(out["corpus"], str)):
            out["corpus"] = f"<{len(out['corpus'])} texts>"
        return out


def _lst(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]
