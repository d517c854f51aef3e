"""`saecircuits compare-bases`: SAE features vs raw dimensions vs PCA vs ICA at one hook
(Cunningham et al. 2023, Fig. 3).

--protocol attribution (default): patch the top-n units of each basis, ranked by attribution;
    recovered fraction of the task's clean→patch change, KL to the counterfactual and edit
    magnitude per n (`saecircuits.bases`).
--protocol cunningham: the authors' greedy backward elimination — every unit starts patched,
    units are un-patched while KL(edited ‖ counterfactual) rises by less than each threshold
    of an increasing schedule; KL vs units patched and vs edit magnitude
    (`saecircuits.elimination`). Resumable: partial results live in --out/partial/.
"""
from __future__ import annotations

import argparse

HELP = ("compare SAE features with raw/PCA/ICA bases (attribution ranking, or the authors' "
        "greedy elimination with --protocol cunningham)")


def _ints(text: str) -> list[int]:
    from ..errors import ConfigError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--ns must be comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"--ns must be comma-separated positive integers, got {text!r}")
    return values


# torch-free copies of saecircuits.bases.BASES / DEFAULT_NS (a test keeps them equal), so that
# building the CLI parser imports no torch
BASES = ("sae", "raw", "pca", "ica")
DEFAULT_NS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PROTOCOLS = ("attribution", "cunningham")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import add_model_arguments, positive_int

    add_model_arguments(parser)
    parser.add_argument("--protocol", choices=PROTOCOLS, default="attribution",
                        help="attribution: top-n units ranked by attribution; cunningham: the "
                        "authors' greedy backward elimination (default attribution)")
    parser.add_argument("--saes", default=None, help="SAE set directory (needed for the 'sae' basis; default: none)")
    parser.add_argument("--hook", default="resid.10", help="hook point (default resid.10)")
    parser.add_argument("--task", required=True, help="ioi | parens | sva | FILE.jsonl (needs patch "
                        "prompts)")
    parser.add_argument("--n", type=positive_int, default=40, help="number of prompts (default 40)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the task generator, ICA and "
                        "the elimination order (default 0)")
    parser.add_argument("--bases", default=",".join(BASES),
                        help=f"comma-separated subset of {','.join(BASES)} (default: all)")
    parser.add_argument("--ns", default=",".join(map(str, DEFAULT_NS)),
                        help="attribution: unit counts to patch (default: %(default)s; the full "
                        "basis is always added)")
    parser.add_argument("--rank", choices=("dataset", "prompt"), default="dataset",
                        help="attribution: rank units once from the mean attribution over prompts, "
                        "or per prompt (each prompt patches its own top n) (default dataset)")
    parser.add_argument("--thresholds", default="log:1e-5:1:50",
                        help="cunningham: increasing KL thresholds, log:MIN:MAX:N or a comma list "
                        "(default %(default)s, the authors' schedule)")
    parser.add_argument("--batch", type=positive_int, default=16,
                        help="cunningham: candidate tests per forward at most (default 16)")
    parser.add_argument("--fit-tokens", type=positive_int, default=16384,
                        help="corpus activations to fit PCA/ICA on (default 16384)")
    parser.add_argument("--corpus", default=None, help="text for the PCA/ICA fit (default: the "
                        "embedded corpus's held-out documents)")
    parser.add_argument("--ica-iter", type=positive_int, default=200, help="FastICA iterations (default 200)")
    parser.add_argument("--out", default=None, help="write bases.json, bases.md and plots here; "
                        "cunningham keeps partial results there and resumes them (default: print only)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out "
                        "(cunningham: start again instead of resuming)")


def _check_out(args) -> None:
    """Before any model pass: --out is usable; cunningham refuses a finished --out unless
    --overwrite (a partial one is resumed)."""
    from pathlib import Path

    from ..errors import ConfigError
    from ..fileio import check_output_dir

    if not args.out:
        return
    if args.protocol == "attribution":
        check_output_dir(args.out, overwrite=args.overwrite)
        return
    out = check_output_dir(args.out, overwrite=True)
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        if (out / "bases.json").is_file() or not (out / "partial").is_dir():
            raise ConfigError(f"--out {str(out)!r} exists and holds no partial run to resume; pass "
                              "--overwrite to replace it")
    if args.overwrite and (Path(args.out) / "partial").is_dir():
        import shutil

        shutil.rmtree(Path(args.out) / "partial")


def _fitted_bases(args, model, tok, names, sae):
    """build_bases, with PCA/ICA fits kept in --out/partial/fits.safetensors (cunningham)."""
    from pathlib import Path

    from ..bases import build_bases, linear_basis
    from ..fileio import read_safetensors, write_safetensors

    store = Path(args.out) / "partial" / "fits.safetensors" if args.out and args.protocol == "cunningham" else None
    saved = read_safetensors(store) if store is not None and store.is_file() else {}
    missing = [n for n in names if n in ("pca", "ica") and f"{n}/w" not in saved]
    kw = dict(sae=sae, fit_tokens=args.fit_tokens, corpus=args.corpus, seed=args.seed, ica_iter=args.ica_iter)
    fresh = [n for n in names if n not in ("pca", "ica")] + missing
    built = {b.name: b for b in build_bases(model, tok, args.hook, fresh, **kw)} if fresh else {}
    for n in names:
        if n not in built:
            built[n] = linear_basis(n, saved[f"{n}/mean"], saved[f"{n}/w"], saved[f"{n}/dec"])
    if store is not None and missing:
        store.parent.mkdir(parents=True, exist_ok=True)
        write_safetensors(store, {**saved, **{f"{n}/{k}": v for n in missing
                                              for k, v in {**built[n].params, "dec": built[n].dec}.items()}})
    return [built[n] for n in names]


def run(args: argparse.Namespace) -> dict:
    from ..bases import check_basis_names, check_task, compare_bases, write_outputs
    from ..errors import ConfigError
    from ..fileio import atomic_dir
    from ..models import load_model
    from ..sae import SAESet
    from ..tasks import make_task

    names = check_basis_names([b.strip() for b in args.bases.split(",") if b.strip()])
    ns = _ints(args.ns)
    thresholds = None
    if args.protocol == "cunningham":
        from ..elimination import parse_thresholds

        thresholds = parse_thresholds(args.thresholds)
    if "sae" in names and not args.saes:
        raise ConfigError("the 'sae' basis needs --saes (or leave it out of --bases)")
    _check_out(args)
    saes = SAESet.load(args.saes, hooks=[args.hook]) if "sae" in names else None  # a missing hook fails here
    model, tok = load_model(args.model, device=args.device)
    task = make_task(tok, args.task, n=args.n, seed=args.seed)
    check_task(task)
    sae = None
    if saes is not None:
        from ..wrapping import model_device

        saes.check(model)
        saes.to(device=model_device(model))
        sae = saes[args.hook]
    from .. import hooks

    check_basis_names(names, hooks.resolve(model, args.hook).width, args.fit_tokens)
    bases = _fitted_bases(args, model, tok, names, sae)
    if args.protocol == "cunningham":
        from pathlib import Path

        from ..elimination import compare_bases_cunningham, write_outputs as write_elim

        result = compare_bases_cunningham(model, tok, task, args.hook, bases, thresholds, seed=args.seed,
                                          batch=args.batch,
                                          state_dir=Path(args.out) / "partial" if args.out else None)
        print(result.table())
        if args.out:
            write_elim(result, args.out)
        return result.to_dict()
    result = compare_bases(model, tok, task, args.hook, bases, ns=ns, rank=args.rank)
    print(result.table())
    if result.all_features_recovery is not None:
        print(f"all SAE features (error term kept clean): {result.all_features_recovery:.3f} "
              "of the change recovered")
    if args.out:
        with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
            write_outputs(result, tmp)
    return result.to_dict()
