"""`saecircuits explain`: explain units with a language model and score the explanations by
simulation (Bills et al. 2023); `--bases sae,neurons,pca,ica` compares bases (Cunningham et
al. Fig. 2)."""
from __future__ import annotations

import argparse

HELP = "explain SAE features with an LM and score the explanations by simulation"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import add_model_arguments

    add_model_arguments(parser)
    parser.add_argument("--saes", required=True, help="SAE set directory (one subfolder per hook)")
    pick = parser.add_mutually_exclusive_group(required=True)
    pick.add_argument("--features", help="comma-separated HOOK:INDEX list of SAE features")
    pick.add_argument("--top", type=int, help="N units per basis per hook, chosen by --select")
    parser.add_argument("--hooks", default=None,
                        help="hooks for --top (default: every hook of the SAE set)")
    parser.add_argument("--bases", default="sae",
                        help="with --top: comma list of sae,neurons,pca,ica (default sae)")
    parser.add_argument("--select", choices=["random", "frequent"], default="random",
                        help="--top picks live units at random (default, as the papers) or the "
                             "most frequently active")
    parser.add_argument("--out", required=True, help="output directory (a rerun resumes it)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start again in an --out holding another run (cache kept)")
    parser.add_argument("--backend", choices=["local", "endpoint"], default="local",
                        help="explainer: local HF chat model (default: the embedded SmolLM2, a "
                             "weak explainer) or an OpenAI-compatible endpoint")
    parser.add_argument("--explainer-model", default=None,
                        help="local: HF id/path; endpoint: model name "
                             "(default: env SAECIRCUITS_OPENAI_MODEL, else the embedded SmolLM2 locally)")
    parser.add_argument("--base-url", default=None,
                        help="endpoint base URL, e.g. http://127.0.0.1:8080/v1 "
                             "(default: env SAECIRCUITS_OPENAI_BASE_URL)")
    parser.add_argument("--api-key", default=None, help="endpoint key (default: env SAECIRCUITS_OPENAI_API_KEY)")
    parser.add_argument("--retries", type=int, default=3, help="retries per request (default 3)")
    parser.add_argument("--min-interval", type=float, default=0.0,
                        help="minimum seconds between endpoint requests (rate limit)")
    parser.add_argument("--cache", default=None, help="answer cache file (default OUT/cache.json)")
    parser.add_argument("--corpus", default=None,
                        help="text source (default: the embedded stdlib + pydoc corpus)")
    parser.add_argument("--max-docs", type=int, default=400)
    parser.add_argument("--windows", type=int, default=256, help="token windows (default 256)")
    parser.add_argument("--context", type=int, default=64, help="tokens per window (default 64)")
    parser.add_argument("--n-top", type=int, default=10,
                        help="top excerpts per unit, half to explain, half to score (default 10)")
    parser.add_argument("--n-random", type=int, default=5,
                        help="random excerpts added to the scoring set (default 5)")
    parser.add_argument("--ica-components", type=int, default=None,
                        help="ICA components to fit (default: as many as the hook's width allows)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> dict:
    from trainers.corpus import load_documents

    from ..errors import ConfigError
    from ..export.dashboards import parse_features
    from ..interp.backends import make_backend
    from ..interp.contexts import ExcerptConfig
    from ..interp.pipeline import ExplainConfig, run_explain
    from ..models import load_model, model_device, unwrap
    from ..sae import SAESet

    units = None
    if args.features:
        units = {}
        for hook, index in parse_features(args.features):
            units.setdefault(hook, []).append(index)
        hooks = list(units)
    else:
        hooks = [h.strip() for h in args.hooks.split(",") if h.strip()] if args.hooks else None
    bases = [b.strip() for b in args.bases.split(",") if b.strip()]
    if args.top is not None and args.top < 1:
        raise ConfigError(f"--top must be >= 1, got {args.top}")
    model, tok = load_model(args.model, device=args.device)
    saes = SAESet.load(args.saes, model=model, hooks=hooks, device=model_device(model))
    hooks = hooks or list(saes)
    if args.backend == "local" and args.explainer_model is None and args.model is None:
        backend = make_backend("local", local_model=unwrap(model), local_tokenizer=tok)
    else:
        backend = make_backend(args.backend, base_url=args.base_url, model=args.explainer_model,
                               api_key=args.api_key, retries=args.retries,
                               min_interval=args.min_interval, device=args.device)
    cfg = ExplainConfig(hooks=hooks, bases=bases, units=units, top=args.top or 0,
                        select=args.select, context=args.context, windows=args.windows,
                        ica_components=args.ica_components, seed=args.seed,
                        excerpts=ExcerptConfig(n_top=args.n_top, n_random=args.n_random,
                                               seed=args.seed))
    texts = [d.text for d in load_documents(args.corpus, max_documents=args.max_docs)]
    result = run_explain(model, tok, saes, texts, backend, cfg, args.out, saes_dir=args.saes,
                         cache_path=args.cache, overwrite=args.overwrite,
                         progress=not args.quiet)
    if not args.json:
        for kind, s in result["summary"].items():
            lo, hi = s["ci95"]
            print(f"{kind}: n={s['n']} mean score {s['mean']:.3f} "
                  f"(95% CI {lo if lo is None else round(lo, 3)}..{hi if hi is None else round(hi, 3)})")
        if result["note"]:
            print("note: " + result["note"])
        print(f"wrote {result['n_units']} scored units to {args.out}")
    return result
