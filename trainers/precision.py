"""Compute precision of the SAE training step: `auto`, `fp32` or `bf16`.

`bf16` runs the step's dense matmuls (TopK's selecting matmul and aux-k, BatchTopK's encoder
and decoder) in bfloat16 through `torch.autocast`, with the parameters, the Adam state and
the losses kept in float32 (fp32 master weights). `auto` picks bf16 where the hardware has a
fast bf16 matmul — a CUDA device with native bf16 (compute capability ≥ 8.0), or an x86 CPU
with AMX-BF16 or AVX512-BF16 — and fp32 elsewhere.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from saecircuits.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """True when /proc/cpuinfo lists AMX-BF16 or AVX512-BF16 (oneDNN then runs bf16 GEMMs natively)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def has_fast_bf16(device: torch.device | str) -> bool:
    """Whether `device` multiplies bf16 matrices markedly faster than fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return cpu_has_fast_bf16()
    return False


def resolve(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The step's matmul dtype for `precision` on `device`: torch.bfloat16, or None (float32)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return torch.bfloat16 if has_fast_bf16(device) else None
    return torch.bfloat16 if precision == "bf16" else None


def matmuls_in(dtype: torch.dtype | None, device: torch.device | str):
    """Context: autocast matmuls to `dtype` on `device` (a no-op for None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
