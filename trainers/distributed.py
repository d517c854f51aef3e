"""Data-parallel training under `torchrun` (DDP semantics, gloo on CPU / nccl on GPU).

Every rank harvests its own shard of the token windows (`windows[rank::world]`); after each
backward the SAE gradients are averaged over ranks, so all ranks apply the same update. State
that depends on the local batch (b_dec initialisation, input scales, which latents fired) is
reduced too, and trainers with data-dependent updates (resampling, running thresholds) take
rank 0's parameters, buffers and optimizer state after each step. Rank 0 alone writes files.

Single-process runs (no `WORLD_SIZE` > 1 in the environment) never touch torch.distributed.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env() -> None:
    """Start the process group when launched by torchrun with more than one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def active() -> bool:
    return world()[1] > 1


def mean_(tensors: list[torch.Tensor]) -> None:
    """In place: each tensor becomes its mean over ranks (one flat all-reduce)."""
    if not active() or not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    flat /= world()[1]
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t).to(t.dtype))
        offset += n


def any_(mask: torch.Tensor) -> torch.Tensor:
    """Element-wise OR of a bool mask over ranks."""
    if not active():
        return mask
    out = mask.to(torch.int32)
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out.bool()


def sync_from_main(module: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Copy rank 0's parameters, buffers and optimizer state onto every rank."""
    if not active():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)
        if optimizer is not None:
            for state in optimizer.state.values():
                for value in state.values():
                    if torch.is_tensor(value):
                        dist.broadcast(value, src=0)


def barrier() -> None:
    if active():
        dist.barrier()
