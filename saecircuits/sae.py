"""Sparse autoencoders: one `SAE` module for every architecture, native save/load, `SAESet`.

    pre = (x - b_dec) @ W_enc + b_enc                      [..., d_sae]
    f   = act(pre)   relu | topk (k largest, ReLU'd) | jumprelu / batchtopk (pre * (pre > θ))
    x̂   = f @ W_dec + b_dec                                [..., d_in]

Native directory: `cfg.json` + `sae.safetensors` with `W_enc [d_in, d_sae]`, `b_enc [d_sae]`,
`W_dec [d_sae, d_in]`, `b_dec [d_in]` and `threshold [d_sae]` for jumprelu/batchtopk.
An activation-normalisation scale used in training is folded into the weights at save.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from . import architectures
from .errors import ConfigError, HookPointError, SAEFormatError, ShapeError
from .fileio import read_safetensors, write_json, write_safetensors

ARCHITECTURES = architectures.NAMES
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64}
CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae.safetensors"


@dataclass
class SAEConfig:
    """Everything needed to rebuild an SAE besides its weights.

    architecture: relu | topk | batchtopk | jumprelu.
    k: number of active latents (topk; batchtopk's mean L0 target). None otherwise.
    hook: hook-point name the SAE reads (e.g. "resid.10").
    normalization_scale: factor the training inputs were multiplied by (already folded in
        the saved weights; kept for the record).
    metadata: training facts (tokens, corpus, hyper-parameters, metrics, ...).
    """

    architecture: str
    d_in: int
    d_sae: int
    k: int | None = None
    hook: str = ""
    model_name: str = ""
    dtype: str = "float32"
    normalization_scale: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"unknown SAE architecture {self.architecture!r}; "
                              f"expected one of {', '.join(ARCHITECTURES)}")
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"SAE {name} must be a positive integer, got {value!r}")
        if architectures.REGISTRY[self.architecture].uses_k:
            if not isinstance(self.k, int) or isinstance(self.k, bool) or not 0 < self.k <= self.d_sae:
                raise ConfigError(f"SAE k must be an integer in 1..d_sae={self.d_sae} for "
                                  f"{self.architecture}, got {self.k!r}")
        if self.dtype not in _DTYPES:
            raise ConfigError(f"unknown SAE dtype {self.dtype!r}; expected one of {list(_DTYPES)}")
        scale = self.normalization_scale
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                                  or not math.isfinite(scale) or scale <= 0):
            raise ConfigError(f"SAE normalization_scale must be null or a finite number > 0, "
                              f"got {scale!r}")
        if not isinstance(self.metadata, dict):
            raise ConfigError(f"SAE metadata must be a JSON object, got {self.metadata!r:.60}")
        if self.hook is not None and not isinstance(self.hook, str):
            raise ConfigError(f"SAE hook must be a string or null, got {self.hook!r:.60}")

    @property
    def has_threshold(self) -> bool:
        return architectures.REGISTRY[self.architecture].has_threshold

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SAEConfig":
        if not isinstance(data, Mapping):
            raise SAEFormatError(f"SAE config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        missing = {"architecture", "d_in", "d_sae"} - set(data)
        if missing:
            raise SAEFormatError(f"SAE config lacks {sorted(missing)}")
        unknown = set(data) - known
        if unknown:
            raise SAEFormatError(f"SAE config has unknown keys {sorted(unknown)}")
        try:
            return cls(**dict(data))
        except ConfigError as err:
            raise SAEFormatError(str(err)) from err


class SAE(nn.Module):
    """A sparse autoencoder over `[..., d_in]` activations (any float dtype).

    Inputs are cast to the SAE's dtype and outputs back to the input's dtype.
    """

    def __init__(self, cfg: SAEConfig, device: torch.device | str | None = None):
        super().__init__()
        self.cfg = cfg
        dtype = _DTYPES[cfg.dtype]
        kw = {"device": device, "dtype": dtype}
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, **kw))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in, **kw))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, **kw))
        if cfg.has_threshold:
            self.threshold = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        else:
            self.register_parameter("threshold", None)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def random(cls, cfg: SAEConfig, seed: int = 0, device=None) -> "SAE":
        """Initialise as in the TopK paper: W_dec rows unit-norm·0.1, W_enc = W_decᵀ."""
        sae = cls(cfg, device=device)
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(cfg.d_sae, cfg.d_in, generator=gen)
        w = 0.1 * w / w.norm(dim=1, keepdim=True)
        with torch.no_grad():
            sae.W_dec.copy_(w)
            sae.W_enc.copy_(w.T)
        return sae

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    # -- forward ------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ShapeError(f"SAE input must be a floating-point tensor, got "
                             f"{getattr(x, 'dtype', type(x).__name__)}")
        if x.shape[-1] != self.cfg.d_in:
            raise ShapeError(f"SAE for {self.cfg.hook or 'this hook'} expects last dimension "
                             f"d_in={self.cfg.d_in}, got shape {tuple(x.shape)}")
        if x.device != self.device:
            raise ShapeError(f"SAE is on {self.device} but its input is on {x.device}; "
                             "move the SAE with .to(device)")

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """`[..., d_in] -> [..., d_sae]` encoder pre-activations (in the SAE's dtype)."""
        self._check_input(x)
        return (x.to(self.dtype) - self.b_dec) @ self.W_enc + self.b_enc

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """Sparse code from pre-activations `[..., d_sae]`."""
        arch = architectures.REGISTRY[self.cfg.architecture]
        return arch.activation(pre, self.cfg.k, self.threshold if arch.has_threshold else None)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """`[..., d_in] -> [..., d_sae]` feature activations (in the SAE's dtype)."""
        return self.activation(self.pre_activation(x))

    def decode(self, f: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """`[..., d_sae] -> [..., d_in]` reconstruction (cast to `dtype` if given)."""
        if f.shape[-1] != self.cfg.d_sae:
            raise ShapeError(f"SAE decode expects last dimension d_sae={self.cfg.d_sae}, "
                             f"got shape {tuple(f.shape)}")
        out = f.to(self.dtype) @ self.W_dec + self.b_dec
        return out if dtype is None else out.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[..., d_in] -> [..., d_in]` reconstruction in the input's dtype."""
        return self.decode(self.encode(x), dtype=x.dtype)

    # -- normalisation ------------------------------------------------------------------
    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make an SAE trained on `x * scale` act on raw `x` with identical features.

        pre = (x·s − b) W + c = (x − b/s)(sW) + c and x̂ = (f W_dec + b)/s.
        """
        if not math.isfinite(scale) or scale <= 0:
            raise ConfigError(f"normalisation scale must be finite and > 0, got {scale!r}")
        self.W_enc.mul_(scale)
        self.b_dec.div_(scale)
        self.W_dec.div_(scale)
        previous = self.cfg.normalization_scale or 1.0
        self.cfg.normalization_scale = previous * scale

    # -- persistence --------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        names = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if self.cfg.has_threshold else [])
        return {n: getattr(self, n).detach() for n in names}

    def save(self, folder: str | os.PathLike) -> Path:
        """Write `cfg.json` + `sae.safetensors` into `folder` (atomically, file by file)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_safetensors(folder / WEIGHTS_FILE, self.state_tensors())
        write_json(folder / CFG_FILE, self.cfg.to_dict())
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, device: torch.device | str | None = None) -> "SAE":
        """Load and validate a native SAE directory (keys, shapes, dtypes, finite values)."""
        folder = Path(folder)
        cfg_path, weights_path = folder / CFG_FILE, folder / WEIGHTS_FILE
        for path in (cfg_path, weights_path):
            if not path.is_file():
                raise SAEFormatError(f"SAE directory {str(folder)!r} lacks {path.name}")
        from .fileio import parse_json, read_text

        cfg = SAEConfig.from_dict(parse_json(read_text(cfg_path, "SAE config", SAEFormatError),
                                             str(cfg_path), SAEFormatError))
        _check_header(weights_path, cfg)  # shapes from the file's header before allocating
        try:
            tensors = read_safetensors(weights_path)
        except (SafetensorError, OSError, RuntimeError) as err:
            raise SAEFormatError(f"{weights_path} is not a readable safetensors file: {err}") from err
        sae = cls(cfg)
        expected = sae.state_tensors()
        missing, extra = set(expected) - set(tensors), set(tensors) - set(expected)
        if missing or extra:
            raise SAEFormatError(f"{weights_path}: missing tensors {sorted(missing)}, "
                                 f"unexpected tensors {sorted(extra)}")
        for name, ref in expected.items():
            got = tensors[name]
            if got.shape != ref.shape:
                raise SAEFormatError(f"{weights_path}: {name} has shape {tuple(got.shape)}, "
                                     f"expected {tuple(ref.shape)} from cfg.json")
            if got.dtype != ref.dtype:
                raise SAEFormatError(f"{weights_path}: {name} has dtype {got.dtype}, "
                                     f"cfg.json says {cfg.dtype}")
            if not torch.isfinite(got).all():
                raise SAEFormatError(f"{weights_path}: {name} contains NaN or inf values")
        with torch.no_grad():
            for name, value in tensors.items():
                getattr(sae, name).copy_(value)
        return sae.to(device) if device is not None else sae

    def extra_repr(self) -> str:
        k = f", k={self.cfg.k}" if self.cfg.k else ""
        return f"{self.cfg.architecture}, hook={self.cfg.hook!r}, d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}{k}"


def _check_header(path: Path, cfg: SAEConfig) -> None:
    """Compare the tensor shapes in a safetensors header with `cfg` (nothing is allocated)."""
    expected = {"W_enc": (cfg.d_in, cfg.d_sae), "b_enc": (cfg.d_sae,), "W_dec": (cfg.d_sae, cfg.d_in),
                "b_dec": (cfg.d_in,)}
    if cfg.has_threshold:
        expected["threshold"] = (cfg.d_sae,)
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 0 < size <= 100_000_000:
                raise ValueError(f"header size {size}")
            header = json.loads(fh.read(size))
        shapes = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise SAEFormatError(f"{path} is not a readable safetensors file: {err}") from None
    missing, extra = set(expected) - set(shapes), set(shapes) - set(expected)
    if missing or extra:
        raise SAEFormatError(f"{path}: missing tensors {sorted(missing)}, unexpected tensors {sorted(extra)}")
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise SAEFormatError(f"{path}: {name} has shape {shapes[name]}, expected {shape} from "
                                 f"cfg.json (d_in={cfg.d_in}, d_sae={cfg.d_sae})")


# (is_native, load_sae_set), registered by `saecircuits.formats` when it is imported. formats sits
# above this module (it builds SAEs), so it is loaded by name on first need, as a plugin.
_PEER_FORMATS: list = [None]


def _peer_formats():
    if _PEER_FORMATS[0] is None:
        import importlib

        importlib.import_module(f"{__package__}.formats")
    return _PEER_FORMATS[0]


class SAESet(Mapping[str, SAE]):
    """SAEs keyed by hook point. On disk: one subdirectory per hook point."""

    def __init__(self, saes: Mapping[str, SAE] | None = None):
        self._saes: dict[str, SAE] = {}
        for hook, sae in (saes or {}).items():
            if not isinstance(sae, SAE):
                raise ConfigError(f"SAESet value for {hook!r} is {type(sae).__name__}, not an SAE")
            self._saes[hook] = sae

    def __getitem__(self, hook: str) -> SAE:
        try:
            return self._saes[hook]
        except KeyError:
            raise HookPointError(f"no SAE at hook point {hook!r}; this set has "
                              f"{sorted(self._saes) or 'none'}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._saes)

    def __len__(self) -> int:
        return len(self._saes)

    def __repr__(self) -> str:
        return f"SAESet({', '.join(f'{h}: {s.extra_repr()}' for h, s in self._saes.items())})"

    def to(self, device=None, dtype=None) -> "SAESet":
        for sae in self._saes.values():
            sae.to(device=device, dtype=dtype)
        return self

    def requires_grad_(self, flag: bool) -> "SAESet":
        for sae in self._saes.values():
            sae.requires_grad_(flag)
        return self

    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        for hook, sae in self._saes.items():
            sae.save(folder / hook)
            if sae.cfg.hook != hook:  # the set's key names the hook: keep cfg.json consistent
                write_json(folder / hook / CFG_FILE, {**sae.cfg.to_dict(), "hook": hook})
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, model=None, hooks: list[str] | None = None,
             device=None, format: str = "auto", variant: str | None = None) -> "SAESet":
        """Load every SAE subdirectory of `folder` (or only `hooks`); check widths on `model`.

        format: "auto" (native sets load as before; peer files are detected), "native", or a
        peer format of `saecircuits.formats` (saelens, sparsify, dictionary_learning, gemmascope).
        variant: picks one SAE where a peer tree has several for a hook (e.g. "average_l0_41").
        """
        folder = Path(folder)
        if format != "native":
            is_native, load_sae_set = _peer_formats()
            if format != "auto" or not is_native(folder):
                saes = load_sae_set(folder, format=format, variant=variant, hooks=hooks)
                if device is not None:
                    saes.to(device)
                if model is not None:
                    saes.check(model)
                return saes
        if not folder.is_dir():
            raise SAEFormatError(f"SAE set directory {str(folder)!r} does not exist")
        found = sorted(p.parent.name for p in folder.glob(f"*/{CFG_FILE}"))
        if (folder / CFG_FILE).is_file():
            raise SAEFormatError(f"{str(folder)!r} is a single SAE, not a set; load it with SAE.load "
                                 "or put it in a subdirectory named after its hook point")
        if not found:
            raise SAEFormatError(f"SAE set directory {str(folder)!r} has no <hook>/{CFG_FILE}")
        wanted = hooks or found
        missing = [h for h in wanted if h not in found]
        if missing:
            raise SAEFormatError(f"SAE set {str(folder)!r} has no SAE for {missing}; it has {found}")
        saes = cls({h: SAE.load(folder / h, device=device) for h in wanted})
        for hook, sae in saes.items():
            if sae.cfg.hook and sae.cfg.hook != hook:
                raise SAEFormatError(f"{str(folder / hook / CFG_FILE)!r} says hook "
                                     f"{sae.cfg.hook!r} but lies in directory {hook!r}")
        if model is not None:
            saes.check(model)
        return saes

    def check(self, model) -> None:
        """Raise if a hook point is unknown to `model` or an SAE's d_in ≠ the hook's width."""
        from .hooks import resolve

        for hook, sae in self._saes.items():
            width = resolve(model, hook).width
            if sae.cfg.d_in != width:
                raise ShapeError(f"SAE at {hook!r} has d_in={sae.cfg.d_in} but the model's "
                                 f"{hook} has width {width}")
