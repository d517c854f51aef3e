"""SAE sets: dictionaries keyed by name, saved as one subfolder each, loaded from any format.

`SAE` and `SAEConfig` are the familiar names of `dictionaries.Dictionary` /
`DictionaryConfig` (one class per architecture; `SAE(cfg)` builds the class of
`cfg.architecture`):

    pre = (x - b_dec) @ W_enc + b_enc          [..., d_sae]   (transcoders: x @ W_enc + b_enc)
    f   = activate(pre)   relu | topk | batchtopk / jumprelu (pre · (pre > θ)) | ...
    x̂   = f @ W_dec + b_dec (+ x @ W_skip)      [..., d_out]

A set maps a name to a dictionary: an SAE's name is its hook point (`resid.10`), a transcoder's
its write site (`mlp.5`). On disk: one subfolder per name (`cfg.json` + `sae.safetensors`).
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from . import formats
from .dictionaries import CFG_FILE, WEIGHTS_FILE, Dictionary, DictionaryConfig, names
from .errors import ConfigError, HookPointError
from .fileio import write_json

SAE = Dictionary
SAEConfig = DictionaryConfig
ARCHITECTURES = names()
__all__ = ["SAE", "SAEConfig", "SAESet", "ARCHITECTURES", "CFG_FILE", "WEIGHTS_FILE"]


class SAESet(Mapping[str, Dictionary]):
    """Dictionaries keyed by name (an SAE's hook point, a transcoder's write site)."""

    def __init__(self, saes: Mapping[str, Dictionary] | None = None):
        self._saes: dict[str, Dictionary] = {}
        for name, dic in (saes or {}).items():
            if not isinstance(dic, Dictionary):
                raise ConfigError(f"SAESet value for {name!r} is {type(dic).__name__}, not a dictionary")
            self._saes[name] = dic
        kinds = {d.is_transcoder for d in self._saes.values()}
        if len(kinds) > 1:
            tcs = sorted(n for n, d in self._saes.items() if d.is_transcoder)
            raise ConfigError(f"a set mixes SAEs and transcoders ({', '.join(tcs)} are transcoders); "
                              "trace or splice one kind at a time")

    def __getitem__(self, name: str) -> Dictionary:
        try:
            return self._saes[name]
        except KeyError:
            raise HookPointError(f"no dictionary named {name!r}; this set has "
                                 f"{sorted(self._saes) or 'none'}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._saes)

    def __len__(self) -> int:
        return len(self._saes)

    def __repr__(self) -> str:
        return f"SAESet({', '.join(f'{h}: {s.extra_repr()}' for h, s in self._saes.items())})"

    @property
    def transcoders(self) -> bool:
        """Whether the set holds transcoders (it never mixes them with SAEs)."""
        return any(d.is_transcoder for d in self._saes.values())

    def to(self, device=None, dtype=None) -> "SAESet":
        for dic in self._saes.values():
            dic.to(device=device, dtype=dtype)
        return self

    def requires_grad_(self, flag: bool) -> "SAESet":
        for dic in self._saes.values():
            dic.requires_grad_(flag)
        return self

    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        for name, dic in self._saes.items():
            dic.save(folder / name)
            if not dic.is_transcoder and dic.cfg.hook != name:  # the name is the SAE's hook
                write_json(folder / name / CFG_FILE, {**dic.cfg.to_dict(), "hook": name})
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, model=None, hooks: list[str] | None = None,
             device=None, format: str = "auto", variant: str | None = None,
             hook: str | None = None) -> "SAESet":
        """Load a set (or one dictionary folder) of any format; check its sites on `model`.

        format: "auto" (detected), "native", or a peer format of `saecircuits.formats`
        (saelens, sparsify, dictionary_learning, gemmascope, circuit_tracer).
        hooks: keep only these names. variant: picks one dictionary where a peer tree has
        several for a hook (e.g. "average_l0_41"). hook: the hook point of a single folder whose
        files do not name one (e.g. an SAELens SAE built in code, without metadata.hook_name).
        """
        saes = cls(formats.load_dictionaries(folder, format=format, variant=variant, hooks=hooks,
                                             hook=hook))
        if device is not None:
            saes.to(device)
        if model is not None:
            saes.check(model)
        return saes

    def check(self, model) -> None:
        """Raise if a site is unknown to `model` or a width differs (`Dictionary.check_sites`)."""
        for dic in self._saes.values():
            dic.check_sites(model)


def load_sae_set(path, format: str = "auto", variant: str | None = None,
                 hooks: list[str] | None = None, hook: str | None = None) -> SAESet:
    """A set of any format (`SAESet.load` without a model)."""
    return SAESet.load(path, format=format, variant=variant, hooks=hooks, hook=hook)


def load_replacement(path, model=None, format: str = "auto"):
    """The dictionaries of a replacement model at `path`: a `CrossLayerTranscoder` (native folder
    with `clt.safetensors`, or circuit-tracer's W_enc_{l} / W_dec_{l} files), else a transcoder set
    (`SAESet.load`). Checked against `model` when given."""
    from pathlib import Path

    from .dictionaries.crosslayer import CLT_FILE, CrossLayerTranscoder
    from .formats.circuit_tracer import is_clt, load_clt

    folder = Path(path)
    clt = None
    if format in ("auto", "native") and (folder / CLT_FILE).is_file():
        clt = CrossLayerTranscoder.load(folder)
    elif format in ("auto", "circuit_tracer") and folder.is_dir() and is_clt(folder):
        clt = load_clt(folder)
    if clt is None:
        return SAESet.load(folder, model=model, format=format)
    if model is not None:
        clt.check_sites(model)
    return clt

