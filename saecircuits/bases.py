"""Basis comparison at one hook point (Cunningham et al. 2023, Fig. 3): do SAE features
localise a task better than the hook's raw dimensions, PCA or ICA directions?

Every basis is linear in its decoder: a hook value is `x = mean + c @ dec (+ error)` with
coefficients `c [.., m] = encode(x)` and decoder rows `dec [m, d]`:

    sae   c = sae.encode(x), dec = W_dec, error = x − x̂ (kept from the clean run)
    raw   c = x, dec = I                                   (complete, orthonormal)
    pca   c = (x − μ) V, dec = Vᵀ                          (complete, orthonormal)
    ica   c = (x − μ) U, dec = U⁻¹ (FastICA on whitened data; complete, not orthogonal)

For a contrastive task with patch prompts, each unit j gets the attribution
`a_j = mean_prompts Σ_pos (∂m/∂x · dec_j) (c_patch,j − c_clean,j)` at the clean point; units are
ranked by their attribution toward the clean→patch change (`a_j · sign(m_patch − m_clean)`,
largest first). Patching the top n units of a basis runs the clean prompts with
`x = x_clean + Σ_{j∈top n} (c_patch,j − c_clean,j) dec_j` at every position except each
prompt's first token (the attention sink) and padding.
`rank="prompt"` ranks units per prompt instead (each prompt's own attribution, summed over its
positions; each prompt patches its own top n): how many units localise the task in one prompt,
when different prompts (different names) use different units. The recovered fraction is
`(m̄_n − m̄_clean) / (m̄_patch − m̄_clean)` (ratio of the means over prompts).
For complete bases n = all reproduces the patch run (fraction 1); for an SAE, n = all patches
every feature but keeps the clean error term ("all features, no error term").

PCA and ICA are fit on activations of a text corpus at the same hook (FastICA: scikit-learn
if installed, else the numpy/torch implementation below).
"""
from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import nnsight
import torch

from . import hooks
from .errors import ConfigError, TaskError
from .progress import bar as progress_bar, status
from .dictionaries import Dictionary as SAE
from .replacement import logits_site
from .splice import encode_inputs
from .wrapping import model_device
from .tasks.base import Task

BASES = ("sae", "raw", "pca", "ica")
DEFAULT_NS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class Basis:
    """A linear basis at a hook: `encode(x [.., d]) -> c [.., m]`, `dec [m, d]` decoder rows."""

    name: str
    encode: Callable[[torch.Tensor], torch.Tensor]
    dec: torch.Tensor
    info: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.dec.shape[0])


# -- bases -----------------------------------------------------------------------------------
def raw_basis(d: int) -> Basis:
    eye = torch.eye(d)
    return Basis("raw", lambda x: x.float(), eye)


def sae_basis(sae: SAE) -> Basis:
    dec = sae.W_dec.detach().float()

    def enc(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return sae.encode(x.to(sae.dtype)).float()

    return Basis("sae", enc, dec, {"d_sae": sae.cfg.d_sae, "architecture": sae.cfg.architecture})


def _check_fit_data(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.dim() != 2:
        raise ConfigError(f"{what} needs activations of shape [n, d], got {tuple(x.shape)}")
    n, d = x.shape
    if n < 2 * d:
        raise ConfigError(f"{what} needs at least 2·d = {2 * d} activations to fit, got {n}; "
                          "raise --fit-tokens")
    if not torch.isfinite(x).all():
        raise ConfigError(f"{what}: the fit activations contain NaN/inf")
    return x.double()


def _eigh_cov(x: torch.Tensor):
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / (x.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(cov)
    order = evals.argsort(descending=True)
    return mean, evals[order].clamp_min(0), evecs[:, order]


def pca_basis(acts: torch.Tensor) -> Basis:
    """PCA directions of `acts [n, d]`, by decreasing variance (complete orthonormal basis)."""
    x = _check_fit_data(acts, "PCA")
    mean, evals, evecs = _eigh_cov(x)
    mu, V = mean.float(), evecs.float()
    explained = (evals / evals.sum()).float()
    return Basis("pca", lambda h: (h.float() - mu) @ V, V.T.contiguous(),
                 {"explained_top16": float(explained[:16].sum())})


def _sym_decorrelate(w: torch.Tensor) -> torch.Tensor:
    """(W Wᵀ)^(-1/2) W."""
    s, u = torch.linalg.eigh(w @ w.T)
    s = s.clamp_min(1e-12)
    return (u * s.rsqrt()) @ u.T @ w


def fastica_unmixing(z: torch.Tensor, max_iter: int = 200, tol: float = 1e-4,
                     seed: int = 0) -> tuple[torch.Tensor, int, float]:
    """Symmetric FastICA with the logcosh contrast on whitened data `z [m, n]`.

    Returns (W [m, m] orthogonal with sources `W @ z`, iterations, last change)."""
    m, n = z.shape
    g = torch.Generator().manual_seed(seed)
    w = _sym_decorrelate(torch.randn(m, m, generator=g, dtype=z.dtype))
    lim = float("inf")
    it = 0
    for it in range(1, max_iter + 1):
        gwx = torch.tanh(w @ z)
        w_new = (gwx @ z.T) / n - (1 - gwx.pow(2)).mean(1, keepdim=True) * w
        w_new = _sym_decorrelate(w_new)
        lim = float((torch.einsum("ij,ij->i", w_new, w).abs() - 1).abs().max())
        w = w_new
        if lim < tol:
            break
    return w, it, lim


def ica_basis(acts: torch.Tensor, max_iter: int = 200, tol: float = 1e-4, seed: int = 0) -> Basis:
    """ICA directions of `acts [n, d]` (complete: d components; mixing = inverse unmixing).

    Whitening keeps every PCA direction (tiny eigenvalues floored at 1e-9 of the largest), so
    the basis is complete and patching all units reproduces the patch run."""
    x = _check_fit_data(acts, "ICA")
    mean, evals, evecs = _eigh_cov(x)
    evals = evals.clamp_min(evals[0] * 1e-9)
    whiten = evecs * evals.rsqrt()                       # [d, d]: z = (x − μ) @ whiten
    z = ((x - mean) @ whiten).float()
    backend = "numpy/torch"
    if importlib.util.find_spec("sklearn") is not None:
        from sklearn.decomposition import FastICA

        ica = FastICA(whiten=False, max_iter=max_iter, tol=tol, random_state=seed)
        with status(f"fitting ICA ({z.shape[1]} components, at most {max_iter} iterations)"):
            ica.fit(z.cpu().numpy())
        w = torch.as_tensor(ica.components_, dtype=torch.float64, device=whiten.device)
        iters, change, backend = int(ica.n_iter_), float("nan"), "sklearn"
    else:
        with status(f"fitting ICA ({z.shape[1]} components, at most {max_iter} iterations)"):
            w, iters, change = fastica_unmixing(z.T.contiguous(), max_iter, tol, seed)
        w = w.double()
    unmix = whiten @ w.T                                 # c = (x − μ) @ unmix
    mix = torch.linalg.inv(unmix)                        # x − μ = c @ mix
    mu, U = mean.float(), unmix.float()
    return Basis("ica", lambda h: (h.float() - mu) @ U, mix.float(),
                 {"backend": backend, "iterations": iters, "converged": bool(change < tol)
                  if not math.isnan(change) else None, "last_change": change})


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


# -- the comparison ----------------------------------------------------------------------------
@dataclass
class BasisComparison:
    """Recovered fraction per basis and n. `curves[basis] = [(n, fraction), ...]` (last: all)."""

    task: str
    hook: str
    n_prompts: int
    metric_clean: float
    metric_patch: float
    curves: dict[str, list[tuple[int, float]]]
    sizes: dict[str, int]
    info: dict = field(default_factory=dict)
    rank: str = "dataset"

    def fraction(self, basis: str, n: int | str) -> float | None:
        size = self.sizes[basis]
        want = size if n == "all" else int(n)
        for m, f in self.curves[basis]:
            if m == want:
                return f
        return None

    @property
    def all_features_recovery(self) -> float | None:
        """SAE: every feature patched, error term kept from clean."""
        return self.fraction("sae", "all") if "sae" in self.curves else None

    def to_dict(self) -> dict:
        return {"task": self.task, "hook": self.hook, "n_prompts": self.n_prompts, "rank": self.rank,
                "metric_clean": self.metric_clean, "metric_patch": self.metric_patch,
                "all_features_recovery": self.all_features_recovery, "sizes": self.sizes,
                "curves": {b: [{"n": n, "fraction": f} for n, f in c] for b, c in self.curves.items()},
                "info": self.info}

    def columns(self) -> list[int | str]:
        ns = sorted({n for c in self.curves.values() for n, _ in c[:-1]})
        return [*ns, "all"]

    def table(self) -> str:
        """Markdown table: rows = bases, columns = n (blank where n exceeds the basis)."""
        cols = self.columns()
        lines = ["| basis | " + " | ".join(str(c) for c in cols) + " |",
                 "|---|" + "---|" * len(cols)]
        for b in self.curves:
            cells = []
            for c in cols:
                f = self.fraction(b, c)
                cells.append("" if f is None else f"{f:.3f}")
            lines.append(f"| {b} ({self.sizes[b]}) | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _check_task(task: Task) -> None:
    if not isinstance(task, Task):
        raise TaskError(f"expected a Task, got {type(task).__name__}")
    if task.patch is None:
        raise TaskError(f"task {task.name!r} has no patch prompts (field 'patch_prefix' is missing "
                        "or null); the basis comparison patches units from the patch run")


def _ablatable(mask: torch.Tensor) -> torch.Tensor:
    """`[B, T]` real positions except each prompt's first token."""
    valid = mask.bool()
    out = valid.clone()
    out[torch.arange(valid.shape[0]), valid.long().argmax(1)] = False
    return out


def _clean_grad(model, hp, task: Task, inputs) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(x_clean [B,T,d], ∂ Σ metric / ∂x [B,T,d], mean clean metric)."""
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
    return leaf.detach().float(), leaf.grad.detach().float(), float(metric.detach().mean())


def _read(model, hp, inputs) -> torch.Tensor:
    with torch.no_grad(), model.trace(inputs) as tracer:
        x = nnsight.save(hooks.read(model, hp))
        tracer.stop()
    return x.detach().float()


def _metric_with(model, hp, task: Task, inputs, x_new: torch.Tensor) -> float:
    with torch.no_grad(), model.trace(inputs):
        old = hooks.read(model, hp)
        hooks.write(model, hp, x_new.to(device=old.device, dtype=old.dtype))
        logits = hooks.read(model, logits_site(model)).save()
    return float(task.metric(logits).mean())


RANKS = ("dataset", "prompt")


def compare_bases(model, tok, task: Task, hook: str, bases: Sequence[Basis],
                  ns: Sequence[int] = DEFAULT_NS, rank: str = "dataset") -> BasisComparison:
    """Patch the top-n units of every basis from the patch run; see the module docstring.
    rank: "dataset" (one ranking from the mean attribution) or "prompt" (each prompt its own).

    Runs 1 forward+backward and 1 forward for the clean/patch values, then one forward per
    (basis, n). The prompts run as one batch (left padded)."""
    _check_task(task)
    if not bases:
        raise ConfigError("compare_bases needs at least one basis")
    if rank not in RANKS:
        raise ConfigError(f"rank must be one of {RANKS}, got {rank!r}")
    ns = sorted({int(n) for n in ns})
    if not ns or ns[0] < 1:
        raise ConfigError(f"unit counts must be positive integers, got {ns}")
    hp = hooks.resolve(model, hook)
    for b in bases:
        if b.dec.shape[1] != hp.width:
            raise ConfigError(f"basis {b.name!r} has width {b.dec.shape[1]} but hook {hook!r} has "
                              f"width {hp.width}")
    device = model_device(model)
    clean = {k: v.to(device) for k, v in encode_inputs(tok, task.clean).items()}
    patch = {k: v.to(device) for k, v in encode_inputs(tok, task.patch).items()}
    if clean["input_ids"].shape != patch["input_ids"].shape or not torch.equal(
            clean["attention_mask"], patch["attention_mask"]):
        raise TaskError(f"task {task.name!r}: clean and patch prompts tokenize to different lengths")
    passes = 2 + sum(len([n for n in ns if n < b.size]) + 1 for b in bases)
    bar = progress_bar(passes, "compare bases", unit="pass")
    x_clean, grad, m_clean = _clean_grad(model, hp, task, clean)
    x_patch = _read(model, hp, patch).cpu()
    bar.update(1)
    x_clean, grad = x_clean.cpu(), grad.cpu()  # basis arithmetic on the CPU, whatever the model's device
    with torch.no_grad(), model.trace(patch):
        logits_p = hooks.read(model, logits_site(model)).save()
    m_patch = float(task.metric(logits_p).mean())
    bar.update(1)
    change = m_patch - m_clean
    if abs(change) < 1e-6:
        raise TaskError(f"task {task.name!r}: clean and patch runs give the same metric "
                        f"({m_clean:.4g}); nothing to recover")
    keep = _ablatable(clean["attention_mask"].cpu()).unsqueeze(-1).float()
    n_prompts = len(task)
    curves, sizes, info = {}, {}, {}
    for b in bases:
        dec = b.dec.float().cpu()
        c_clean = b.encode(x_clean.to(b.dec.device)).float().cpu()
        c_patch = b.encode(x_patch.to(b.dec.device)).float().cpu()
        delta = (c_patch - c_clean) * keep                   # [B, T, m]
        per_prompt = ((grad @ dec.T) * delta).sum(1)              # [B, m]
        attr = per_prompt.sum(0) / n_prompts                        # [m]
        order = (attr * math.copysign(1.0, change)).argsort(descending=True)
        if rank == "prompt":
            orders = (per_prompt * math.copysign(1.0, change)).argsort(dim=1, descending=True)  # [B, m]
        points = [n for n in ns if n < b.size] + [b.size]
        curve = []
        for n in points:
            if rank == "prompt" and n < b.size:
                chosen = torch.zeros_like(per_prompt).scatter_(1, orders[:, :n], 1.0)  # [B, m]
                x_new = x_clean + (delta * chosen.unsqueeze(1)) @ dec
            else:
                sel = order[:n]
                x_new = x_clean + delta[..., sel] @ dec[sel]
            curve.append((n, (_metric_with(model, hp, task, clean, x_new) - m_clean) / change))
            bar.update(1)
        curves[b.name], sizes[b.name] = curve, b.size
        info[b.name] = {**b.info, "attribution_total": float(attr.sum()),
                        "attribution_top16": float(attr[order[:16]].sum())}
    bar.close()
    return BasisComparison(task=task.name, hook=hp.name, n_prompts=n_prompts, metric_clean=m_clean,
                           metric_patch=m_patch, curves=curves, sizes=sizes, info=info, rank=rank)


# -- picture -----------------------------------------------------------------------------------
_COLORS = {"sae": "#d62728", "raw": "#1f77b4", "pca": "#2ca02c", "ica": "#9467bd"}


def plot_svg(result: BasisComparison, width: int = 560, height: int = 360) -> str:
    """Recovered fraction vs n (log₂ x axis, 'all' as the right-most tick), one line a basis."""
    cols = result.columns()
    left, right, top, bottom = 56, 110, 28, 44
    pw, ph = width - left - right, height - top - bottom
    xs = {c: left + pw * i / max(1, len(cols) - 1) for i, c in enumerate(cols)}
    vals = [f for c in result.curves.values() for _, f in c]
    lo, hi = min(0.0, min(vals)), max(1.0, max(vals))
    y = lambda f: top + ph * (hi - f) / (hi - lo)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="16" font-size="13">{result.task} @ {result.hook}: fraction of the '
           'clean→patch change recovered</text>']
    for t in [lo, 0.0, 0.25, 0.5, 0.75, 1.0, hi]:
        if lo <= t <= hi:
            out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(t):.1f}" y2="{y(t):.1f}" '
                       'stroke="#ddd"/>')
            out.append(f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t:.2f}</text>')
    for c, x in xs.items():
        out.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">{c}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">units patched (n, '
               'ranked by attribution)</text>')
    for i, (b, curve) in enumerate(result.curves.items()):
        color = _COLORS.get(b, "#555")
        pts = [(xs["all"] if n == result.sizes[b] else xs.get(n), f) for n, f in curve]
        pts = [(x, f) for x, f in pts if x is not None]
        path = " ".join(f"{x:.1f},{y(f):.1f}" for x, f in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        out += [f'<circle cx="{x:.1f}" cy="{y(f):.1f}" r="2.5" fill="{color}"/>' for x, f in pts]
        ly = top + 14 + 16 * i
        out.append(f'<line x1="{left + pw + 12}" x2="{left + pw + 30}" y1="{ly}" y2="{ly}" '
                   f'stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{left + pw + 34}" y="{ly + 4}">{b} ({result.sizes[b]})</text>')
    out.append("</svg>")
    return "\n".join(out)


def write_outputs(result: BasisComparison, folder) -> dict[str, str]:
    """bases.json, bases.md and a plot (bases.png with matplotlib, else bases.svg)."""
    from pathlib import Path

    from .fileio import atomic_path, write_json, write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"json": str(folder / "bases.json"), "table": str(folder / "bases.md")}
    write_json(folder / "bases.json", result.to_dict())
    write_text(folder / "bases.md", f"# Basis comparison: {result.task} at {result.hook}\n\n"
               f"{result.n_prompts} prompts; metric clean {result.metric_clean:.3f}, patch "
               f"{result.metric_patch:.3f}. Fraction of the clean→patch change recovered by "
               f"patching the top-n units, ranked per {result.rank} (SAE 'all': every feature, error "
               f"term kept clean).\n\n"
               f"{result.table()}\n")
    if importlib.util.find_spec("matplotlib") is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        cols = result.columns()
        fig, ax = plt.subplots(figsize=(6, 4))
        for b, curve in result.curves.items():
            xs = [cols.index("all") if n == result.sizes[b] else cols.index(n) for n, _ in curve]
            ax.plot(xs, [f for _, f in curve], marker="o", label=f"{b} ({result.sizes[b]})",
                    color=_COLORS.get(b))
        ax.set_xticks(range(len(cols)), [str(c) for c in cols])
        ax.set_xlabel("units patched (ranked by attribution)")
        ax.set_ylabel("fraction of change recovered")
        ax.set_title(f"{result.task} @ {result.hook}")
        ax.legend()
        with atomic_path(folder / "bases.png") as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)
        files["plot"] = str(folder / "bases.png")
    else:
        write_text(folder / "bases.svg", plot_svg(result))
        files["plot"] = str(folder / "bases.svg")
    return files


def build_bases(model, tok, hook: str, names: Sequence[str], sae: SAE | None = None,
                fit_acts: torch.Tensor | None = None, fit_tokens: int = 16384, corpus=None,
                seed: int = 0, ica_iter: int = 200) -> list[Basis]:
    """The named bases at `hook` (`sae` needs `sae`; `pca`/`ica` fit on `fit_acts` or on
    `fit_tokens` corpus activations)."""
    unknown = [n for n in names if n not in BASES]
    if unknown or not names:
        raise ConfigError(f"unknown basis {unknown or names!r}; expected some of {BASES}")
    hp = hooks.resolve(model, hook)
    out: list[Basis] = []
    if any(n in ("pca", "ica") for n in names) and fit_acts is None:
        fit_acts = corpus_activations(model, tok, hook, fit_tokens, corpus=corpus, seed=seed)
    for name in names:
        if name == "sae":
            if sae is None:
                raise ConfigError("basis 'sae' needs an SAE at the hook")
            if sae.cfg.d_in != hp.width:
                raise ConfigError(f"the SAE has d_in={sae.cfg.d_in} but {hook!r} has width {hp.width}")
            out.append(sae_basis(sae))
        elif name == "raw":
            out.append(raw_basis(hp.width))
        elif name == "pca":
            out.append(pca_basis(fit_acts))
        else:
            out.append(ica_basis(fit_acts, max_iter=ica_iter, seed=seed))
    return out
