"""Shared fixtures: the real SmolLM2 (once per session) and tiny random models per family."""
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
torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

FAMILIES = ("llama", "gpt2", "gpt_neox", "gemma2", "gemma3_text", "qwen2", "qwen3", "mistral")


@pytest.fixture(scope="session")
def smol():
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct."""
    from saecircuits import load_model

    return load_model(device="cpu")


def _tiny_config(family: str, vocab: int):
    import transformers as tf

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=vocab, n_embd=64, n_layer=3, n_head=4, n_positions=128)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                                num_hidden_layers=3, num_attention_heads=4,
                                max_position_embeddings=128)
    cls = {"llama": tf.LlamaConfig, "gemma2": tf.Gemma2Config, "gemma3_text": tf.Gemma3TextConfig,
           "qwen2": tf.Qwen2Config, "qwen3": tf.Qwen3Config, "mistral": tf.MistralConfig}[family]
    if family.startswith("gemma"):
        common["head_dim"] = 16
    return cls(**common)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, smol):
    """Factory: family -> local directory holding a tiny random model + SmolLM2's tokenizer."""
    from transformers import AutoModelForCausalLM

    made: dict[str, Path] = {}
    tok = smol[1]

    def make(family: str) -> Path:
        if family not in made:
            folder = tmp_path_factory.mktemp(f"tiny-{family}")
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(_tiny_config(family, len(tok)))
            model.save_pretrained(folder)
            tok.save_pretrained(folder)
            made[family] = folder
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
