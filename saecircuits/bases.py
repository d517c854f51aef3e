"""Unit bases at a hook point, and the attribution-ranked basis comparison.

One `Basis` type serves the basis comparison (`compare-bases`, Cunningham et al. 2023 Fig. 3)
and the explainer (`saecircuits.interp`). A basis has coefficients `c = encode(x) [.., m]` and
decoder rows `dec [m, d]` with `x = mean + c @ dec` (+ an error term for an SAE):

    sae      c = sae.encode(x), dec = W_dec, error = x − x̂ (kept from the clean run)
    raw      c = x − mean (mean 0 unless fit data is given; "neurons" in interp), dec = I
    pca      c = (x − μ) V, dec = Vᵀ                  (orthonormal, by decreasing variance)
    ica      c = (x − μ) U, dec = U⁺                  (FastICA on whitened data, unit-norm rows)

Linear units fitted on data are oriented once so that their larger tail is positive (a unit
and its negative are the same direction; patching is unchanged by the sign), and
`activations(x) = relu(c)` is what the explainer shows (for an SAE: its features). PCA and ICA
are fitted here with torch only (one implementation each, no optional backend).

The attribution protocol (`compare_bases`, `--protocol attribution`): each unit j gets the
attribution `a_j = mean_prompts Σ_pos (∂m/∂x · dec_j) (c_patch,j − c_clean,j)` at the clean
point; units are ranked by their attribution toward the clean→patch change, and the clean
prompts run with `x = x_clean + Σ_{j∈top n} (c_patch,j − c_clean,j) dec_j` at every position but
each prompt's first token (the attention sink) and padding. `rank="prompt"` ranks units per
prompt. For each n it records the recovered fraction `(m̄_n − m̄_clean) / (m̄_patch − m̄_clean)`
and the paper's two measures: KL(edited ‖ counterfactual) of the next-token distribution at the
answer position (mean over prompts) and the edit magnitude (mean L2 distance between the clean
and the edited hook values over the real positions). The authors' own protocol, greedy backward
elimination, is `saecircuits.elimination`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

import nnsight
import torch
import torch.nn.functional as F

from . import hooks
from .errors import ConfigError, TaskError
from .progress import bar as progress_bar, status
from .replacement import logits_site
from .sae import SAE
from .splice import encode_inputs
from .tasks.base import Task
from .wrapping import model_device

BASES = ("sae", "raw", "pca", "ica")
DEFAULT_NS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
KL_TARGET = 0.25  # headline: units / edit needed to bring KL to ≤ this share of KL(clean ‖ patch)


@dataclass
class Basis:
    """Units at a hook: `encode(x [.., d]) -> c [.., m]`, decoder rows `dec [m, d]`.

    Linear bases keep `mean [d]` and `w [d, m]` (`c = (x − mean) @ w`; `params` stores them);
    an SAE basis keeps the SAE. `dec` of a linear basis rebuilt from `params` alone is the
    pseudo-inverse of `w`."""

    name: str
    mean: torch.Tensor | None = None
    w: torch.Tensor | None = None
    sae: SAE | None = None
    decoder: torch.Tensor | None = field(default=None, repr=False)
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.sae is None) == (self.w is None):
            raise ConfigError(f"basis {self.name!r} needs exactly one of an SAE or a linear map w")
        if self.w is not None:
            self.w = self.w.float()
            self.mean = torch.zeros(self.w.shape[0]) if self.mean is None else self.mean.float()

    @property
    def size(self) -> int:
        return int(self.sae.cfg.d_sae if self.sae is not None else self.w.shape[1])

    n_units = size

    @property
    def dec(self) -> torch.Tensor:
        """Decoder rows `[m, d]` (float32)."""
        if self.decoder is None:
            self.decoder = (self.sae.W_dec.detach().float() if self.sae is not None
                            else torch.linalg.pinv(self.w.double()).float())
        return self.decoder

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """Tensors that rebuild a linear basis (`linear_basis(name, **params)`); {} for an SAE."""
        return {} if self.sae is not None else {"mean": self.mean, "w": self.w}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Coefficients `[.., m]` (float32, on x's device)."""
        if self.sae is not None:
            with torch.no_grad():
                return self.sae.encode(x.to(self.sae.device, self.sae.dtype)).float().to(x.device)
        return (x.float() - self.mean.to(x.device)) @ self.w.to(x.device)

    def activations(self, x: torch.Tensor, units: Sequence[int] | None = None,
                    chunk: int = 4096) -> torch.Tensor:
        """`x [..., d] -> [..., len(units)]` unit activations relu(c) (float32, CPU)."""
        idx = None if units is None else torch.as_tensor(list(units), dtype=torch.long)
        if idx is not None and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.size):
            bad = [int(u) for u in idx if not 0 <= int(u) < self.size]
            raise ConfigError(f"{self.name} unit(s) {bad[:5]} out of range: the basis has "
                              f"{self.size} units")
        flat = x.reshape(-1, x.shape[-1])
        parts = []
        with torch.no_grad():
            for start in range(0, len(flat), chunk):
                a = torch.relu(self.encode(flat[start:start + chunk])).cpu()
                parts.append(a if idx is None else a[:, idx])
        width = self.size if idx is None else len(idx)
        out = torch.cat(parts) if parts else torch.zeros((0, width))
        return out.reshape(*x.shape[:-1], width)


# -- bases -------------------------------------------------------------------------------------
def sae_basis(sae: SAE) -> Basis:
    return Basis("sae", sae=sae, info={"d_sae": sae.cfg.d_sae, "architecture": sae.cfg.architecture})


def linear_basis(name: str, mean: torch.Tensor, w: torch.Tensor,
                 dec: torch.Tensor | None = None, info: dict | None = None) -> Basis:
    """Units `c = (x − mean) @ w`, w `[d, m]` (already oriented); dec `[m, d]` (default pinv(w))."""
    return Basis(name, mean=mean, w=w, decoder=None if dec is None else dec.float(), info=info or {})


def _check_fit_data(x: torch.Tensor, what: str, n_components: int | None = None) -> torch.Tensor:
    if x.dim() != 2:
        raise ConfigError(f"{what} needs activations of shape [n, d], got {tuple(x.shape)}")
    n, d = x.shape
    k = d if n_components is None else int(n_components)
    if not 1 <= k <= d:
        raise ConfigError(f"{what} needs 1 <= n_components <= d = {d}, got {k}")
    if n <= k:
        raise ConfigError(f"{what} needs more activations than components to fit: {n} "
                          f"activation(s) of width {d} for {k} components; raise --fit-tokens")
    if not torch.isfinite(x).all():
        raise ConfigError(f"{what}: the fit activations contain NaN/inf")
    return x.double()


def _oriented(name: str, mean: torch.Tensor, w: torch.Tensor, dec: torch.Tensor, fit: torch.Tensor,
              info: dict | None = None) -> Basis:
    """Flip units so that their larger tail (0.1 % / 99.9 % quantiles on `fit`) is positive."""
    proj = (fit.float() - mean.float()) @ w.float()
    if proj.numel() <= 16_000_000:
        hi, lo = proj.quantile(0.999, dim=0), proj.quantile(0.001, dim=0)
    else:
        hi, lo = proj.max(0).values, proj.min(0).values
    sign = torch.where(hi.abs() >= lo.abs(), 1.0, -1.0)
    return linear_basis(name, mean.float(), w.float() * sign, dec.float() * sign[:, None], info)


def raw_basis(d: int, fit: torch.Tensor | None = None, name: str = "raw") -> Basis:
    """The hook's own coordinates (for `resid.L`: the residual stream basis); centred and
    oriented on `fit [N, d]` when given ("neurons" in interp)."""
    eye = torch.eye(d)
    if fit is None:
        return linear_basis(name, torch.zeros(d), eye, eye)
    fit = _check_fit_data(fit, "the raw basis", 1).float()
    return _oriented(name, fit.mean(0), eye, eye, fit)


def neuron_basis(fit: torch.Tensor) -> Basis:
    return raw_basis(fit.shape[1], fit, name="neurons")


def _eigh_cov(x: torch.Tensor):
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / (x.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(cov)
    order = evals.argsort(descending=True)
    return mean, evals[order].clamp_min(0), evecs[:, order]


def pca_basis(acts: torch.Tensor, n_components: int | None = None) -> Basis:
    """PCA directions of `acts [N, d]` by decreasing variance (orthonormal; complete by default)."""
    x = _check_fit_data(acts, "PCA", n_components)
    k = x.shape[1] if n_components is None else int(n_components)
    mean, evals, evecs = _eigh_cov(x)
    V = evecs[:, :k]
    explained = evals / evals.sum().clamp_min(1e-30)
    return _oriented("pca", mean, V, V.T, x, {"explained_top16": float(explained[:16].sum())})


def _sym_decorrelate(w: torch.Tensor) -> torch.Tensor:
    """(W Wᵀ)^(-1/2) W."""
    s, u = torch.linalg.eigh(w.double() @ w.double().T)
    return ((u * s.clamp_min(1e-12).rsqrt()) @ u.T @ w.double()).to(w.dtype)


def fastica_unmixing(z: torch.Tensor, max_iter: int = 200, tol: float = 1e-4,
                     seed: int = 0) -> tuple[torch.Tensor, int, float]:
    """Symmetric FastICA with the logcosh contrast (Hyvärinen 1999) on whitened data `z [m, n]`.

    Returns (W [m, m] orthogonal with sources `W @ z`, iterations, last change)."""
    m, n = z.shape
    g = torch.Generator().manual_seed(seed)
    w = _sym_decorrelate(torch.randn(m, m, generator=g, dtype=torch.float64).to(z.dtype))
    lim, it = float("inf"), 0
    for it in range(1, max_iter + 1):
        gwx = torch.tanh(w @ z)
        w_new = _sym_decorrelate((gwx @ z.T) / n - (1 - gwx.pow(2)).mean(1, keepdim=True) * w)
        lim = float((torch.einsum("ij,ij->i", w_new, w).abs() - 1).abs().max())
        w = w_new
        if lim < tol:
            break
    return w, it, lim


def ica_basis(acts: torch.Tensor, n_components: int | None = None, max_iter: int = 200,
              seed: int = 0, *, tol: float = 1e-4, max_samples: int | None = None) -> Basis:
    """Independent directions of `acts [N, d]` (torch FastICA; whitening keeps the top
    `n_components` PCA directions, all by default, tiny eigenvalues floored at 1e-9 of the
    largest so that the complete basis decodes exactly). `max_samples`: fit on at most this
    many rows drawn at random (seeded). Each unmixing column has unit norm."""
    x = _check_fit_data(acts, "ICA", n_components)
    if max_samples is not None and len(x) > max_samples:
        rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:max_samples]
        x = _check_fit_data(x[rows.sort().values], "ICA", n_components)
    k = x.shape[1] if n_components is None else int(n_components)
    mean, evals, evecs = _eigh_cov(x)
    evals = evals[:k].clamp_min(evals[0] * 1e-9)
    whiten = evecs[:, :k] * evals.rsqrt()                # [d, k]: z = (x − μ) @ whiten
    z = ((x - mean) @ whiten).float()
    with status(f"fitting ICA ({z.shape[1]} components, at most {max_iter} iterations)"):
        w, iters, change = fastica_unmixing(z.T.contiguous(), max_iter, tol, seed)
    unmix = whiten @ w.double().T                        # [d, k]: c = (x − μ) @ unmix
    unmix = unmix / unmix.norm(dim=0, keepdim=True).clamp_min(1e-30)
    dec = torch.linalg.pinv(unmix)                       # [k, d]: x − μ = c @ dec (complete)
    return _oriented("ica", mean, unmix, dec, x, {"iterations": iters, "converged": change < tol,
                                                  "last_change": change})


# -- corpus activations ------------------------------------------------------------------------
def corpus_activations(model, tok, hook: str, n_tokens: int = 16384, corpus=None,
                       context: int = 128, seed: int = 0, batch: int = 16) -> torch.Tensor:
    """`[n_tokens, d]` float32 activations at `hook` on corpus windows (first token dropped).

    corpus: a `TokenCorpus`, any `trainers.corpus.load_documents` source, or None (the
    embedded default corpus's held-out documents, as `saecircuits eval` uses)."""
    from trainers.activations import harvest
    from trainers.corpus import TokenCorpus, default_corpus, load_corpus

    if not isinstance(n_tokens, int) or n_tokens < 1:
        raise ConfigError(f"fit tokens must be a positive integer, got {n_tokens!r}")
    if corpus is None:
        tc = default_corpus(tok).split(0.02, seed, min_holdout_tokens=n_tokens + n_tokens // 4)[1]
    elif isinstance(corpus, TokenCorpus):
        tc = corpus
    else:
        tc = load_corpus(tok, corpus)
    windows = tc.windows(context, seed=seed)
    points = [hooks.resolve(model, hook)]
    out, have = [], 0
    with progress_bar(n_tokens, f"activations at {hook}", unit="tok", unit_scale=True) as bar:
        for start in range(0, windows.shape[0], batch):
            acts = harvest(model, points, windows[start:start + batch])[hook]
            out.append(acts)
            bar.update(min(acts.shape[0], n_tokens - have))
            have += acts.shape[0]
            if have >= n_tokens:
                break
    acts = torch.cat(out)[:n_tokens]
    if acts.shape[0] < n_tokens:
        raise ConfigError(f"the corpus gives only {acts.shape[0]} activations at {hook}, "
                          f"fewer than the {n_tokens} asked for")
    return acts


def check_basis_names(names: Sequence[str], width: int | None = None,
                      fit_tokens: int | None = None) -> list[str]:
    """Validate basis names (and, with the hook's width, that PCA/ICA can be fitted on
    `fit_tokens` activations) before any model pass."""
    names = list(names)
    unknown = [n for n in names if n not in BASES]
    if unknown or not names:
        raise ConfigError(f"unknown basis {unknown or names!r}; expected some of {BASES}")
    fitted = [n for n in names if n in ("pca", "ica")]
    if fitted and width is not None and fit_tokens is not None and fit_tokens <= width:
        raise ConfigError(f"{fitted[0].upper()} needs more activations than components to fit: "
                          f"--fit-tokens {fit_tokens} for a hook of width {width}; raise --fit-tokens "
                          f"above {width}")
    return names


def build_bases(model, tok, hook: str, names: Sequence[str], sae: SAE | None = None,
                fit_acts: torch.Tensor | None = None, fit_tokens: int = 16384, corpus=None,
                seed: int = 0, ica_iter: int = 200) -> list[Basis]:
    """The named bases at `hook` (`sae` needs `sae`; `pca`/`ica` fit on `fit_acts` or on
    `fit_tokens` corpus activations)."""
    hp = hooks.resolve(model, hook)
    names = check_basis_names(names, hp.width, fit_tokens if fit_acts is None else None)
    if "sae" in names:
        if sae is None:
            raise ConfigError("basis 'sae' needs an SAE at the hook")
        if sae.cfg.d_in != hp.width:
            raise ConfigError(f"the SAE has d_in={sae.cfg.d_in} but {hook!r} has width {hp.width}")
    if any(n in ("pca", "ica") for n in names) and fit_acts is None:
        fit_acts = corpus_activations(model, tok, hook, fit_tokens, corpus=corpus, seed=seed)
    out: list[Basis] = []
    for name in names:
        if name == "sae":
            out.append(sae_basis(sae))
        elif name == "raw":
            out.append(raw_basis(hp.width))
        elif name == "pca":
            out.append(pca_basis(fit_acts))
        else:
            out.append(ica_basis(fit_acts, max_iter=ica_iter, seed=seed))
    return out


# -- clean and patch runs ----------------------------------------------------------------------
def check_bases(model, hook: str, bases: Sequence[Basis]):
    """The hook point, after checking that there are bases, with distinct names, of its width."""
    if not bases:
        raise ConfigError("the basis comparison needs at least one basis")
    names = [b.name for b in bases]
    if len(set(names)) != len(names):
        raise ConfigError(f"basis names must be distinct, got {names}")
    hp = hooks.resolve(model, hook)
    for b in bases:
        if b.dec.shape[1] != hp.width:
            raise ConfigError(f"basis {b.name!r} has width {b.dec.shape[1]} but hook {hook!r} has "
                              f"width {hp.width}")
    return hp


def check_task(task: Task) -> None:
    if not isinstance(task, Task):
        raise TaskError(f"expected a Task, got {type(task).__name__}")
    if task.patch is None:
        raise TaskError(f"task {task.name!r} has no patch prompts (field 'patch_prefix' is missing "
                        "or null); the basis comparison patches units from the patch run")


def patch_inputs(model, tok, task: Task) -> tuple[dict, dict]:
    """Clean and patch inputs (left padded, on the model's device); same shape and mask."""
    check_task(task)
    device = model_device(model)
    clean = {k: v.to(device) for k, v in encode_inputs(tok, task.clean).items()}
    patch = {k: v.to(device) for k, v in encode_inputs(tok, task.patch).items()}
    if clean["input_ids"].shape != patch["input_ids"].shape or not torch.equal(
            clean["attention_mask"], patch["attention_mask"]):
        raise TaskError(f"task {task.name!r}: clean and patch prompts tokenize to different lengths")
    return clean, patch


def read_hook(model, hp, inputs) -> torch.Tensor:
    """The hook value `[B, T, d]` (float32) of one forward, stopped after the hook."""
    with torch.no_grad(), model.trace(inputs) as tracer:
        x = nnsight.save(hooks.read(model, hp))
        tracer.stop()
    return x.detach().float()


def logits_with(model, hp, inputs, x_new: torch.Tensor | None = None) -> torch.Tensor:
    """Logits `[B, T, vocab]` with the hook value replaced by `x_new` (None: unchanged)."""
    with torch.no_grad(), model.trace(inputs):
        if x_new is not None:
            old = hooks.read(model, hp)
            hooks.write(model, hp, x_new.to(device=old.device, dtype=old.dtype))
        logits = hooks.read(model, logits_site(model)).save()
    return logits


def kl_to(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) `[..]` from log-probabilities `[.., vocab]` (float64 sums)."""
    logp, logq = logp.double(), logq.double()
    return (logp.exp() * (logp - logq)).sum(-1)


def edit_magnitude(edit: torch.Tensor, real: torch.Tensor) -> float:
    """Mean L2 norm of `edit [B, T, d]` over the real positions `real [B, T]`."""
    return float(edit.double().norm(dim=-1)[real.bool()].mean())


def _clean_grad(model, hp, task: Task, inputs) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
    """(x_clean [B,T,d], ∂ Σ metric / ∂x [B,T,d], mean clean metric, clean last logits [B, V])."""
    with torch.enable_grad():
        with model.trace(inputs):
            x = hooks.read(model, hp)
            leaf = nnsight.save(x.detach().clone().requires_grad_(True))
            hooks.write(model, hp, leaf)
            logits = hooks.read(model, logits_site(model)).save()
        metric = task.metric(logits)
        metric.sum().backward()
    if leaf.grad is None:
        raise ConfigError(f"no gradient reached hook {hp.name!r} from the metric")
    return (leaf.detach().float(), leaf.grad.detach().float(), float(metric.detach().mean()),
            logits[:, -1].detach().float())


def _ablatable(mask: torch.Tensor) -> torch.Tensor:
    """`[B, T]` real positions except each prompt's first token."""
    valid = mask.bool()
    out = valid.clone()
    out[torch.arange(valid.shape[0]), valid.long().argmax(1)] = False
    return out


# -- the attribution comparison ----------------------------------------------------------------
@dataclass
class CurvePoint:
    """One point of a basis curve: units patched, recovered fraction, KL to the counterfactual
    at the answer position, edit magnitude."""

    n: int
    fraction: float
    kl: float
    edit: float


@dataclass
class BasisComparison:
    """Per basis and n: recovered fraction, KL and edit. `curves[basis]` ends with n = all."""

    task: str
    hook: str
    n_prompts: int
    metric_clean: float
    metric_patch: float
    kl_clean: float
    curves: dict[str, list[CurvePoint]]
    sizes: dict[str, int]
    info: dict = field(default_factory=dict)
    rank: str = "dataset"

    def point(self, basis: str, n: int | str) -> CurvePoint | None:
        want = self.sizes[basis] if n == "all" else int(n)
        return next((p for p in self.curves[basis] if p.n == want), None)

    def fraction(self, basis: str, n: int | str) -> float | None:
        p = self.point(basis, n)
        return None if p is None else p.fraction

    @property
    def all_features_recovery(self) -> float | None:
        """SAE: every feature patched, error term kept from clean."""
        return self.fraction("sae", "all") if "sae" in self.curves else None

    def kl_points(self) -> dict[str, list[tuple[int, float, float]]]:
        """(units, KL, edit) per basis, for `units_to_reach`."""
        return {b: [(p.n, p.kl, p.edit) for p in c] for b, c in self.curves.items()}

    def to_dict(self) -> dict:
        return {"protocol": "attribution", "task": self.task, "hook": self.hook,
                "n_prompts": self.n_prompts, "rank": self.rank, "metric_clean": self.metric_clean,
                "metric_patch": self.metric_patch, "kl_clean": self.kl_clean,
                "all_features_recovery": self.all_features_recovery, "sizes": self.sizes,
                "curves": {b: [vars(p) for p in c] for b, c in self.curves.items()},
                "info": self.info}

    def columns(self) -> list[int | str]:
        ns = sorted({p.n for c in self.curves.values() for p in c[:-1]})
        return [*ns, "all"]

    def table(self) -> str:
        """Markdown table: rows = bases, columns = n (blank where n exceeds the basis);
        cells "fraction / KL"."""
        cols = self.columns()
        lines = ["| basis | " + " | ".join(str(c) for c in cols) + " |",
                 "|---|" + "---|" * len(cols)]
        for b in self.curves:
            cells = []
            for c in cols:
                p = self.point(b, c)
                cells.append("" if p is None else f"{p.fraction:.3f} / {p.kl:.2f}")
            lines.append(f"| {b} ({self.sizes[b]}) | " + " | ".join(cells) + " |")
        return "\n".join(lines)


RANKS = ("dataset", "prompt")


def compare_bases(model, tok, task: Task, hook: str, bases: Sequence[Basis],
                  ns: Sequence[int] = DEFAULT_NS, rank: str = "dataset") -> BasisComparison:
    """Patch the top-n units of every basis from the patch run; see the module docstring.
    rank: "dataset" (one ranking from the mean attribution) or "prompt" (each prompt its own).

    Runs 1 forward+backward and 2 forwards for the clean/patch values, then one forward per
    (basis, n). The prompts run as one batch (left padded)."""
    check_task(task)
    if rank not in RANKS:
        raise ConfigError(f"rank must be one of {RANKS}, got {rank!r}")
    ns = sorted({int(n) for n in ns})
    if not ns or ns[0] < 1:
        raise ConfigError(f"unit counts must be positive integers, got {ns}")
    hp = check_bases(model, hook, bases)
    clean, patch = patch_inputs(model, tok, task)
    bar = progress_bar(3 + sum(len([n for n in ns if n < b.size]) + 1 for b in bases), "compare bases",
                       unit="pass")
    x_clean, grad, m_clean, last_clean = _clean_grad(model, hp, task, clean)
    x_patch = read_hook(model, hp, patch).cpu()
    x_clean, grad = x_clean.cpu(), grad.cpu()  # basis arithmetic on the CPU, whatever the model's device
    logits_p = logits_with(model, hp, patch)
    bar.update(3)
    m_patch = float(task.metric(logits_p).mean())
    logq = F.log_softmax(logits_p[:, -1].float(), -1)
    change = m_patch - m_clean
    if abs(change) < 1e-6:
        raise TaskError(f"task {task.name!r}: clean and patch runs give the same metric "
                        f"({m_clean:.4g}); nothing to recover")
    real = clean["attention_mask"].cpu().bool()
    keep = _ablatable(real).unsqueeze(-1).float()
    n_prompts = len(task)
    curves, sizes, info = {}, {}, {}
    for b in bases:
        dec = b.dec.float().cpu()
        delta = (b.encode(x_patch) - b.encode(x_clean)) * keep   # [B, T, m]
        per_prompt = ((grad @ dec.T) * delta).sum(1)              # [B, m]
        attr = per_prompt.sum(0) / n_prompts                      # [m]
        order = (attr * math.copysign(1.0, change)).argsort(descending=True)
        if rank == "prompt":
            orders = (per_prompt * math.copysign(1.0, change)).argsort(dim=1, descending=True)  # [B, m]
        curve = []
        for n in [n for n in ns if n < b.size] + [b.size]:
            if rank == "prompt" and n < b.size:
                chosen = torch.zeros_like(per_prompt).scatter_(1, orders[:, :n], 1.0)  # [B, m]
                edit = (delta * chosen.unsqueeze(1)) @ dec
            else:
                sel = order[:n]
                edit = delta[..., sel] @ dec[sel]
            logits = logits_with(model, hp, clean, x_clean + edit)
            kl = kl_to(F.log_softmax(logits[:, -1].float(), -1), logq).mean()
            curve.append(CurvePoint(n, (float(task.metric(logits).mean()) - m_clean) / change,
                                    float(kl), edit_magnitude(edit, real)))
            bar.update(1)
        curves[b.name], sizes[b.name] = curve, b.size
        info[b.name] = {**b.info, "attribution_total": float(attr.sum()),
                        "attribution_top16": float(attr[order[:16]].sum())}
    bar.close()
    kl_clean = float(kl_to(F.log_softmax(last_clean, -1), logq).mean())
    return BasisComparison(task=task.name, hook=hp.name, n_prompts=n_prompts, metric_clean=m_clean,
                           metric_patch=m_patch, kl_clean=kl_clean, curves=curves, sizes=sizes,
                           info=info, rank=rank)


# -- the paper's measure -----------------------------------------------------------------------
def units_to_reach(points: Sequence[tuple[int, float, float]], target: float
                   ) -> tuple[int | None, float | None]:
    """(fewest units, smallest edit) among the `(units, KL, edit)` points with KL ≤ target
    (None where no point reaches it)."""
    ok = [(n, e) for n, kl, e in points if kl <= target]
    if not ok:
        return None, None
    return min(n for n, _ in ok), min(e for _, e in ok)


def kl_headline(kl_points: dict[str, list[tuple[int, float, float]]], kl_clean: float,
                share: float = KL_TARGET) -> str:
    """'SAE 64 units (edit 4.4), RAW 16 (6.3), ...': units and edit magnitude needed to bring
    KL(edited ‖ counterfactual) to ≤ share · KL(clean ‖ counterfactual)."""
    target = share * kl_clean
    cells = []
    for b, pts in kl_points.items():
        n, e = units_to_reach(pts, target)
        best = min(kl for _, kl, _ in pts)
        cells.append(f"{b.upper()} " + (f"{n:,} units (edit {e:.1f})" if n is not None
                                        else f"not reached (best KL {best:.2f})"))
    return f"to reach KL ≤ {target:.2f} ({share:.0%} of the clean run's {kl_clean:.2f}): " + ", ".join(cells)


def headline(result: BasisComparison) -> str:
    """The demo's basis headline: recovered fraction at n = 16 / 64 and all SAE features, then
    the paper's measure (units and edit magnitude needed to reach a KL threshold), with one
    sentence on what it means."""
    cells = []
    for n in (16, 64):
        parts = [f"{b.upper()} {f:.2f}" for b in result.curves if (f := result.fraction(b, n)) is not None]
        cells.append(f"top {n}: " + ", ".join(parts))
    text = (f"basis comparison at {result.hook} (IOI, {result.n_prompts} prompts; share of the "
            f"clean→patch metric change recovered by patching the top-n units): " + "; ".join(cells))
    if result.all_features_recovery is not None:
        text += (f"; all {result.sizes['sae']:,} SAE features (error term kept clean) "
                 f"{result.all_features_recovery:.2f}")
    return (text + "\n  KL(edited ‖ counterfactual) at the answer, " +
            kl_headline(result.kl_points(), result.kl_clean) +
            "\n  (Cunningham et al.'s measure: a basis that localises the behaviour needs fewer units"
            " and a smaller edit of the activations to make the model answer as on the counterfactual"
            "; units ranked by attribution here, `compare-bases --protocol cunningham` runs the"
            " authors' greedy elimination)")


# -- pictures ----------------------------------------------------------------------------------
COLORS = {"sae": "#d62728", "raw": "#1f77b4", "pca": "#2ca02c", "ica": "#9467bd"}
_PALETTE = ["#d62728", "#ff7f0e", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#7f7f7f", "#1f77b4",
            "#2ca02c", "#9467bd"]


def color_of(name: str, i: int) -> str:
    return COLORS.get(name, _PALETTE[i % len(_PALETTE)])


def line_chart(series: dict[str, list[tuple[float, float]]], title: str, xlabel: str, ylabel: str,
               logx: bool = False, xticks: Sequence[tuple[float, str]] | None = None,
               colors: dict[str, str] | None = None, width: int = 640, height: int = 380) -> str:
    """An SVG line chart, one polyline (with dots) per series of (x, y) points, legend right."""
    left, right, top, bottom = 60, 170, 30, 46
    pw, ph = width - left - right, height - top - bottom
    pts = [(x, y) for s in series.values() for x, y in s if not logx or x > 0]
    fx = (lambda v: math.log10(v)) if logx else (lambda v: v)
    xs = [fx(x) for x, _ in pts] or [0.0, 1.0]
    ys = [y for _, y in pts] or [0.0, 1.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(0.0, min(ys)), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    X = lambda v: left + pw * (fx(v) - x0) / (x1 - x0)
    Y = lambda v: top + ph * (y1 - v) / (y1 - y0)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{left}" y="18" font-size="13">{escape(title)}</text>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="black"/>',
           f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="black"/>']
    for i in range(6):
        v = y0 + (y1 - y0) * i / 5
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#e5e5e5"/>'
                   f'<text x="{left - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
    if xticks is None:
        if logx:
            xticks = [(10 ** e, f"{10 ** e:g}") for e in range(math.floor(x0), math.ceil(x1) + 1)
                      if x0 - 1e-9 <= e <= x1 + 1e-9]
        else:
            xticks = [(x0 + (x1 - x0) * i / 5, f"{x0 + (x1 - x0) * i / 5:.3g}") for i in range(6)]
    for v, label in xticks:
        out.append(f'<line x1="{X(v):.1f}" x2="{X(v):.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="black"/>'
                   f'<text x="{X(v):.1f}" y="{top + ph + 16}" text-anchor="middle">{escape(label)}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text x="14" y="{top + ph / 2}" transform="rotate(-90 14 {top + ph / 2})" '
               f'text-anchor="middle">{escape(ylabel)}</text>')
    for i, (name, s) in enumerate(series.items()):
        color = (colors or {}).get(name) or color_of(name, i)
        s = [(x, y) for x, y in s if not logx or x > 0]
        path = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in s)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        out += [f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="2.5" fill="{color}"/>' for x, y in s]
        ly = top + 10 + 16 * i
        out.append(f'<line x1="{left + pw + 12}" x2="{left + pw + 30}" y1="{ly}" y2="{ly}" '
                   f'stroke="{color}" stroke-width="2"/><text x="{left + pw + 34}" y="{ly + 4}">'
                   f'{escape(name)}</text>')
    out.append("</svg>\n")
    return "\n".join(out)


def plot_svg(result: BasisComparison) -> str:
    """Recovered fraction vs n ('all' as the right-most tick), one line a basis."""
    cols = result.columns()
    index = {c: i for i, c in enumerate(cols)}
    series = {f"{b} ({result.sizes[b]})": [(index["all"] if p.n == result.sizes[b] else index[p.n],
                                            p.fraction) for p in c]
              for b, c in result.curves.items()}
    colors = {f"{b} ({result.sizes[b]})": color_of(b, i) for i, b in enumerate(result.curves)}
    return line_chart(series, f"{result.task} @ {result.hook}: fraction of the clean→patch change "
                      "recovered", "units patched (n, ranked by attribution)",
                      "fraction recovered", xticks=[(i, str(c)) for i, c in enumerate(cols)],
                      colors=colors)


def write_outputs(result: BasisComparison, folder) -> dict[str, str]:
    """bases.json, bases.md and bases.svg."""
    from pathlib import Path

    from .fileio import write_json, write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "bases.json", result.to_dict())
    write_text(folder / "bases.md", f"# Basis comparison: {result.task} at {result.hook}\n\n"
               f"{result.n_prompts} prompts; metric clean {result.metric_clean:.3f}, patch "
               f"{result.metric_patch:.3f}; KL(clean ‖ patch) at the answer {result.kl_clean:.3f}. "
               f"Cells: fraction of the clean→patch change recovered / KL(edited ‖ patch) when the "
               f"top-n units are patched, ranked per {result.rank} (SAE 'all': every feature, error "
               f"term kept clean).\n\n{result.table()}\n\n"
               f"{kl_headline(result.kl_points(), result.kl_clean)}\n")
    write_text(folder / "bases.svg", plot_svg(result))
    return {"json": str(folder / "bases.json"), "table": str(folder / "bases.md"),
            "plot": str(folder / "bases.svg")}
