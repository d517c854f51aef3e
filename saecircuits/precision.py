"""The one precision policy: which dtype heavy matmuls run in, decided from the hardware.

Every place that chooses a compute dtype asks `resolve(precision, device)`: harvesting and
evaluation forwards, the training step (and its aux-k), KL fine-tuning, the edge pass,
replacement graphs, dashboards' context collection and the basis comparison.

    auto   bf16 only where it is measured faster:
             CUDA   compute capability >= 8.0 (native bf16 tensor cores)
             CPU    a one-off calibration (a 512 x 512 x 512 matmul timed in fp32 and bf16 at
                    the current thread count, cached per machine in the saecircuits cache) shows
                    bf16 at least `FAST_BF16_SPEEDUP` (1.5) x faster; if the calibration cannot
                    run, the CPU flags (AMX-BF16 / AVX512-BF16) decide
           fp32 everywhere else (e.g. AVX2-only CPUs, where a bf16 matmul was measured 63x
           slower than fp32 under autocast)
    fp32   always float32
    bf16   always bf16 autocast (fp32 weights, optimiser state and losses); on a CPU without
           fast bf16 one warning line says how much slower it will be; on a device with no bf16
           support at all it is an error

`SAECIRCUITS_PRECISION=fp32|bf16|auto` changes what `auto` means for the whole process (tests
pin it to fp32 so results do not depend on the CI machine's CPU).

Every output records its decision: `Precision.record()` -> {"precision": "bf16", "requested":
"auto", "reason": "..."} in train_config.json, metrics.json and summary.json.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")
FAST_BF16_SPEEDUP = 1.5       # bf16 must be at least this much faster than fp32 for `auto`
CALIBRATION_SIZE = 512
ENV = "SAECIRCUITS_PRECISION"
_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class Precision:
    """A resolved precision: `dtype` is torch.bfloat16 or None (float32)."""

    requested: str
    dtype: torch.dtype | None
    device: str
    reason: str

    @property
    def name(self) -> str:
        return "fp32" if self.dtype is None else "bf16"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return self.dtype

    def autocast(self):
        """Context running matmuls in `dtype` (a no-op for fp32)."""
        return matmuls_in(self.dtype, self.device)

    def record(self) -> dict:
        """What outputs' metadata records of this decision."""
        return {"precision": self.name, "requested": self.requested, "reason": self.reason}


def matmuls_in(dtype: torch.dtype | None, device: torch.device | str):
    """Context: autocast matmuls to `dtype` on `device` (a no-op for None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


# -- the hardware ---------------------------------------------------------------------------
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(CPU model name, flags) from /proc/cpuinfo; ('', {}) where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "", frozenset()
    model, flags = "", frozenset()
    for line in text.splitlines():
        if line.startswith("model name") and not model:
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = frozenset(line.split(":", 1)[1].split())
        if model and flags:
            break
    return model, flags


def cpu_flags_say_fast_bf16() -> bool:
    """Whether the CPU flags list AMX-BF16 or AVX512-BF16 (the fallback when calibration fails)."""
    return bool(_cpuinfo()[1] & set(_FLAGS))


def _calibration_file() -> Path:
    from .models import cache_dir

    return cache_dir() / "precision.json"


def _machine_key() -> str:
    model, flags = _cpuinfo()
    bf16 = ",".join(sorted(flags & set(_FLAGS)))
    return (f"{model or platform.machine()}|bf16-flags:{bf16 or 'none'}|torch {torch.__version__}"
            f"|threads {torch.get_num_threads()}")


def _time_matmul(dtype: torch.dtype, n: int, repeats: int = 3) -> float:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    a @ b  # warm-up (kernel selection, page faults)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


def measure_cpu_bf16_speedup(n: int = CALIBRATION_SIZE) -> float:
    """fp32 time / bf16 time of one `n x n x n` matmul on this CPU (> 1: bf16 is faster)."""
    return _time_matmul(torch.float32, n) / max(_time_matmul(torch.bfloat16, n), 1e-9)


_SPEEDUPS: dict[str, float | None] = {}


def cpu_bf16_speedup() -> float | None:
    """The calibrated bf16 speedup of this machine (cached on disk per CPU model, bf16 flags,
    torch version and thread count), or None when it cannot be measured."""
    key = _machine_key()
    if key not in _SPEEDUPS:
        _SPEEDUPS[key] = _calibrated(key)
    return _SPEEDUPS[key]


def _calibrated(key: str) -> float | None:
    path = _calibration_file()
    try:
        table = json.loads(path.read_text())
        if isinstance(table, dict) and isinstance(table.get(key), (int, float)):
            return float(table[key])
    except (OSError, ValueError):
        table = {}
    try:
        speedup = measure_cpu_bf16_speedup()
    except RuntimeError:          # a torch build without CPU bf16 matmuls
        return None
    try:
        from .fileio import write_json

        table = table if isinstance(table, dict) else {}
        write_json(path, {**table, key: round(speedup, 3)})
    except OSError:
        pass                       # a read-only cache: measure again next time
    return speedup


def has_fast_bf16(device: torch.device | str) -> tuple[bool, str]:
    """(whether bf16 matmuls are markedly faster than fp32 on `device`, why)."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "CUDA is not available"
        major, minor = torch.cuda.get_device_capability(device)
        return major >= 8, f"CUDA compute capability {major}.{minor}"
    if device.type == "cpu":
        speedup = cpu_bf16_speedup()
        if speedup is None:
            fast = cpu_flags_say_fast_bf16()
            return fast, f"CPU flags {'list' if fast else 'lack'} AMX-BF16/AVX512-BF16 (no calibration)"
        return (speedup >= FAST_BF16_SPEEDUP,
                f"CPU calibration: a {CALIBRATION_SIZE}^3 bf16 matmul runs {speedup:.2f}x the fp32 speed")
    return False, f"no bf16 policy for {device.type} devices"


def supports_bf16(device: torch.device | str) -> bool:
    """Whether `device` can run bf16 matmuls at all (however slowly)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return True
    return device.type in ("mps", "xpu")


def check(precision: str) -> str:
    """`precision` if it is a known name, else a one-line ConfigError listing the choices."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    return precision


def _warn_slow(device: torch.device, reason: str) -> None:
    speed = cpu_bf16_speedup() if device.type == "cpu" else None
    how = (f"about {1 / speed:.0f}x slower than fp32" if speed and speed < 1
           else "not faster than fp32")
    print(f"saecircuits: warning: bf16 forced on a {device.type} without fast bf16 matmuls ({reason}); "
          f"expect it to be {how}", file=sys.stderr)


@functools.lru_cache(maxsize=None)
def _resolve_cached(precision: str, device: str) -> Precision:
    dev = torch.device(device)
    requested = precision
    if precision == "auto":
        override = os.environ.get(ENV, "auto")
        if override not in PRECISIONS:
            raise ConfigError(f"{ENV}={override!r} is not a precision; expected one of "
                              f"{', '.join(PRECISIONS)}")
        if override != "auto":
            return Precision("auto", None if override == "fp32" else torch.bfloat16, str(dev),
                             f"{ENV}={override}")
        fast, reason = has_fast_bf16(dev)
        return Precision("auto", torch.bfloat16 if fast else None, str(dev), reason)
    if precision == "fp32":
        return Precision("fp32", None, str(dev), "forced")
    if not supports_bf16(dev):
        raise ConfigError(f"precision 'bf16' is not supported on {dev} (no bf16 matmuls); "
                          "use --precision fp32 or auto")
    fast, reason = has_fast_bf16(dev)
    if not fast:
        _warn_slow(dev, reason)
    return Precision("bf16", torch.bfloat16, str(dev), "forced" + ("" if fast else f"; {reason}"))


def resolve(precision: str, device: torch.device | str) -> Precision:
    """The `Precision` for a requested name on `device` (see the module doc)."""
    return _resolve_cached(check(precision), str(torch.device(device)))


def reset() -> None:
    """Forget cached decisions (tests that change the environment or mock the hardware)."""
    _SPEEDUPS.clear()
    _resolve_cached.cache_clear()
