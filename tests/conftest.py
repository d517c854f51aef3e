"""Shared fixtures: the real SmolLM2 (once per session; slow tests only) and tiny random models
per family with a small tokenizer of their own (fast tests never load SmolLM2)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here; fail fast instead of retrying
# `auto` precision means fp32 in tests, whatever the CI machine's CPU (tests of the policy itself
# mock the hardware): results must not depend on where they run
os.environ.setdefault("SAECIRCUITS_PRECISION", "fp32")
# no progress bars on the captured stderr (a failure's stderr is its one error line); tests of the
# bars record them (`saecircuits.progress.record` counts undrawn bars too) or set it back to 1
os.environ.setdefault("SAECIRCUITS_PROGRESS", "0")
# OMP_NUM_THREADS, when set, wins (shared machines run the suite with one thread)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(4, os.cpu_count() or 1))))

from helpers import FAMILIES  # noqa: E402,F401 (tests import it from conftest)

SMOL_FIXTURES = ("smol", "smol_saes", "smol_saes_dir")


def pytest_runtest_setup(item):
    """A test that needs SmolLM2 must be marked slow: the fast suite never loads it."""
    if item.get_closest_marker("slow") is None:
        used = sorted(set(SMOL_FIXTURES) & set(getattr(item, "fixturenames", ())))
        if used:
            pytest.fail(f"{item.nodeid} uses {used} (SmolLM2) but is not marked "
                        "@pytest.mark.slow", pytrace=False)


@pytest.fixture(scope="session")
def private_cache(tmp_path_factory) -> Path:
    """A cache directory of this session ($SAECIRCUITS_CACHE of the fast tests)."""
    return tmp_path_factory.mktemp("saecircuits-cache")


@pytest.fixture(scope="session", autouse=True)
def _fast_session_cache(request, private_cache):
    """A session of fast tests only reads and writes no file of the user's cache
    (~/.cache/saecircuits: SmolLM2, token caches): $SAECIRCUITS_CACHE is private from the start,
    module fixtures included. (With slow tests selected, see `_no_smollm2_in_fast_tests`.)"""
    if any(item.get_closest_marker("slow") for item in request.session.items):
        yield
        return
    patch = pytest.MonkeyPatch()
    patch.setenv("SAECIRCUITS_CACHE", str(private_cache))
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _no_smollm2_in_fast_tests(request, monkeypatch, private_cache):
    """In a test not marked slow, loading the embedded SmolLM2 (`load_model()` with no name, or a
    CLI command without --model) fails the test, and $SAECIRCUITS_CACHE is private."""
    if request.node.get_closest_marker("slow") is not None:
        yield
        return
    from saecircuits import models

    monkeypatch.setenv("SAECIRCUITS_CACHE", str(private_cache))

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("a fast test loaded the embedded SmolLM2; mark it @pytest.mark.slow")

    monkeypatch.setattr(models, "default_model_dir", refuse)
    yield
    if calls:
        pytest.fail(f"{request.node.nodeid} loaded the embedded SmolLM2 but is not marked "
                    "@pytest.mark.slow", pytrace=False)


@pytest.fixture(scope="session")
def smol():
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct."""
    from saecircuits import load_model

    return load_model(device="cpu")


@pytest.fixture(scope="session")
def tiny_tok():
    """The tiny models' tokenizer (2,048-token byte-level BPE, `helpers.tiny_tokenizer`)."""
    from helpers import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny_tok):
    """Factory: family -> local directory holding a tiny random model + the tiny tokenizer."""
    from helpers import save_tiny_model

    made: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in made:
            made[family] = save_tiny_model(tmp_path_factory.mktemp(f"tiny-{family}"), family,
                                           tiny_tok)
        return made[family]

    return make


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """(model, tokenizer) of a tiny random Llama (fast tests)."""
    from saecircuits import load_model

    return load_model(str(tiny_dir("llama")), device="cpu")


@pytest.fixture(scope="session")
def smol_saes_dir(smol, tmp_path_factory):
    """Directory of a small TopK SAE set trained here on SmolLM2 with the default corpus:
    hooks resid.6, resid.16, resid.24; d_sae 1152, k 32, 61,200 tokens (`trainers.train_saes`)."""
    from trainers import TrainConfig, train_saes

    model, tok = smol
    out = tmp_path_factory.mktemp("smol-saes") / "saes"
    cfg = TrainConfig(hooks=["resid.6", "resid.16", "resid.24"], architecture="topk", k=32,
                      d_sae=1152, tokens=61_200, eval_tokens=0, out=str(out), progress=False,
                      windows_per_block=20, checkpoint_every=10_000)
    train_saes(model, tok, cfg)
    return out


@pytest.fixture(scope="session")
def smol_saes(smol_saes_dir):
    """`SAESet` of `smol_saes_dir` (trained SmolLM2 TopK SAEs at resid.6/16/24)."""
    from saecircuits.sae import SAESet

    return SAESet.load(smol_saes_dir)
