"""One implementation's SAE training step, timed on request (run inside that peer's venv).

Protocol: prints "ready" once set up; for every line "step" on stdin runs one full training
step (forward, backward, optimiser, decoder constraint, dead-latent bookkeeping) and prints
its wall time and this process's CPU time in seconds ("wall cpu"; on a busy machine the
CPU time leaves out the time the step waited for a core); exits on EOF. Every implementation
gets the same batch (seeded `torch.randn`, rows scaled to norm √d_in), the same dead set (the
first ⌈dead·d_sae⌉ latents count as dead every step, so aux-k always runs on them) and the
same thread count.

    python step_worker.py IMPL --batch 4096 --d-in 576 --d-sae 4608 --k 32 --dead 0.25 --threads 2
IMPL: ours-fp32 | ours-bf16 | sparsify-adam | sparsify-signum | saelens-adam | gemm-fp32 | gemm-bf16
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

AUX_ALPHA = 1 / 32  # ours and OpenAI's; sparsify's default is 0 (aux-k off): we turn it on


def batch(args) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.d_in, generator=gen)
    return x / x.norm(dim=1, keepdim=True) * args.d_in ** 0.5


def ours(args, x, n_dead, dtype):
    from saecircuits.dictionaries import DictionaryConfig
    from trainers.loop import Trainer

    tr = Trainer(DictionaryConfig("topk", args.d_in, args.d_sae, k=args.k, hook="resid.10"),
                 total_steps=10**6, dead_tokens=10**9, compute_dtype=dtype)
    state = {"i": 0}

    def step():
        tr.since_fired[:n_dead] = 2 * 10**9
        tr.step(x, x, state["i"])
        state["i"] += 1
    return step


def sparsify(args, x, n_dead, optimizer):
    """The body of `sparsify.Trainer.fit` for one batch (local FVU loss, no grad accumulation)."""
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(args.d_in, SparseCoderConfig(k=args.k, num_latents=args.d_sae), device="cpu",
                      dtype=torch.float32)
    if optimizer == "adam":
        opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / (args.d_sae / 2**14) ** 0.5)
    else:  # its default: schedule-free signum
        from schedulefree import ScheduleFreeWrapper
        from sparsify.sign_sgd import SignSGD
        opt = ScheduleFreeWrapper(SignSGD(sae.parameters(), lr=5e-3 / (args.d_sae / 2**14) ** 0.5),
                                  momentum=0.95)
        opt.train()
    sae.b_dec.data = x.mean(0)
    since = torch.zeros(args.d_sae, dtype=torch.long)

    def step():
        since[:n_dead] = 2 * 10**9
        dead = since > 10_000_000
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x, dead_mask=dead)
        did_fire = torch.zeros(args.d_sae, dtype=torch.bool)
        did_fire[out.latent_indices.flatten()] = True
        (out.fvu + AUX_ALPHA * out.auxk_loss + out.multi_topk_fvu / 8).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        since.add_(x.shape[0])
        since[did_fire] = 0
    return step


def saelens(args, x, n_dead):
    """The body of `SAETrainer._train_step` (forward, firing stats, backward, clip, Adam)."""
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=args.d_in, d_sae=args.d_sae, k=args.k,
                                                dtype="float32", device="cpu"))
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4, betas=(0.9, 0.999))
    since = torch.zeros(args.d_sae, dtype=torch.long)
    freq = torch.zeros(args.d_sae)
    state = {"i": 0}

    def step():
        since[:n_dead] = 2 * 10**9
        sae.train()
        out = sae.training_forward_pass(step_input=TrainStepInput(
            sae_in=x, coefficients={}, dead_neuron_mask=since > 1000, n_training_steps=state["i"],
            is_logging_step=False))
        with torch.no_grad():
            firing = out.feature_acts.bool().float()
            did_fire = firing.sum(-2).bool()
            since.add_(1)
            since[did_fire] = 0
            freq.add_(firing.sum(0))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        state["i"] += 1
    return step


def gemm(args, x, dtype):
    w = torch.randn(args.d_sae, args.d_in).to(dtype)
    xx = x.to(dtype)
    return lambda: xx @ w.T


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("impl")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--d-in", type=int, default=576)
    p.add_argument("--d-sae", type=int, default=4608)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--dead", type=float, default=0.25)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = batch(args)
    n_dead = int(round(args.dead * args.d_sae))
    step = {"ours-fp32": lambda: ours(args, x, n_dead, None),
            "ours-bf16": lambda: ours(args, x, n_dead, torch.bfloat16),
            "sparsify-adam": lambda: sparsify(args, x, n_dead, "adam"),
            "sparsify-signum": lambda: sparsify(args, x, n_dead, "signum"),
            "saelens-adam": lambda: saelens(args, x, n_dead),
            "gemm-fp32": lambda: gemm(args, x, torch.float32),
            "gemm-bf16": lambda: gemm(args, x, torch.bfloat16)}[args.impl]()
    step()  # warm-up (first-step allocations, lazy imports)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            continue
        start, cpu = time.perf_counter(), time.process_time()
        step()
        print(f"{time.perf_counter() - start:.6f} {time.process_time() - cpu:.6f}", flush=True)


if __name__ == "__main__":
    main()
