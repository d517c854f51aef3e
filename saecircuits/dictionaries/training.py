"""`TrainingDictionary`: a `Dictionary` that also defines its training loss.

The training loop (`trainers.train`) owns the optimiser, the schedule, dead-latent tracking,
DDP and checkpoints; the dictionary owns what is specific to its architecture:

    init_parameters(seed)       initial weights (unit-norm rows, W_enc = W_decᵀ for SAEs)
    prepare_training(...)       hyper-parameters and training-only state (buffers, parametrisations)
    init_from_data(mean_y)      b_dec = the targets' mean (rank-averaged by the loop)
    loss(StepInput) -> StepOutput
    after_step(...)             resampling, running thresholds
    finalize()                  training state -> the inference form that is saved

Inputs are normalised (`x·s_in`, `y·s_out`); the loop folds the scales in at the end.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .base import Dictionary


@dataclass
class StepInput:
    """One training batch.

    x: `[B, d_in]` normalised read-site activations; y: `[B, d_out]` normalised targets (x
    itself for an SAE); dead: bool `[d_sae]`, latents that have not fired for the loop's
    dead-token window; compute_dtype: matmul dtype of the step (None: fp32).
    """

    x: torch.Tensor
    y: torch.Tensor
    step: int
    total_steps: int
    dead: torch.Tensor
    compute_dtype: torch.dtype | None = None


@dataclass
class StepOutput:
    """What one loss evaluation returns.

    loss: the scalar to backpropagate; fvu: fraction of the targets' variance unexplained;
    l0: mean active latents per token; fired: long indices of latents active in the batch;
    terms: the loss's other named terms (aux, l1, l0 penalty, ...), as floats.
    """

    loss: torch.Tensor
    fvu: float
    l0: float
    fired: torch.Tensor
    terms: dict[str, float] = field(default_factory=dict)


def fvu(y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained of a batch `[B, d]` (1 − explained variance)."""
    total = (y - y.mean(0)).pow(2).sum().clamp_min(1e-12)
    return (y - y_hat).pow(2).sum() / total


class TrainingDictionary(Dictionary):
    """Base of every trainable architecture (see the module doc)."""

    default_lr: ClassVar[float] = 2e-3
    unit_decoder: ClassVar[bool] = True            # decoder rows kept at unit norm
    data_dependent_updates: ClassVar[bool] = False  # after_step changes weights from the batch

    def init_parameters(self, seed: int) -> None:
        """Unit-norm rows drawn from `seed`; an SAE starts with W_enc = W_decᵀ, a transcoder with
        its own decoder rows and a zero skip term."""
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(self.cfg.d_sae, self.cfg.d_in, generator=gen)
        w = w / w.norm(dim=1, keepdim=True)
        if self.is_transcoder or self.cfg.width_out != self.cfg.d_in:
            d = torch.randn(self.cfg.d_sae, self.cfg.width_out, generator=gen)
            d = d / d.norm(dim=1, keepdim=True)
        else:
            d = w
        with torch.no_grad():
            self.W_enc.copy_(w.T)
            self.W_dec.copy_(d)
            self.b_enc.zero_()
            self.b_dec.zero_()
            if self.W_skip is not None:
                self.W_skip.zero_()

    def prepare_training(self, total_steps: int, seed: int = 0, sparsity: float | None = None,
                         k_aux: int | None = None, **extra) -> None:
        """Keep the hyper-parameters; subclasses add their training-only state."""
        self.total_steps, self.seed = total_steps, seed
        self.sparsity = sparsity
        self.k_aux = k_aux if k_aux is not None else max(1, self.cfg.width_out // 2)
        self.extra = extra
        self.rng: torch.Generator | None = None   # set by architectures that sample (checkpointed)

    @torch.no_grad()
    def init_from_data(self, mean_y: torch.Tensor) -> None:
        """b_dec = the targets' mean (the loop averages it over ranks)."""
        self.b_dec.copy_(mean_y)

    def loss(self, batch: StepInput) -> StepOutput:
        raise NotImplementedError

    def after_step(self, batch: StepInput, out: StepOutput, optimizer: torch.optim.Optimizer) -> None:
        """Resampling, running thresholds (nothing by default)."""

    def finalize(self) -> None:
        """Turn training state into the saved inference form (nothing by default)."""

    # -- the decoder constraint -----------------------------------------------------------
    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove each decoder row's gradient component along the row (`g −= (g·w) w`, w = the
        unit row), in place without [d_sae, d_out] temporaries."""
        if self.W_dec.grad is None:
            return
        dec, grad = self.W_dec, self.W_dec.grad
        norm = dec.norm(dim=1, keepdim=True).clamp_min(1e-8)                 # [d_sae, 1]
        along = torch.einsum("ij,ij->i", grad, dec).unsqueeze(1) / norm      # g·w
        grad.addcmul_(dec, along / norm, value=-1.0)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    # -- shared pieces of the losses ----------------------------------------------------------
    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """x − b_dec for SAEs, x for transcoders: what W_enc multiplies."""
        return x - self.b_dec if self.cfg.subtracts_b_dec else x

    def skip_term(self, x: torch.Tensor) -> torch.Tensor | float:
        return x @ self.W_skip if self.W_skip is not None else 0.0
