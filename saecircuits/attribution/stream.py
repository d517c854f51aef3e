"""Chunk states computed on demand, so tracing memory does not grow with the number of prompts.

`LazyStates` is a read-only sequence of `State`s, one per chunk. Nothing heavy is kept: each
access to `states[i]` (or each step of iterating) returns a fresh `LazyState` whose tensors are
computed on first use and freed with the object. Only the chunks (token ids) and each chunk's
metric `[B]` stay in memory across passes, so the peak is one chunk's dense
`[B, T, d_sae]` tensors plus the model's activations, whatever the number of prompts.

    f, err                        one no-grad spliced forward (clean values; enough to build
                                  ablation targets or masks)
    metric, grad_*, delta_*       the full `ablation.prepare` of that chunk (forward, backward,
                                  targets)

The values equal those of `ablation.prepare` on the same chunks (same chunk index -> same
resample seed), so every consumer of a `list[State]` gets the same results.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..replacement import ReplacementModel
from . import ablation as ab
from .ablation import Chunk, State

_FULL = ("metric", "grad_f", "grad_err", "delta_f", "delta_err")


class LazyState:
    """A `State` of one chunk whose tensors are computed on first access (see module doc)."""

    def __init__(self, owner: "LazyStates", index: int):
        self._owner, self._index = owner, index
        self.chunk: Chunk = owner.chunks[index]
        self._full: State | None = None
        self._clean: dict | None = None

    def _state(self) -> State:
        if self._full is None:
            self._full = self._owner.compute(self._index)
            self._clean = None
        return self._full

    def __getattr__(self, name: str):
        if name == "metric" and self._full is None:
            cached = self._owner.metrics[self._index]
            if cached is not None:
                return cached
        if name in _FULL:
            return getattr(self._state(), name)
        if name in ("f", "err"):
            if self._full is not None:
                return getattr(self._full, name)
            if self._clean is None:
                with torch.no_grad():
                    self._clean = ab.values(self._owner.rm, self.chunk.clean)
            return {h: v[0 if name == "f" else 1] for h, v in self._clean.items()}
        raise AttributeError(name)


class LazyStates(Sequence):
    """`Sequence[State]` over `chunks`, each state recomputed when used (see module doc)."""

    def __init__(self, rm: ReplacementModel, chunks: Sequence[Chunk], ablation: str, means=None,
                 seed: int = 0):
        self.rm, self.chunks, self.ablation, self.means, self.seed = rm, list(chunks), ablation, \
            means, seed
        self.metrics: list[torch.Tensor | None] = [None] * len(self.chunks)

    def compute(self, i: int) -> State:
        """The full state of chunk `i` (as `ablation.prepare` computes it)."""
        st = ab.prepare(self.rm, [self.chunks[i]], self.ablation, self.means, self.seed + i)[0]
        self.metrics[i] = st.metric
        return st

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return LazyState(self, i)
