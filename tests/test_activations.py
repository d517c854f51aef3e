"""Activation harvesting: one trace, stop after the deepest hook, shuffle blocks, disk cache."""
from __future__ import annotations

import pytest
import torch

from saecircuits import hooks
from saecircuits.models import unwrap
from trainers import activations as act
from trainers.activations import ActivationCache, ActivationStream, harvest, windows_key
from tests.helpers import assert_model_clean


def _windows(n=8, ctx=16, seed=0):
    return torch.randint(5, 1000, (n, ctx), generator=torch.Generator().manual_seed(seed))


def test_harvest_matches_hidden_states_and_skips_later_layers(tiny):
    model, _ = tiny
    hf = unwrap(model)
    points = hooks.sort_by_forward_order(model, ["resid.1", "resid.0"])
    ids = _windows(2, 12)
    calls = []
    handle = hf.lm_head.register_forward_hook(lambda *a: calls.append(1))
    last = hf.model.layers[2].register_forward_hook(lambda *a: calls.append(2))
    try:
        got = harvest(model, points, ids)
    finally:
        handle.remove()
        last.remove()
    assert calls == []  # stopped after resid.1: layer 2 and lm_head never ran
    with torch.no_grad():
        ref = hf(input_ids=ids, output_hidden_states=True).hidden_states
    for layer in (0, 1):
        want = ref[layer + 1][:, 1:].reshape(-1, ref[0].shape[-1])
        assert got[f"resid.{layer}"].shape == want.shape == (2 * 11, 64)
        torch.testing.assert_close(got[f"resid.{layer}"], want)
    assert_model_clean(model)


def test_harvest_drops_padding_positions(tiny):
    model, _ = tiny
    points = hooks.sort_by_forward_order(model, ["resid.0"])
    ids = _windows(2, 10)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    assert harvest(model, points, ids, mask)["resid.0"].shape[0] == 9 + 9 - 3


def test_stream_is_deterministic_and_resumable(tiny):
    model, _ = tiny
    points = hooks.sort_by_forward_order(model, ["resid.0"])
    windows = _windows(16, 9)
    stream = ActivationStream(model, points, windows, batch=8, seed=3, windows_per_block=4)
    assert stream.batches_per_block == 4 and stream.n_blocks == 4
    full = [b["resid.0"] for b in stream.batches()]
    assert len(full) == 16
    resumed = [b["resid.0"] for b in stream.batches(start_step=6)]
    for a, b in zip(full[6:], resumed):
        assert torch.equal(a, b)
    # a block mixes tokens of all its windows (shuffled, not in window order)
    plain = harvest(model, points, windows[:4])["resid.0"]
    assert not torch.equal(torch.cat(full[:4]), plain)
    assert torch.allclose(torch.cat(full[:4]).sum(0), plain.sum(0), atol=1e-3)



def test_stream_uses_every_harvested_token_across_block_boundaries(tiny):
    """A block of 3 x 8 = 24 tokens is not a multiple of the batch (10): its remainder opens the
    next batch, so the batches are exactly the concatenated shuffled blocks, none dropped."""
    model, _ = tiny
    points = hooks.sort_by_forward_order(model, ["resid.0"])
    stream = ActivationStream(model, points, _windows(16, 9), batch=10, seed=1, windows_per_block=3)
    assert (stream.n_blocks, stream.steps_available, stream.blocks_for(7)) == (5, 12, 3)
    full = [b["resid.0"] for b in stream.batches()]
    assert len(full) == 12 and all(b.shape[0] == 10 for b in full)
    blocks = torch.cat([stream.block(i)["resid.0"] for i in range(5)])
    assert torch.equal(torch.cat(full), blocks[:120])
    for a, b in zip(full[5:], stream.batches(start_step=5)):  # resuming mid-block, mid-batch
        assert torch.equal(a, b["resid.0"])

def test_activation_cache_is_reused_without_the_model(tiny, tmp_path, monkeypatch):
    model, _ = tiny
    points = hooks.sort_by_forward_order(model, ["resid.0", "resid.2"])
    windows = _windows(8, 9)
    meta = {"model": "tiny", "hooks": ["resid.0", "resid.2"], "dtype": "bfloat16",
            "windows_key": windows_key(windows), "windows_per_block": 4}
    first = ActivationStream(model, points, windows, batch=8, windows_per_block=4,
                             cache=ActivationCache.open(tmp_path, meta))
    a = [b["resid.2"] for b in first.batches()]
    assert (tmp_path / "manifest.json").is_file() and len(list(tmp_path.glob("shard_*"))) == 2

    def no_model(*args, **kwargs):
        raise AssertionError("the model ran although the cache holds every block")

    monkeypatch.setattr(act, "harvest", no_model)
    second = ActivationStream(model, points, windows, batch=8, windows_per_block=4,
                              cache=ActivationCache.open(tmp_path, meta))
    b = [x["resid.2"] for x in second.batches()]
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    from saecircuits.errors import ConfigError

    with pytest.raises(ConfigError, match="windows_key"):
        ActivationCache.open(tmp_path, {**meta, "windows_key": "other"})


def test_non_finite_activations_name_the_hook(tiny, monkeypatch):
    model, _ = tiny
    points = hooks.sort_by_forward_order(model, ["resid.1"])
    real = act.harvest

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        out["resid.1"][3, 5] = float("nan")
        return out

    monkeypatch.setattr(act, "harvest", poisoned)
    stream = ActivationStream(model, points, _windows(4, 9), batch=8, windows_per_block=4)
    from saecircuits.errors import TrainingError

    with pytest.raises(TrainingError, match="resid.1"):
        next(stream.batches())
