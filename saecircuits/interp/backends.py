"""Chat backends for the explainer and simulator, and an on-disk cache of their answers.

- `EndpointBackend`: any OpenAI-compatible `/chat/completions` endpoint (OpenAI, vLLM,
  llama.cpp server, ...) over urllib; base URL, model and key from arguments or the
  environment (SAECIRCUITS_OPENAI_BASE_URL / _MODEL / _API_KEY); retries with backoff,
  a minimum interval between requests.
- `LocalBackend`: a Hugging Face causal LM through transformers with its chat template;
  it can also read next-token probabilities, which the simulator uses (Bills et al.'s
  "all at once" expected-value simulation).
- `AnswerCache`: answers keyed by a hash of (backend, model, request), one JSON file written
  atomically after every new answer, so an interrupted run loses nothing it was told.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import SaecircuitsError
from ..fileio import write_json

ENV_BASE_URL = "SAECIRCUITS_OPENAI_BASE_URL"
ENV_MODEL = "SAECIRCUITS_OPENAI_MODEL"
ENV_API_KEY = "SAECIRCUITS_OPENAI_API_KEY"

Messages = list[dict[str, str]]


class ExplainerError(SaecircuitsError, RuntimeError):
    """The explainer backend failed: unreachable endpoint, bad answers, unusable model."""


class AnswerCache:
    """JSON file `{key: answer}`; `key(...)` hashes any JSON-able request description."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self.data: dict[str, Any] = {}
        self.hits = 0
        self._lock = threading.Lock()
        if self.path and self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ExplainerError(f"answer cache {str(self.path)!r} is corrupt: {err}") from err
            if not isinstance(self.data, dict):
                raise ExplainerError(f"answer cache {str(self.path)!r} is not a JSON object")

    @staticmethod
    def key(*parts: Any) -> str:
        blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, key: str) -> Any | None:
        value = self.data.get(key)
        if value is not None:
            self.hits += 1
        return value

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self.data[key] = value
            if self.path:
                write_json(self.path, self.data, indent=None)

    def __len__(self) -> int:
        return len(self.data)


class EndpointBackend:
    """OpenAI-compatible chat completions over HTTP (no SDK needed).

    Args:
        base_url: e.g. http://127.0.0.1:8080/v1 (the `/chat/completions` path is added).
        model: model name sent with each request.
        api_key: sent as a Bearer token when given.
        retries: extra tries after a failed request (connection errors, HTTP 429/5xx).
        backoff: first wait in seconds, doubled on each retry (Retry-After is honoured).
        min_interval: minimum seconds between requests (rate limiting).
    """

    name = "endpoint"
    supports_logprobs = False

    def __init__(self, base_url: str | None = None, model: str | None = None,
                 api_key: str | None = None, *, timeout: float = 60.0, retries: int = 3,
                 backoff: float = 1.0, min_interval: float = 0.0,
                 sleep: Callable[[float], None] = time.sleep):
        self.base_url = (base_url or os.environ.get(ENV_BASE_URL) or "").rstrip("/")
        self.model = model or os.environ.get(ENV_MODEL) or ""
        self.api_key = api_key or os.environ.get(ENV_API_KEY) or ""
        if not self.base_url:
            raise ExplainerError(f"no endpoint URL: pass --base-url or set {ENV_BASE_URL}")
        if not self.base_url.startswith(("http://", "https://")):
            raise ExplainerError(f"endpoint URL {self.base_url!r} must start with http:// or https://")
        if not self.model:
            raise ExplainerError(f"no endpoint model: pass --explainer-model or set {ENV_MODEL}")
        if retries < 0 or timeout <= 0 or min_interval < 0 or backoff < 0:
            raise ExplainerError("retries, backoff and min_interval must be >= 0 and timeout > 0")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.min_interval, self.sleep = min_interval, sleep
        self._last = 0.0
        self.requests = 0

    @property
    def ident(self) -> str:
        return f"endpoint:{self.base_url}:{self.model}"

    def _wait_turn(self) -> None:
        if self.min_interval > 0:
            gap = self.min_interval - (time.monotonic() - self._last)
            if gap > 0:
                self.sleep(gap)
        self._last = time.monotonic()

    def chat(self, messages: Messages, max_tokens: int = 256, temperature: float = 0.0,
             prefix: str = "") -> str:
        """The assistant's reply text (`prefix` is not sent: chat endpoints cannot be made to
        continue a started answer). Raises ExplainerError after the retries are spent."""
        url = f"{self.base_url}/chat/completions"
        body = json.dumps({"model": self.model, "messages": messages, "max_tokens": max_tokens,
                           "temperature": temperature}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.sleep(self.backoff * 2 ** (attempt - 1))
            self._wait_turn()
            self.requests += 1
            try:
                req = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read().decode("utf-8", errors="replace")
            except urllib.error.HTTPError as err:
                last = f"HTTP {err.code} {err.reason}"
                if err.code == 429 or err.code >= 500:
                    after = err.headers.get("Retry-After") if err.headers else None
                    if after and after.replace(".", "", 1).isdigit():
                        self.sleep(min(float(after), 60.0))
                    continue
                raise ExplainerError(f"endpoint {url} refused the request: {last}") from err
            except (urllib.error.URLError, OSError, TimeoutError) as err:
                last = str(getattr(err, "reason", err))
                continue
            return _reply_text(raw, url)
        raise ExplainerError(f"endpoint {url} unreachable after {self.retries + 1} tries: {last}")


def _reply_text(raw: str, url: str) -> str:
    try:
        data = json.loads(raw)
        content = data["choices"][0]["message"]["content"]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
        raise ExplainerError(f"endpoint {url} sent no chat completion: "
                             f"{raw[:80]!r}") from err
    if not isinstance(content, str):
        raise ExplainerError(f"endpoint {url} sent a non-text message content")
    return content


class LocalBackend:
    """A Hugging Face causal LM with a chat template, run through transformers (greedy).

    Args:
        model: a local directory / hub id, or an already loaded HF model (with `tokenizer`).
        tokenizer: the tokenizer when `model` is a module.
    """

    name = "local"
    supports_logprobs = True

    def __init__(self, model: str | os.PathLike | torch.nn.Module | None = None,
                 tokenizer=None, device: str | None = None):
        if model is None or isinstance(model, (str, os.PathLike)):
            from ..models import load_model, model_name_of, unwrap

            wrapped, tokenizer = load_model(model, device=device)
            self.model_name = model_name_of(wrapped)
            model = unwrap(wrapped)
        else:
            model = getattr(model, "_module", model)
            self.model_name = getattr(model, "saecircuits_name", None) or getattr(
                model.config, "name_or_path", "") or type(model).__name__
            if tokenizer is None:
                raise ExplainerError("LocalBackend needs the tokenizer with a loaded model")
        if not getattr(tokenizer, "chat_template", None):
            raise ExplainerError(f"explainer model {self.model_name!r} has no chat template; "
                                 "use an instruct/chat model or an endpoint (--base-url)")
        self.model, self.tok = model, tokenizer
        self.device = next(model.parameters()).device
        self.n_params = sum(p.numel() for p in model.parameters())

    @property
    def ident(self) -> str:
        return f"local:{self.model_name}"

    @property
    def weak(self) -> bool:
        """Under a billion parameters: expect low explanation scores."""
        return self.n_params < 1_000_000_000

    def prompt_ids(self, messages: Messages, assistant_prefix: str = "") -> list[int]:
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tok(text + assistant_prefix, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def chat(self, messages: Messages, max_tokens: int = 256, temperature: float = 0.0,
             prefix: str = "") -> str:
        """Greedy reply; the answer is started with `prefix` (returned with it)."""
        ids = torch.tensor([self.prompt_ids(messages, prefix)], device=self.device)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                  do_sample=False, pad_token_id=pad)
        return prefix + self.tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    @torch.no_grad()
    def next_token_probs(self, ids: Sequence[int], positions: Sequence[int],
                         candidates: Sequence[int]) -> torch.Tensor:
        """Probabilities `[len(positions), len(candidates)]` of the candidate tokens as the
        next token after each position of `ids`, renormalised over the candidates."""
        return self.next_token_probs_many([(ids, positions)], candidates)[0]

    @torch.no_grad()
    def next_token_probs_many(self, prompts: Sequence[tuple[Sequence[int], Sequence[int]]],
                              candidates: Sequence[int]) -> list[torch.Tensor]:
        """`next_token_probs` for several `(ids, positions)` prompts at once: the token prefix
        they all share is run once and its key/value cache reused for each prompt's rest, and
        the output layer is applied at the asked positions only. Same numbers as separate
        full forwards (to float rounding), fewer FLOPs."""
        if not prompts:
            return []
        lists = [list(map(int, ids)) for ids, _ in prompts]
        shared = min(min(len(ids) for ids in lists),
                     min((min(p) for _, p in prompts if len(p)), default=0))
        for ids in lists[1:]:  # the longest common token prefix, ending before every position
            n = 0
            while n < shared and ids[n] == lists[0][n]:
                n += 1
            shared = n
        cand = torch.as_tensor(list(candidates), device=self.device)
        prefix_cache = None
        if shared >= 2 and len(prompts) > 1 and _accepts(self.model, "logits_to_keep"):
            cache_arg = "cache" if _accepts(self.model, "cache") else "past_key_values"
            out = self.model(input_ids=torch.tensor([lists[0][:shared]], device=self.device),
                             use_cache=True, logits_to_keep=1)
            prefix_cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        results = []
        for ids, (_, positions) in zip(lists, prompts):
            pos = torch.as_tensor(list(positions), dtype=torch.long, device=self.device)
            if not len(pos):
                results.append(torch.zeros((0, len(cand))))
                continue
            if prefix_cache is not None:
                rest = torch.tensor([ids[shared:]], device=self.device)
                logits = self.model(input_ids=rest, use_cache=True, logits_to_keep=pos - shared,
                                    **{cache_arg: copy.deepcopy(prefix_cache)}).logits[0]
            elif _accepts(self.model, "logits_to_keep"):
                logits = self.model(input_ids=torch.tensor([ids], device=self.device),
                                    logits_to_keep=pos).logits[0]
            else:
                logits = self.model(input_ids=torch.tensor([ids], device=self.device)).logits[0, pos]
            results.append(torch.softmax(logits.float()[:, cand], dim=-1).cpu())
        return results


def _accepts(model: torch.nn.Module, arg: str) -> bool:
    """Whether `model.forward` takes the keyword `arg` (newer transformers features)."""
    import inspect

    try:
        return arg in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def make_backend(kind: str, *, base_url: str | None = None, model: str | None = None,
                 api_key: str | None = None, retries: int = 3, min_interval: float = 0.0,
                 device: str | None = None, local_model=None, local_tokenizer=None):
    """`kind`: "endpoint" or "local" (None model -> the embedded SmolLM2)."""
    if kind == "endpoint":
        return EndpointBackend(base_url, model, api_key, retries=retries, min_interval=min_interval)
    if kind == "local":
        if local_model is not None and model is None:
            return LocalBackend(local_model, local_tokenizer)
        return LocalBackend(model, device=device)
    raise ExplainerError(f"unknown explainer backend {kind!r}; use 'endpoint' or 'local'")
