"""Input-size limits checked before any allocation: prompt lengths against the model's context,
and steering magnitudes whose result would overflow."""
from __future__ import annotations

import math

from .errors import ConfigError, InterventionError

MAX_PROMPT_CHARS = 200_000   # longer text is refused before it is tokenized
MAX_TOKENS_DEFAULT = 8192    # context used when a model names none
# largest |edit| norm allowed: its square (a norm layer's variance) must stay finite in float32
MAX_EDIT_NORM = math.sqrt(3.4e38) / 16

_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "max_sequence_length",
                 "seq_length", "n_ctx")


def context_length(model) -> int:
    """Tokens the model accepts (its config's max_position_embeddings / n_positions / ...)."""
    hf = getattr(model, "_module", model)
    cfg = getattr(hf, "config", None)
    cfg = getattr(cfg, "get_text_config", lambda: cfg)() if cfg is not None else None
    for key in _CONTEXT_KEYS:
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return MAX_TOKENS_DEFAULT


def check_text_length(text: str, where: str, limit: int = MAX_PROMPT_CHARS) -> None:
    """Refuse a prompt of more than `limit` characters (before tokenizing it)."""
    if len(text) > limit:
        raise ConfigError(f"{where} has {len(text):,} characters; at most {limit:,} are accepted")


def check_tokens(model, n_tokens: int, where: str, extra: int = 0) -> None:
    """Refuse `n_tokens` (+ `extra` generated tokens) beyond the model's context."""
    limit = context_length(model)
    if n_tokens + extra > limit:
        plus = f" + {extra} new tokens" if extra else ""
        raise ConfigError(f"{where} has {n_tokens:,} tokens{plus}; the model's context is "
                          f"{limit:,} tokens")


def check_edit_magnitude(value: float, row_norm: float, what: str) -> None:
    """Refuse a steering value whose edit (value × decoder-row norm) is not finite or so large
    that the model's activations would overflow."""
    size = abs(float(value)) * float(row_norm)
    if not math.isfinite(size) or size > MAX_EDIT_NORM:
        raise InterventionError(f"steering value {value!r} in {what} is too large: the edit's norm "
                                f"{size:.3g} would overflow (limit {MAX_EDIT_NORM:.3g})")
