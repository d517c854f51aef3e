"""Small helpers shared by tests."""
from __future__ import annotations

from pathlib import Path

import torch

from saecircuits.models import unwrap

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
               "_forward_hooks_with_kwargs", "_backward_pre_hooks")


def assert_model_clean(model) -> None:
    """No hooks of ours (or anyone's but transformers' own output recorders) on the model."""
    for name, module in unwrap(model).named_modules():
        for attr in _HOOK_DICTS:
            for fn in getattr(module, attr, {}).values():
                if not isinstance(fn, bool):
                    owner = getattr(fn, "__module__", "") or ""
                    assert owner.startswith("transformers"), f"{name or 'model'} has a hook {fn}"


def bare_logits(model, tok, prompts) -> torch.Tensor:
    batch = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return unwrap(model)(**batch).logits


def byte_chars() -> list[str]:
    """GPT-2's printable stand-ins of the bytes 0..255 (byte-level BPE vocabularies use them)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


TINY_VOCAB = Path(__file__).parent / "fixtures" / "tiny_vocab.json"
# SmolLM2's chat template (ChatML), so chat-using code paths run on the tiny models too
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def tiny_tokenizer(vocab_file: Path = TINY_VOCAB):
    """A small byte-level BPE tokenizer (2,048 tokens) for the tiny test models.

    Laid out like SmolLM2's: GPT-2 byte-level pre-tokenizer, special tokens <|endoftext|> (unk),
    <|im_start|> (bos), <|im_end|> (eos and pad), no BOS added, a ChatML chat template. Every
    word of `vocab_file` (tests/fixtures/make_tiny_vocab.py) is one token, whole pre-tokens only
    (`ignore_merges`); any other text falls back to one token per byte.
    """
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(vocab_file.read_text(encoding="utf-8"))
    chars = byte_chars()
    words = ["".join(chars[b] for b in w.encode("utf-8")) for w in spec["words"]]
    vocab = {t: i for i, t in enumerate(spec["special"] + chars + words)}
    assert len(vocab) == len(spec["special"]) + len(chars) + len(words), "duplicate tokens"
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], ignore_merges=True))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<|endoftext|>",
                                  bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


FAMILIES = ("llama", "gpt2", "gpt_neox", "gemma2", "gemma3_text", "qwen2", "qwen3", "mistral")


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


def save_tiny_model(folder: Path, family: str, tok) -> Path:
    """Save a tiny random `family` model (3 layers, d_model 64, weights from seed 0) and `tok`
    into `folder`; returns `folder`."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_tiny_config(family, len(tok)))
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Writing model shards" bar would land in a test's capsys
    try:
        model.save_pretrained(folder)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    tok.save_pretrained(folder)
    return folder


ROOT = Path(__file__).resolve().parents[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a Python subprocess of a test: it imports this checkout's
    `saecircuits` and `trainers` (first on PYTHONPATH), not whatever copy is installed."""
    import os

    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}
