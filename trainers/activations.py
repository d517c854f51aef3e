"""Harvest activations at many hook points in one forward pass; shuffle; cache on disk.

`harvest(model, points, ids)` runs one nnsight trace that reads every hook point in forward
order and stops right after the deepest one (later layers and the output head never run). Position 0
of every window (a BOS token, or the first token, which acts as an attention sink with
outlier norms) and padding positions are dropped.

`ActivationStream` turns token windows into shuffled training batches: it harvests a block
of windows (drawn from many documents), permutes the block's tokens with a generator seeded
by (seed, block index) and yields batches (running across block boundaries, so no harvested
token is dropped). Because each block is a pure function of its
index, a resumed run regenerates the exact same batches from its step counter alone.

`ActivationCache` stores harvested blocks as fp16/bf16 safetensors shards plus an atomic
`manifest.json`; a later run with the same model, hooks, windows and dtype reads the
shards and skips the model.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from saecircuits import hooks
from saecircuits.errors import ConfigError, TrainingError
from saecircuits.fileio import read_safetensors, write_json, write_safetensors
from saecircuits.hooks import HookPoint
from saecircuits.models import model_device
from saecircuits.progress import track

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _read_points(model, points: Sequence[HookPoint], out: dict, tracer) -> None:
    for hp in points:
        out[hp.name] = hooks.read(model, hp)
    tracer.stop()


def harvest(model, points: Sequence[HookPoint], ids: torch.Tensor,
            attention_mask: torch.Tensor | None = None,
            autocast: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Activations `[n_kept, width]` per hook point for windows `ids [b, ctx]`.

    `points` must be in forward order (`hooks.sort_by_forward_order`). `autocast`: run the
    forward under `torch.autocast` in that dtype (bfloat16 doubles CPU matmul speed); the
    activations are returned in float32. Kept positions:
    1..ctx-1 where the attention mask is 1 (row-major order, same for every hook).
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(ids)
    device = model_device(model)
    inputs = {"input_ids": ids.to(device), "attention_mask": attention_mask.to(device)}
    acts: dict[str, torch.Tensor] = {}
    lowp = (torch.autocast(device.type, dtype=autocast) if autocast is not None
            else contextlib.nullcontext())   # the precision policy's dtype, or plain fp32
    with torch.no_grad(), lowp:
        with model.trace(inputs) as tracer:
            _read_points(model, points, acts, tracer)
    real = attention_mask.bool()
    keep = (real & (attention_mask.cumsum(1) > 1)).to(device)  # drop padding + first real token
    return {name: value[keep].float() for name, value in acts.items()}


def windows_key(windows: torch.Tensor) -> str:
    """Content hash of a window tensor (identifies the token stream of a cache)."""
    return hashlib.sha256(windows.contiguous().numpy().tobytes()).hexdigest()[:20]


@dataclass
class ActivationCache:
    """On-disk activation shards: `shard_{i:05d}.safetensors` (one tensor per hook) +
    `manifest.json` {model, hooks, dtype, windows_key, windows_per_block, blocks}."""

    folder: Path
    meta: dict

    @classmethod
    def open(cls, folder: str | os.PathLike, meta: dict) -> "ActivationCache":
        """Open (or start) a cache; an existing manifest must match `meta` except `blocks`."""
        folder = Path(folder)
        manifest = folder / "manifest.json"
        if manifest.is_file():
            try:
                old = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as err:
                raise ConfigError(f"activation cache manifest {manifest} is unreadable: {err}") from None
            diff = sorted(k for k in meta if k != "blocks" and old.get(k) != meta[k])
            if diff:
                raise ConfigError(f"activation cache {str(folder)!r} was made with different "
                                  f"{', '.join(diff)}; use another --cache-activations directory")
            return cls(folder, old)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create activation cache {str(folder)!r}: {err}") from None
        cache = cls(folder, {**meta, "blocks": 0})
        write_json(manifest, cache.meta)
        return cache

    def has(self, block: int) -> bool:
        return block < self.meta["blocks"] and (self.folder / f"shard_{block:05d}.safetensors").is_file()

    def read(self, block: int) -> dict[str, torch.Tensor]:
        return read_safetensors(self.folder / f"shard_{block:05d}.safetensors")

    def write(self, block: int, acts: dict[str, torch.Tensor]) -> None:
        """Store block `block` (only appends in order: block == number stored so far)."""
        if block != self.meta["blocks"]:
            return
        dtype = _DTYPES[self.meta["dtype"]]
        write_safetensors(self.folder / f"shard_{block:05d}.safetensors",
                          {k: v.to(dtype) for k, v in acts.items()})
        self.meta["blocks"] = block + 1
        write_json(self.folder / "manifest.json", self.meta)


class ActivationStream:
    """Shuffled activation batches `{hook: [batch, width]}` from token windows.

    windows: `[n, ctx]` token ids (already in a seeded document order).
    windows_per_block: windows harvested and mixed together (the shuffle buffer).
    progress: show a bar while a block is harvested (set by `train_saes`).
    """

    progress: bool = False

    def __init__(self, model, points: Sequence[HookPoint], windows: torch.Tensor, *,
                 batch: int, seed: int = 0, windows_per_block: int = 32, model_batch: int = 8,
                 cache: ActivationCache | None = None, dtype: torch.dtype = torch.float32,
                 autocast: torch.dtype | None = None):
        self.model, self.points, self.windows = model, list(points), windows
        self.batch, self.seed, self.model_batch = batch, seed, model_batch
        self.windows_per_block, self.cache, self.dtype = windows_per_block, cache, dtype
        self.autocast = autocast
        self.tokens_per_block = windows_per_block * (windows.shape[1] - 1)
        if self.tokens_per_block < batch:
            raise ConfigError(f"a shuffle block holds {self.tokens_per_block} tokens, fewer than "
                              f"one batch of {batch}; raise the block size or lower the batch")
        self.batches_per_block = self.tokens_per_block // batch
        self.n_blocks = windows.shape[0] // windows_per_block

    def block(self, index: int) -> dict[str, torch.Tensor]:
        """Harvested (or cached) and shuffled activations of block `index`."""
        if index >= self.n_blocks:
            raise ConfigError(f"the corpus has {self.n_blocks} blocks of {self.windows_per_block} "
                              f"windows; block {index} was asked for: give more text or fewer tokens")
        if self.cache is not None and self.cache.has(index):
            acts = self.cache.read(index)
        else:
            rows = self.windows[index * self.windows_per_block:(index + 1) * self.windows_per_block]
            starts = track(range(0, len(rows), self.model_batch), f"harvest block {index}",
                           unit="batch", enabled=self.progress)
            parts = [harvest(self.model, self.points, rows[i:i + self.model_batch],
                             autocast=self.autocast) for i in starts]
            acts = {}
            for hp in self.points:          # one site at a time: the parts go as they are joined
                acts[hp.name] = torch.cat([p.pop(hp.name) for p in parts])
            del parts
            if self.cache is not None:  # train on what later runs will read back
                acts = {k: v.to(_DTYPES[self.cache.meta["dtype"]]) for k, v in acts.items()}
                self.cache.write(index, acts)
        for name, value in acts.items():
            if not torch.isfinite(value).all():
                bad = int((~torch.isfinite(value)).any(-1).sum())
                raise TrainingError(f"non-finite activations at hook point {name!r}: {bad} "
                                    f"token(s) with NaN/inf in block {index}")
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        perm = torch.randperm(next(iter(acts.values())).shape[0], generator=gen)
        shuffled = {}
        for name in list(acts):             # one site at a time: at most one extra site in memory
            value = acts.pop(name)
            shuffled[name] = value[perm.to(value.device)].to(self.dtype)
        return shuffled

    @property
    def steps_available(self) -> int:
        """Batches the whole corpus gives (every harvested token is used: batches run across
        block boundaries)."""
        return self.n_blocks * self.tokens_per_block // self.batch

    def blocks_for(self, steps: int) -> int:
        """Blocks that must be harvested for `steps` batches."""
        return math.ceil(steps * self.batch / self.tokens_per_block)

    def batches(self, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Batches from global step `start_step` on (deterministic; resumable).

        Batch s holds tokens [s * batch, (s + 1) * batch) of the concatenated shuffled blocks,
        so a block's remainder opens the next batch instead of being harvested and dropped."""
        cur_index, cur = -1, {}
        for step in range(start_step, self.steps_available):
            parts, pos, need = [], step * self.batch, self.batch
            while need:
                index, offset = divmod(pos, self.tokens_per_block)
                if index != cur_index:   # keep only the old block's tail, not the block
                    parts = [{k: v.clone() for k, v in part.items()} for part in parts]
                    cur = {}
                    cur_index, cur = index, self.block(index)
                take = min(need, self.tokens_per_block - offset)
                parts.append({k: v[offset:offset + take] for k, v in cur.items()})
                pos, need = pos + take, need - take
            yield parts[0] if len(parts) == 1 else {k: torch.cat([p[k] for p in parts]) for k in cur}
