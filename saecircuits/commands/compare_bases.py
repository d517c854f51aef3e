"""`saecircuits compare-bases`: SAE features vs raw dimensions vs PCA vs ICA at one hook
(Cunningham et al. 2023, Fig. 3): the fraction of a task's clean→patch change recovered by
patching the top-n units of each basis, ranked by attribution."""
from __future__ import annotations

import argparse

HELP = "compare SAE features with raw/PCA/ICA bases: task change recovered by the top-n units"


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import add_model_arguments, positive_int

    add_model_arguments(parser)
    parser.add_argument("--saes", default=None, help="SAE set directory (needed for the 'sae' basis; default: none)")
    parser.add_argument("--hook", default="resid.10", help="hook point (default resid.10)")
    parser.add_argument("--task", required=True, help="ioi | parens | sva | FILE.jsonl (needs patch "
                        "prompts)")
    parser.add_argument("--n", type=positive_int, default=40, help="number of prompts (default 40)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the task generator and ICA (default 0)")
    parser.add_argument("--bases", default=",".join(BASES),
                        help=f"comma-separated subset of {','.join(BASES)} (default: all)")
    parser.add_argument("--ns", default=",".join(map(str, DEFAULT_NS)),
                        help="unit counts to patch (default: %(default)s; the full basis is always added)")
    parser.add_argument("--rank", choices=("dataset", "prompt"), default="dataset",
                        help="rank units once from the mean attribution over prompts, or per prompt "
                        "(each prompt patches its own top n) (default dataset)")
    parser.add_argument("--fit-tokens", type=positive_int, default=16384,
                        help="corpus activations to fit PCA/ICA on (default 16384)")
    parser.add_argument("--corpus", default=None, help="text for the PCA/ICA fit (default: the "
                        "embedded corpus's held-out documents)")
    parser.add_argument("--ica-iter", type=positive_int, default=200, help="FastICA iterations (default 200)")
    parser.add_argument("--out", default=None, help="write bases.json, bases.md and a plot here (default: print only)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> dict:
    from ..bases import build_bases, compare_bases, write_outputs
    from ..errors import ConfigError
    from ..fileio import atomic_dir
    from ..models import load_model
    from ..sae import SAESet
    from ..tasks import make_task

    names = [b.strip() for b in args.bases.split(",") if b.strip()]
    ns = _ints(args.ns)
    if "sae" in names and not args.saes:
        raise ConfigError("the 'sae' basis needs --saes (or leave it out of --bases)")
    if args.out:
        from ..fileio import check_output_dir

        check_output_dir(args.out, overwrite=args.overwrite)
    model, tok = load_model(args.model, device=args.device)
    task = make_task(tok, args.task, n=args.n, seed=args.seed)
    sae = SAESet.load(args.saes, model=model, hooks=[args.hook])[args.hook] if "sae" in names else None
    bases = build_bases(model, tok, args.hook, names, sae=sae, fit_tokens=args.fit_tokens,
                        corpus=args.corpus, seed=args.seed, ica_iter=args.ica_iter)
    result = compare_bases(model, tok, task, args.hook, bases, ns=ns, rank=args.rank)
    print(result.table())
    if result.all_features_recovery is not None:
        print(f"all SAE features (error term kept clean): {result.all_features_recovery:.3f} "
              "of the change recovered")
    if args.out:
        with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
            write_outputs(result, tmp)
    return result.to_dict()
