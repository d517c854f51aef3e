"""The one precision policy (`saecircuits.precision`): decisions, bad inputs, and the dtypes
every entry point really multiplies in, with the hardware mocked to "no fast bf16" / "fast bf16".

The dtypes are read by a dispatch-mode probe that records the dtype of every matmul-like aten
op (below autocast, so it sees what autocast produced)."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from saecircuits import precision
from saecircuits.errors import ConfigError

aten = torch.ops.aten
MATMULS = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.matmul,
           aten._scaled_dot_product_flash_attention_for_cpu, aten._sparse_addmm,
           aten._embedding_bag, aten.sparse_sampled_addmm}
TEXTS = [f"Mary and John went to store number {i}. John gave a drink to Mary. (a + (b * {i}))" * 2
         for i in range(40)]


class MatmulDtypes(TorchDispatchMode):
    """Records the floating dtypes of the tensor arguments of every matmul-like op."""

    def __init__(self):
        super().__init__()
        self.seen: set[torch.dtype] = set()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in MATMULS:
            self.calls += 1
            for a in args:
                if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dim() >= 2:
                    self.seen.add(a.dtype)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def hardware(monkeypatch):
    """hardware(fast: bool): mock the CPU's bf16 speed; `auto` then decides from the mock."""

    def set_fast(fast: bool):
        monkeypatch.delenv(precision.ENV, raising=False)
        monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: 2.5 if fast else 0.02)
        precision.reset()

    yield set_fast
    precision.reset()


def test_decisions_follow_the_calibration_then_the_flags(hardware, monkeypatch):
    hardware(False)
    slow = precision.resolve("auto", "cpu")
    assert slow.dtype is None and slow.name == "fp32" and "0.02x" in slow.reason
    hardware(True)
    fast = precision.resolve("auto", "cpu")
    assert fast.dtype is torch.bfloat16 and fast.record() == {
        "precision": "bf16", "requested": "auto", "reason": fast.reason}
    assert precision.resolve("fp32", "cpu").dtype is None
    # no calibration possible: the CPU flags decide
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: None)
    for flags, want in ((frozenset({"avx2"}), None), (frozenset({"avx2", "amx_bf16"}), torch.bfloat16)):
        monkeypatch.setattr(precision, "_cpuinfo", lambda flags=flags: ("Some CPU", flags))
        precision.reset()
        assert precision.resolve("auto", "cpu").dtype is want


def test_environment_pins_auto(monkeypatch):
    monkeypatch.setenv(precision.ENV, "bf16")
    precision.reset()
    try:
        assert precision.resolve("auto", "cpu").dtype is torch.bfloat16
        monkeypatch.setenv(precision.ENV, "half")
        precision.reset()
        with pytest.raises(ConfigError, match="'half'"):
            precision.resolve("auto", "cpu")
    finally:
        monkeypatch.delenv(precision.ENV)
        precision.reset()


def test_forced_bf16_on_a_slow_cpu_warns_once_with_the_slowdown(hardware, capsys):
    hardware(False)
    got = precision.resolve("bf16", "cpu")
    precision.resolve("bf16", "cpu")   # the decision is cached: one warning line
    assert got.dtype is torch.bfloat16
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "about 50x slower" in err[0]


def test_bad_precisions_are_one_line_errors(monkeypatch):
    with pytest.raises(ConfigError, match=r"unknown precision 'fp16'; expected one of auto, fp32, bf16"):
        precision.resolve("fp16", "cpu")
    monkeypatch.setattr(precision, "supports_bf16", lambda device: False)
    precision.reset()
    try:
        with pytest.raises(ConfigError, match="'bf16' is not supported on cpu"):
            precision.resolve("bf16", "cpu")
    finally:
        precision.reset()


def test_calibration_is_cached_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("SAECIRCUITS_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(precision, "measure_cpu_bf16_speedup", lambda: calls.append(1) or 3.0)
    precision.reset()
    try:
        assert precision.cpu_bf16_speedup() == 3.0
        precision.reset()
        assert precision.cpu_bf16_speedup() == 3.0   # read back from the cache file
        assert len(calls) == 1 and (tmp_path / "precision.json").is_file()
    finally:
        precision.reset()


def test_real_calibration_measures_a_ratio():
    assert precision.measure_cpu_bf16_speedup(64) > 0


# -- every entry point, mocked slow vs fast ---------------------------------------------------
def _random_sae(hook, width, seed, k=4):
    from saecircuits.sae import SAE, SAEConfig

    return SAE.random(SAEConfig("topk", width, 4 * width, k=k, hook=hook), seed=seed)


def _entry_points(model, tok, tmp_path):
    """name -> callable running one entry point with precision "auto"."""
    from saecircuits import hooks
    from saecircuits.attribution import TraceConfig, trace_circuit
    from saecircuits.export.dashboards import collect_activations
    from saecircuits.interp.contexts import collect_hook_activations
    from saecircuits.steering import Intervention, steer
    from trainers import TrainConfig, evaluate_saes, train_saes
    from trainers.kl_finetune import KLFinetuneConfig, kl_finetune

    saes = {h: _random_sae(h, hooks.resolve(model, h).width, i)
            for i, h in enumerate(["resid.0", "resid.1"])}
    train_cfg = TrainConfig(hooks=["resid.0"], architecture="topk", k=4, expansion=2, tokens=248,
                            context=32, windows_per_block=8, model_batch=8, eval_tokens=0,
                            holdout=0.0, progress=False, out=str(tmp_path / "train"))
    return {
        "harvest+step": lambda: train_saes(model, tok, train_cfg, corpus=TEXTS),
        "evaluation": lambda: evaluate_saes(model, tok, saes, TEXTS, n_tokens=60, context=32,
                                            progress=False),
        "kl fine-tune": lambda: kl_finetune(model, tok, saes, KLFinetuneConfig(
            tokens=64, context=16, batch=2, progress=False), corpus=TEXTS),
        "edge pass": lambda: trace_circuit(model, tok, saes, "ioi", TraceConfig(
            n=2, top_k=4, edge_precision="auto", edge_eval=False, progress=False)),
        "dashboards": lambda: collect_activations(model, tok, saes, [("resid.0", 1)], TEXTS[:2],
                                                  context=16, progress=False),
        "contexts": lambda: collect_hook_activations(model, tok, "resid.1", TEXTS[:2], context=16,
                                                     progress=False),
        "steering": lambda: steer(model, saes, ["Mary and John"], [Intervention("resid.0", 1, "set", 2.0)],
                                  max_new_tokens=2, tokenizer=tok, precision="auto"),
    }


@pytest.mark.parametrize("fast", [False, True])
def test_every_entry_point_multiplies_in_the_policy_dtype(tiny, tmp_path, hardware, fast):
    model, tok = tiny
    hardware(fast)
    for name, run in _entry_points(model, tok, tmp_path / str(fast)).items():
        probe = MatmulDtypes()
        with probe:
            run()
        assert probe.calls > 0, name
        if fast:
            assert torch.bfloat16 in probe.seen, (name, probe.seen)
        else:
            assert probe.seen == {torch.float32}, (name, probe.seen)
        assert not torch.is_autocast_enabled("cpu"), name
