"""Aux-k loss (Gao et al. 2024) with its matmuls in a low precision (bf16 training path).

The loss functions live in `saecircuits.dictionaries.kernels` (shared by training and
inference code); this module keeps their public trainer-side names. TopK's step uses the fused
`kernels.topk_aux_loss`, which takes aux-k's pre-activations from the encoder's own GEMM.
"""
from __future__ import annotations

from saecircuits.dictionaries.kernels import aux_k_loss, aux_k_loss_lowp

__all__ = ["aux_k_loss", "aux_k_loss_lowp"]
