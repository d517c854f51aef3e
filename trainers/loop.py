"""The optimisation loop of one dictionary: Adam, LR schedule, decoder constraint, dead latents.

The dictionary (`saecircuits.dictionaries.TrainingDictionary`) defines the loss; `Trainer`
applies it step by step:

    lr(t)      linear warm-up over the first 1 % of steps, linear decay to 0 over the last 20 %
    step       loss -> backward -> (DDP: rank-averaged gradients) -> decoder-gradient projection
               -> Adam -> unit-norm decoder rows -> dead counters -> `after_step`
    dead       a latent is dead when it has not fired for `dead_tokens` tokens (aux-k uses it)
"""
from __future__ import annotations

import math

import torch

from saecircuits.dictionaries import Dictionary, DictionaryConfig, StepInput, TrainingDictionary

from . import distributed


def lr_factor(step: int, total: int, warmup: float = 0.01, decay: float = 0.2) -> float:
    """Linear warm-up over the first `warmup` of steps, linear decay to 0 over the last `decay`."""
    warm = max(1, int(warmup * total))
    tail = max(1, int(decay * total))
    return min(1.0, (step + 1) / warm, max(0.0, (total - step) / tail))


def _fused_adam_ok(param: torch.Tensor) -> bool:
    """torch's fused Adam runs on CPU (torch >= 2.4) and CUDA for floating-point parameters."""
    return param.device.type in ("cpu", "cuda") and param.is_floating_point()


def default_lr(cls: type[TrainingDictionary], d_sae: int) -> float:
    """The architecture's learning rate scaled by 1/sqrt(d_sae / 16384) for wide dictionaries."""
    return cls.default_lr / math.sqrt(max(1.0, d_sae / 16384))


class Trainer:
    """Trains one `TrainingDictionary` (see the module doc).

    cfg: the dictionary's config; total_steps: steps of the whole run (the schedule); seed:
    its initial weights; dead_tokens: the dead-latent window; lr: None for `default_lr`;
    sparsity / k_aux / extra: the loss's hyper-parameters (`prepare_training`).
    """

    def __init__(self, cfg: DictionaryConfig, total_steps: int, seed: int = 0,
                 dead_tokens: int = 1_000_000, device: torch.device | str = "cpu",
                 lr: float | None = None, sparsity: float | None = None, k_aux: int | None = None,
                 compute_dtype: torch.dtype | None = None, **extra):
        dic = Dictionary(cfg)
        if not isinstance(dic, TrainingDictionary):
            raise TypeError(f"architecture {cfg.architecture!r} has no training loss")
        dic.init_parameters(seed)
        dic.to(device)
        dic.prepare_training(total_steps, seed=seed, sparsity=sparsity, k_aux=k_aux, **extra)
        self.dictionary: TrainingDictionary = dic
        self.total_steps, self.dead_tokens = total_steps, dead_tokens
        self.compute_dtype = compute_dtype
        self.lr = lr if lr is not None else default_lr(type(dic), cfg.d_sae)
        self.since_fired = torch.zeros(cfg.d_sae, dtype=torch.int64, device=device)
        self.fire_count = torch.zeros(cfg.d_sae, dtype=torch.int64, device=device)
        self.initialised = False
        # fused: one pass per parameter, no [d_sae, d_in] temporaries (the same update rule)
        self.optim = torch.optim.Adam(dic.parameters(), lr=self.lr, betas=(0.9, 0.999),
                                      fused=_fused_adam_ok(dic.W_enc))

    def dead_mask(self) -> torch.Tensor:
        return self.since_fired >= self.dead_tokens

    def step(self, x: torch.Tensor, y: torch.Tensor, step: int) -> dict[str, float]:
        """One optimisation step on normalised `x [B, d_in]` -> `y [B, d_out]`; returns stats."""
        dic = self.dictionary
        if not self.initialised:
            mean = y.mean(0)
            distributed.mean_([mean])
            dic.init_from_data(mean)
            self.initialised = True
        for group in self.optim.param_groups:
            group["lr"] = self.lr * lr_factor(step, self.total_steps)
        self.optim.zero_grad(set_to_none=True)
        batch = StepInput(x=x, y=y, step=step, total_steps=self.total_steps, dead=self.dead_mask(),
                          compute_dtype=self.compute_dtype)
        out = dic.loss(batch)
        out.loss.backward()
        fired = out.fired
        if distributed.active():  # DDP: every rank applies the rank-averaged gradient
            distributed.mean_([p.grad for p in dic.parameters() if p.grad is not None])
            mask = torch.zeros(dic.cfg.d_sae, dtype=torch.bool, device=x.device)
            mask[fired] = True
            fired = distributed.any_(mask).nonzero().squeeze(-1)
            out.fired = fired
        if dic.unit_decoder:
            dic.project_decoder_grad()
        self.optim.step()
        if dic.unit_decoder:
            dic.normalize_decoder()
        self.since_fired += x.shape[0] * distributed.world()[1]
        self.since_fired[fired] = 0
        self.fire_count[fired] += 1
        stats = {"fvu": out.fvu, "l0": out.l0, **out.terms,
                 "dead": float(self.dead_mask().float().mean())}
        dic.after_step(batch, out, self.optim)
        if distributed.active() and dic.data_dependent_updates:
            distributed.sync_from_main(dic, self.optim)
        return stats

    # -- checkpoints ---------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything a resumed run needs, as named tensors (dictionary, counters, Adam, RNG)."""
        out = {f"dict::{k}": v.detach() for k, v in self.dictionary.state_dict().items()}
        out["since_fired"], out["fire_count"] = self.since_fired, self.fire_count
        out["initialised"] = torch.tensor(self.initialised)
        for index, state in self.optim.state_dict()["state"].items():
            for key, value in state.items():
                out[f"opt::{index}::{key}"] = torch.as_tensor(value)
        if self.dictionary.rng is not None:
            out["rng"] = self.dictionary.rng.get_state()
        return {k: v.reshape(v.shape or (1,)) for k, v in out.items()}

    def param_groups(self) -> list[dict]:
        return self.optim.state_dict()["param_groups"]

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], param_groups: list[dict]) -> None:
        own = self.dictionary.state_dict()
        self.dictionary.load_state_dict({k: tensors[f"dict::{k}"].reshape(v.shape) for k, v in own.items()})
        self.since_fired.copy_(tensors["since_fired"])
        self.fire_count.copy_(tensors["fire_count"])
        self.initialised = bool(tensors["initialised"].reshape(()))
        opt_state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("opt::"):
                _, index, sub = key.split("::")
                opt_state.setdefault(int(index), {})[sub] = value.reshape(()) if sub == "step" else value
        self.optim.load_state_dict({"state": opt_state, "param_groups": param_groups})
        # moments take their parameter's memory layout (W_enc is stored transposed): the fused
        # Adam kernel walks parameter and moments as flat memory
        for param, state in self.optim.state.items():
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param).copy_(value)
        if self.dictionary.rng is not None:
            self.dictionary.rng.set_state(tensors["rng"])

    def required_keys(self) -> set[str]:
        return {f"dict::{k}" for k in self.dictionary.state_dict()} | {"since_fired", "fire_count"}

    def finished(self, scale_in: float, scale_out: float | None, model_name: str,
                 metadata: dict) -> Dictionary:
        """The trained dictionary in inference form on raw activations (scales folded in);
        the trainer must not step again."""
        dic = self.dictionary
        dic.finalize()
        dic.fold_scales(float(scale_in), None if scale_out is None else float(scale_out))
        dic.cfg.model_name = model_name
        dic.cfg.metadata = dict(metadata)
        dic.requires_grad_(False)
        return dic
