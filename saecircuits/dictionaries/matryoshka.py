"""Matryoshka TopK (Bussmann et al. 2025; Nabeshima 2024): TopK whose latents are ordered so that
every prefix of them is a dictionary of its own.

Inference is TopK. Training sums the FVU of the reconstructions that use only the first m
latents, for m in nested prefix sizes (default d_sae/8, /4, /2, all), plus TopK's aux-k: early
latents learn general features, later ones specialise.
"""
from __future__ import annotations

import torch
from torch import nn

from .kernels import sparse_topk
from .registry import register
from .topk import AUX_ALPHA, TopK, aux_k
from .training import StepInput, StepOutput, fvu

PREFIX_FRACTIONS = (1 / 8, 1 / 4, 1 / 2, 1.0)


@register
class MatryoshkaTopK(TopK):
    name = "matryoshka_topk"
    foreign = ("matryoshka_topk", "MatryoshkaTopK", "MatryoshkaBatchTopKSAE")

    def prefixes(self) -> list[int]:
        fractions = self.extra.get("prefix_fractions", PREFIX_FRACTIONS)
        return sorted({max(1, int(round(f * self.cfg.d_sae))) for f in fractions} | {self.cfg.d_sae})

    def loss(self, batch: StepInput) -> StepOutput:
        x, y = batch.x, batch.y
        x_c = self.encoder_input(x)
        vals, idx = sparse_topk(self.W_enc.T, self.b_enc, x_c, self.cfg.k, batch.compute_dtype)
        base = self.b_dec + self.skip_term(x)
        total, terms, y_hat = 0.0, {}, None
        for m in self.prefixes():
            y_hat = nn.functional.embedding_bag(idx, self.W_dec, per_sample_weights=vals * (idx < m),
                                                mode="sum") + base
            err = fvu(y, y_hat)
            total = total + err
            terms[f"fvu_{m}"] = err.item()
        aux = aux_k(self, batch, x_c, y - y_hat)
        fired = torch.unique(idx[vals > 0])
        l0 = float((vals > 0).sum()) / x.shape[0]
        return StepOutput(total + AUX_ALPHA * aux, terms[f"fvu_{self.cfg.d_sae}"], l0, fired,
                          {"aux": aux.item(), **terms})
