"""`Dictionary`: the one weight layout, config and file format of every sparse dictionary.

A dictionary reads activations `x [..., d_in]` at its read site and writes `[..., d_out]` at its
write site. An SAE reads and writes one hook (`resid.10 -> resid.10`); a transcoder reads the
MLP input and writes the MLP output (`mlp_in.5 -> mlp.5`), optionally with a dense skip term:

    pre = (x − b_dec) W_enc + b_enc     (SAE: apply_b_dec_to_input)     [..., d_sae]
        =  x W_enc + b_enc              (transcoder)
    f   = activate(pre)                 one subclass per activation function
    ŷ   = f W_dec + b_dec (+ x W_skip)                                     [..., d_out]

Tensors (native file `sae.safetensors`, SAELens orientation): W_enc [d_in, d_sae] (stored with
its rows of latents contiguous, so training can gather latents), b_enc [d_sae], W_dec
[d_sae, d_out], b_dec [d_out], threshold [d_sae] (jumprelu / batchtopk), W_skip [d_in, d_out]
(skip transcoders). `cfg.json` holds `DictionaryConfig`. A normalisation scale used in
training is folded into the weights at save.

`Dictionary(cfg)` builds the registered class of `cfg.architecture` (`dictionaries.registry`);
`TrainingDictionary` adds the training loss (`loss(StepInput) -> StepOutput`), so the same
class is trained, saved, loaded and spliced.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from torch import nn

from .. import hooks
from ..errors import ConfigError, HookPointError, SAEFormatError, ShapeError
from ..fileio import parse_json, read_safetensors, read_text, write_json, write_safetensors
from .registry import REGISTRY, get

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}
CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae.safetensors"


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass
class DictionaryConfig:
    """Everything needed to rebuild a dictionary besides its weights.

    architecture: a registered name (`dictionaries.registry.NAMES`).
    d_in / d_sae: read-site width and number of latents; d_out: write-site width (None: d_in).
    k: active latents (topk; batchtopk's mean L0 target). None otherwise.
    hook: the read site (e.g. "resid.10", "mlp_in.5"); write_hook: the write site (None: the
        read site, i.e. an SAE; "mlp.5" for a transcoder).
    skip: a dense skip term W_skip [d_in, d_out] (skip transcoder).
    apply_b_dec_to_input: subtract b_dec before encoding (None: yes for SAEs, no for transcoders).
    normalization_scale: factor the training inputs were multiplied by (already folded into the
        saved weights; kept for the record); output_scale: the same for transcoder targets.
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
    write_hook: str | None = None
    d_out: int | None = None
    skip: bool = False
    apply_b_dec_to_input: bool | None = None
    output_scale: float | None = None

    def __post_init__(self) -> None:
        self.validate()

    # -- derived -------------------------------------------------------------------------
    @property
    def width_out(self) -> int:
        return self.d_out if self.d_out is not None else self.d_in

    @property
    def write_site(self) -> str:
        return self.write_hook or self.hook

    @property
    def is_transcoder(self) -> bool:
        return self.write_hook is not None and self.write_hook != self.hook

    @property
    def subtracts_b_dec(self) -> bool:
        if self.apply_b_dec_to_input is not None:
            return self.apply_b_dec_to_input
        return not self.is_transcoder

    @property
    def cls(self) -> type["Dictionary"]:
        return get(self.architecture)

    @property
    def has_threshold(self) -> bool:
        return self.cls.has_threshold

    def validate(self) -> None:
        if self.architecture not in REGISTRY:
            raise ConfigError(f"unknown dictionary architecture {self.architecture!r}; expected one of "
                              f"{', '.join(REGISTRY)}")
        for name in ("d_in", "d_sae"):
            if not _positive_int(getattr(self, name)):
                raise ConfigError(f"dictionary {name} must be a positive integer, got {getattr(self, name)!r}")
        if self.d_out is not None and not _positive_int(self.d_out):
            raise ConfigError(f"dictionary d_out must be a positive integer or null, got {self.d_out!r}")
        if REGISTRY[self.architecture].uses_k:
            if not _positive_int(self.k) or self.k > self.d_sae:
                raise ConfigError(f"dictionary k must be an integer in 1..d_sae={self.d_sae} for "
                                  f"{self.architecture}, got {self.k!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dictionary dtype {self.dtype!r}; expected one of {list(DTYPES)}")
        for name in ("normalization_scale", "output_scale"):
            scale = getattr(self, name)
            if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                                      or not math.isfinite(scale) or scale <= 0):
                raise ConfigError(f"dictionary {name} must be null or a finite number > 0, got {scale!r}")
        if not isinstance(self.metadata, dict):
            raise ConfigError(f"dictionary metadata must be a JSON object, got {self.metadata!r:.60}")
        for name in ("hook", "write_hook"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"dictionary {name} must be a string or null, got {value!r:.60}")
        if not isinstance(self.skip, bool):
            raise ConfigError(f"dictionary skip must be true or false, got {self.skip!r}")
        if self.skip and not self.is_transcoder:
            raise ConfigError("a skip term (skip=true) needs a transcoder: a write_hook other than "
                              f"the read hook {self.hook!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data) -> "DictionaryConfig":
        if not isinstance(data, dict):
            raise SAEFormatError(f"dictionary config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        missing = {"architecture", "d_in", "d_sae"} - set(data)
        if missing:
            raise SAEFormatError(f"dictionary config lacks {sorted(missing)}")
        unknown = set(data) - known
        if unknown:
            raise SAEFormatError(f"dictionary config has unknown keys {sorted(unknown)}")
        try:
            return cls(**dict(data))
        except ConfigError as err:
            raise SAEFormatError(str(err)) from err


class Dictionary(nn.Module):
    """A sparse dictionary over `[..., d_in]` activations (see the module doc).

    Subclasses (one per activation function) set `name`, `uses_k`, `has_threshold`, `foreign`
    (other libraries' names) and define `activate` (and `active_mask` when `f > 0` is not where
    ∂f/∂pre ≠ 0). Inputs are cast to the dictionary's dtype; `decode(dtype=)` casts back.
    """

    name: ClassVar[str] = ""
    uses_k: ClassVar[bool] = False
    has_threshold: ClassVar[bool] = False
    foreign: ClassVar[tuple[str, ...]] = ()

    def __new__(cls, cfg: DictionaryConfig | None = None, *args, **kwargs):
        if cls is Dictionary and isinstance(cfg, DictionaryConfig):
            cls = cfg.cls       # `Dictionary(cfg)` builds the architecture's own class
        return super().__new__(cls)

    def __init__(self, cfg: DictionaryConfig, device: torch.device | str | None = None):
        super().__init__()
        if type(self).name and cfg.architecture != type(self).name:
            raise ConfigError(f"{type(self).__name__} cannot hold a {cfg.architecture!r} dictionary")
        self.cfg = cfg
        kw = {"device": device, "dtype": DTYPES[cfg.dtype]}
        d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.width_out
        self.W_enc = nn.Parameter(torch.zeros(d_sae, d_in, **kw).T)   # latents' rows contiguous
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **kw))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_out, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d_out, **kw))
        if self.has_threshold:
            self.threshold = nn.Parameter(torch.zeros(d_sae, **kw))
        else:
            self.register_parameter("threshold", None)
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(d_in, d_out, **kw))
        else:
            self.register_parameter("W_skip", None)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def random(cls, cfg: DictionaryConfig, seed: int = 0, device=None) -> "Dictionary":
        """Initialise as in the TopK paper: W_dec rows unit-norm·0.1, W_enc = W_decᵀ (SAEs), or
        independent rows for a transcoder (d_in ≠ d_out possible)."""
        dic = Dictionary(cfg, device=device) if cls is Dictionary else cls(cfg, device=device)
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(cfg.d_sae, cfg.width_out, generator=gen)
        w = 0.1 * w / w.norm(dim=1, keepdim=True)
        with torch.no_grad():
            dic.W_dec.copy_(w)
            if cfg.width_out == cfg.d_in and not cfg.is_transcoder:
                dic.W_enc.copy_(w.T)
            else:
                e = torch.randn(cfg.d_sae, cfg.d_in, generator=gen)
                dic.W_enc.copy_((0.1 * e / e.norm(dim=1, keepdim=True)).T)
        return dic

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    # -- sites ----------------------------------------------------------------------------
    @property
    def read_sites(self) -> list[str]:
        return [self.cfg.hook]

    @property
    def write_sites(self) -> list[str]:
        return [self.cfg.write_site]

    @property
    def is_transcoder(self) -> bool:
        return self.cfg.is_transcoder

    def check_sites(self, model) -> tuple[hooks.HookPoint, hooks.HookPoint]:
        """(read site, write site) resolved on `model`; a HookPointError names a site the model
        lacks, a ShapeError a width that differs from d_in / d_out. The one width check."""
        c = self.cfg
        points = []
        for site, width, what in ((c.hook, c.d_in, "d_in"), (c.write_site, c.width_out, "d_out")):
            if points and site == c.hook:          # an SAE: one site, resolved once
                points.append(points[0])
                break
            try:
                hp = hooks.resolve(model, site)
            except HookPointError as err:
                raise HookPointError(f"the {c.architecture} dictionary {self.describe()} needs site "
                                     f"{site!r}, which the model lacks: {err}") from None
            if hp.width != width:
                raise ShapeError(f"the dictionary {self.describe()} has {what}={width} but the model's "
                                 f"{site!r} has width {hp.width}")
            points.append(hp)
        return points[0], points[1]

    def describe(self) -> str:
        c = self.cfg
        return f"{c.hook!r} -> {c.write_site!r}" if c.is_transcoder else f"at {c.hook!r}"

    # -- forward ------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ShapeError(f"dictionary input must be a floating-point tensor, got "
                             f"{getattr(x, 'dtype', type(x).__name__)}")
        if x.shape[-1] != self.cfg.d_in:
            raise ShapeError(f"dictionary reading {self.cfg.hook or 'this hook'} expects last dimension "
                             f"d_in={self.cfg.d_in}, got shape {tuple(x.shape)}")
        if x.device != self.device:
            raise ShapeError(f"dictionary is on {self.device} but its input is on {x.device}; "
                             "move it with .to(device)")

    def encode_pre(self, x: torch.Tensor) -> torch.Tensor:
        """`[..., d_in] -> [..., d_sae]` encoder pre-activations (in the dictionary's dtype)."""
        self.check_input(x)
        x = x.to(self.dtype)
        if self.cfg.subtracts_b_dec:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Sparse code `[..., d_sae]` from pre-activations (the architecture's formula)."""
        raise NotImplementedError

    mask_from_output: ClassVar[bool] = True   # active_mask needs only f (not pre)

    def active_mask(self, pre: torch.Tensor | None, f: torch.Tensor) -> torch.Tensor:
        """Bool `[..., d_sae]`: where ∂f/∂pre = 1 (elsewhere 0), at this point (`pre` may be
        None when `mask_from_output`)."""
        return f > 0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """`[..., d_in] -> [..., d_sae]` feature activations (in the dictionary's dtype)."""
        return self.activate(self.encode_pre(x))

    def decode(self, f: torch.Tensor, x: torch.Tensor | None = None,
               dtype: torch.dtype | None = None) -> torch.Tensor:
        """`[..., d_sae] -> [..., d_out]` output (cast to `dtype` if given). A skip transcoder
        needs its input `x` for the skip term."""
        if f.shape[-1] != self.cfg.d_sae:
            raise ShapeError(f"dictionary decode expects last dimension d_sae={self.cfg.d_sae}, "
                             f"got shape {tuple(f.shape)}")
        out = f.to(self.dtype) @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            if x is None:
                raise ShapeError(f"the skip transcoder at {self.cfg.hook!r} needs its input x to decode")
            out = out + x.to(self.dtype) @ self.W_skip
        return out if dtype is None else out.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[..., d_in] -> [..., d_out]` reconstruction / prediction in the input's dtype."""
        return self.decode(self.encode(x), x, dtype=x.dtype)

    # -- normalisation ------------------------------------------------------------------
    @torch.no_grad()
    def fold_scales(self, scale_in: float, scale_out: float | None = None) -> None:
        """Make a dictionary trained on `x·s_in -> y·s_out` act on raw `x -> y` with identical
        features: W_enc·s_in, (W_dec, b_dec)/s_out, W_skip·s_in/s_out (SAE: s_out = s_in, and
        pre = (x·s − b)W + c = (x − b/s)(sW) + c)."""
        scale_out = scale_in if scale_out is None else scale_out
        for s in (scale_in, scale_out):
            if not math.isfinite(s) or s <= 0:
                raise ConfigError(f"normalisation scale must be finite and > 0, got {s!r}")
        self.W_enc.mul_(scale_in)
        self.b_dec.div_(scale_out)
        self.W_dec.div_(scale_out)
        if self.W_skip is not None:
            self.W_skip.mul_(scale_in / scale_out)
        self.cfg.normalization_scale = (self.cfg.normalization_scale or 1.0) * scale_in
        if self.is_transcoder:
            self.cfg.output_scale = (self.cfg.output_scale or 1.0) * scale_out

    def fold_input_scale(self, scale: float) -> None:
        """SAE form of `fold_scales` (one scale for input and output)."""
        self.fold_scales(scale, scale)

    # -- persistence --------------------------------------------------------------------
    def tensor_names(self) -> list[str]:
        return list(expected_shapes(self.cfg))

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return expected_shapes(self.cfg)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, n).detach() for n in self.tensor_names()}

    def save(self, folder: str | os.PathLike) -> Path:
        """Write `cfg.json` + `sae.safetensors` into `folder` (atomically, file by file)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_safetensors(folder / WEIGHTS_FILE, {n: t.contiguous() for n, t in self.state_tensors().items()})
        write_json(folder / CFG_FILE, self.cfg.to_dict())
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, device: torch.device | str | None = None) -> "Dictionary":
        """Load and validate a native dictionary folder (keys, shapes, dtypes, finite values)."""
        folder = Path(folder)
        cfg_path, weights_path = folder / CFG_FILE, folder / WEIGHTS_FILE
        for path in (cfg_path, weights_path):
            if not path.is_file():
                raise SAEFormatError(f"dictionary folder {str(folder)!r} lacks {path.name}")
        cfg = DictionaryConfig.from_dict(parse_json(read_text(cfg_path, "dictionary config", SAEFormatError),
                                                    str(cfg_path), SAEFormatError))
        _check_header(weights_path, expected_shapes(cfg), cfg)  # before allocating anything
        dic = Dictionary(cfg)
        try:
            tensors = read_safetensors(weights_path)
        except (SafetensorError, OSError, RuntimeError) as err:
            raise SAEFormatError(f"{weights_path} is not a readable safetensors file: {err}") from err
        dic.load_tensors(tensors, str(weights_path), exact_dtype=True)
        return dic.to(device) if device is not None else dic

    def load_tensors(self, tensors: dict[str, torch.Tensor], source: str, exact_dtype: bool = False) -> None:
        """Copy `tensors` in after checking names, shapes, (dtypes) and finiteness."""
        expected = self.expected_shapes()
        missing, extra = set(expected) - set(tensors), set(tensors) - set(expected)
        if missing or extra:
            raise SAEFormatError(f"{source}: missing tensors {sorted(missing)}, unexpected tensors {sorted(extra)}")
        for name, shape in expected.items():
            got = tensors[name]
            if tuple(got.shape) != shape:
                raise SAEFormatError(f"{source}: {name} has shape {tuple(got.shape)}, expected {shape} "
                                     f"(d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}, d_out={self.cfg.width_out})")
            if exact_dtype and got.dtype != self.dtype:
                raise SAEFormatError(f"{source}: {name} has dtype {got.dtype}, cfg.json says {self.cfg.dtype}")
            if not torch.isfinite(got).all():
                raise SAEFormatError(f"{source}: {name} contains NaN or inf values")
        with torch.no_grad():
            for name, value in tensors.items():
                getattr(self, name).copy_(value.to(self.dtype))

    def extra_repr(self) -> str:
        c = self.cfg
        k = f", k={c.k}" if c.k else ""
        sites = f"{c.hook!r} -> {c.write_site!r}" if c.is_transcoder else f"hook={c.hook!r}"
        skip = ", skip" if c.skip else ""
        return f"{c.architecture}, {sites}, d_in={c.d_in}, d_sae={c.d_sae}{k}{skip}"


def expected_shapes(cfg: DictionaryConfig) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a dictionary with config `cfg` (the file format)."""
    c = cfg
    shapes = {"W_enc": (c.d_in, c.d_sae), "b_enc": (c.d_sae,), "W_dec": (c.d_sae, c.width_out),
              "b_dec": (c.width_out,)}
    if c.has_threshold:
        shapes["threshold"] = (c.d_sae,)
    if c.skip:
        shapes["W_skip"] = (c.d_in, c.width_out)
    return shapes


def _check_header(path: Path, expected: dict[str, tuple[int, ...]], cfg: DictionaryConfig) -> None:
    """Compare the tensor shapes in a safetensors header with `expected` (nothing is allocated)."""
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
                                 f"cfg.json (d_in={cfg.d_in}, d_sae={cfg.d_sae}, d_out={cfg.width_out})")


class ThresholdGated:
    """Mixin: the code keeps a pre-activation where it exceeds the per-latent `threshold`
    (JumpReLU, and BatchTopK at inference); ∂f/∂pre is 1 exactly there."""

    mask_from_output: ClassVar[bool] = False

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return pre * (pre > self.threshold).to(pre.dtype)

    def active_mask(self, pre: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return pre > self.threshold
