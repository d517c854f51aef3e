"""Issue 27: Cunningham et al. Fig. 3 by the authors' protocol, with the training budget it takes.

Stage `train` (hours on one core; run it in the background):
    nohup nice -n 10 python3 benchmarks/bench_cunningham.py train --work /work/scratch/bases/runs \
        > /work/scratch/bases/train.log 2>&1 &
trains, at resid.10 of SmolLM2 on `embedded-mix:0.7`, TopK SAEs with 4,608 latents (expansion 8)
at k 32 and k 128 (one run per budget trains both k from the same batches) on 200k, 1M and 4M
tokens; then picks an L1 (ReLU) coefficient on TRAINING activations (L0 in [30, 130], short
runs on the first 200k tokens) and trains that ReLU SAE on 1M tokens. The activations are
harvested once: each run's cache directory links the shards of the previous (shorter) run,
whose token windows are a prefix of its own.

Stage `eval`: greedy backward elimination (`saecircuits.elimination`) per basis (raw, PCA, ICA
fit on 16,384 embedded-mix:0.7 activations, every SAE) on fresh held-out IOI prompts (names,
places, objects and templates disjoint from the built-in task AND from benchmarks/ioi_heldout.py,
whose prompts chose the demo recipe); resumable, one JSON per basis.

Stage `report`: benchmarks/results_cunningham.json, the markdown table for RESULTS.md and
docs/cunningham-{units,edit,budget}.svg.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_bases import cpu_model  # noqa: E402

HOOK = "resid.10"
CORPUS = "embedded-mix:0.7"
BUDGETS = (200_000, 1_000_000, 4_000_000)
KS = [32, 128]
RELU_TOKENS = 1_000_000  # the dense ReLU step costs ~6x a TopK step here: 4M did not fit the CPU time
L1_RANGE = (30.0, 130.0)
SHARES = (0.5, 0.25)  # report units / edit needed to reach KL ≤ share · KL(clean ‖ counterfactual)
EVAL_SPLIT_TOKENS = 8192  # only sets the held-out split (as in the 200k run); no evaluation runs


# -- fresh held-out IOI prompts ----------------------------------------------------------------
# Names, places, objects and templates disjoint from the built-in `ioi` task AND from
# benchmarks/ioi_heldout.py (whose prompts chose the demo recipe in issue 12): nothing was ever
# chosen on these.
FRESH_NAMES = ("Jeffrey Timothy Nathan Jordan Austin Lauren Ella Mia Lily Claire Steve Bruce "
               "Wayne Keith Craig Neil Glenn Ross Todd Gordon Vincent Howard Russell Eugene Ralph "
               "Roy Johnny Jimmy Billy Jesse Lucas Logan Owen Isaac Adrian Julian Colin Sara Eva "
               "Holly Erin Tara Molly Jill Joan Ann Sue Beth Dana Vera Iris").split()
FRESH_PLACES = ["kitchen", "garage", "forest", "harbor", "bakery", "theater", "stadium", "bridge"]
FRESH_OBJECTS = ["cup", "lamp", "sock", "spoon", "toy", "card", "shell", "coat"]
FRESH_TEMPLATES = [
    "Last night {A} and {B} cooked dinner in the {P}. Then {S} passed the {O} to",
    "{A} met {B} near the {P}, and {S} lent a {O} to",
    "During the trip to the {P}, {A} and {B} argued, so {S} mailed a {O} to",
    "{A} and {B} cleaned the {P} together. Later {S} returned the {O} to",
    "After a long walk to the {P}, {A} and {B} rested, and {S} tossed a {O} to",
    "Once {A} and {B} reached the {P}, {S} brought a {O} to",
]


def fresh_records(tok, n: int, seed: int = 0) -> list[dict]:
    """`n` IOI records from the fresh lists (`ioi_heldout.heldout_records`'s generator): the patch
    prompt repeats the indirect object instead of the subject, so the answer flips."""
    from saecircuits.tasks.ioi import NAMES, OBJECTS, PLACES, TEMPLATES, single_token_names
    from ioi_heldout import (HELDOUT_NAMES, HELDOUT_OBJECTS, HELDOUT_PLACES, HELDOUT_TEMPLATES,
                             heldout_records)

    assert not set(FRESH_NAMES) & (set(NAMES) | set(HELDOUT_NAMES))
    assert not set(FRESH_PLACES) & (set(PLACES) | set(HELDOUT_PLACES))
    assert not set(FRESH_OBJECTS) & (set(OBJECTS) | set(HELDOUT_OBJECTS))
    assert not set(FRESH_TEMPLATES) & (set(TEMPLATES) | set(HELDOUT_TEMPLATES))
    assert len(single_token_names(tok, FRESH_NAMES)) == len(FRESH_NAMES)
    return heldout_records(tok, n, seed, FRESH_NAMES, FRESH_PLACES, FRESH_OBJECTS, FRESH_TEMPLATES)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------

def cache_meta(model, tok, cfg) -> dict:
    """The manifest `train_saes` writes for `cfg`'s activation cache (same windows, same key)."""
    import torch
    from trainers.activations import windows_key
    from trainers.corpus import load_corpus
    from saecircuits.models import model_name_of

    tc = load_corpus(tok, cfg.corpus)
    train_corpus, _ = tc.split(cfg.holdout, cfg.seed, min_holdout_tokens=cfg.eval_tokens)
    windows = train_corpus.windows(cfg.context, seed=cfg.seed, prepend_bos=cfg.prepend_bos)
    wpb = min(cfg.windows_per_block, windows.shape[0])
    steps = cfg.tokens // cfg.batch_size
    blocks = math.ceil(steps * cfg.batch_size / (wpb * (cfg.context - 1)))
    windows = windows[: blocks * wpb]
    del torch
    return {"model": model_name_of(model), "hooks": list(cfg.hooks), "dtype": "bfloat16",
            "windows_key": windows_key(windows), "windows_per_block": wpb, "autocast": cfg.autocast}


def link_cache(src: Path, dst: Path, meta: dict) -> int:
    """Start cache `dst` (for a longer run over the same window prefix) with `src`'s shards."""
    from saecircuits.fileio import write_json

    if (dst / "manifest.json").is_file():
        return json.loads((dst / "manifest.json").read_text())["blocks"]
    dst.mkdir(parents=True, exist_ok=True)
    blocks = 0
    if src is not None and (src / "manifest.json").is_file():
        old = json.loads((src / "manifest.json").read_text())
        assert all(old[k] == meta[k] for k in meta if k != "windows_key"), (old, meta)
        for i in range(old["blocks"]):
            name = f"shard_{i:05d}.safetensors"
            (dst / name).symlink_to((src / name).resolve())
        blocks = old["blocks"]
    write_json(dst / "manifest.json", {**meta, "blocks": blocks})
    return blocks


def train_l0(sae_dir: Path, cache: Path, hook: str = HOOK, shards: int = 4) -> float:
    """Mean L0 of an SAE on cached TRAINING activations (the first `shards` shards)."""
    import torch
    from saecircuits import SAESet
    from saecircuits.fileio import read_safetensors

    saes = SAESet.load(str(sae_dir))
    sae = saes[hook]
    l0s = []
    for i in range(shards):
        x = read_safetensors(cache / f"shard_{i:05d}.safetensors")[hook].float()
        with torch.no_grad():
            l0s.append(float((sae.encode(x) > 0).float().sum(-1).mean()))
    return sum(l0s) / len(l0s)


def _done(out: Path, architecture: str) -> bool:
    """The run saved its SAEs (and, for TopK, the k-128 variant)."""
    main = (out / HOOK / "cfg.json").is_file()
    return main and (architecture != "topk" or (out / "variants" / f"k{KS[1]}-x8" / HOOK / "cfg.json").is_file())


def stage_train(args) -> None:
    import torch
    import saecircuits as sc
    import trainers.evaluate
    from saecircuits.fileio import write_json
    from trainers import TrainConfig, train_saes

    torch.set_num_threads(1)
    # no in-training evaluation (8k held-out tokens took ~30 min per SAE under the day's load);
    # `stage_metrics` scores every SAE on the same held-out activations afterwards
    trainers.evaluate.evaluate_saes = lambda *a, **k: {}
    trainers.evaluate.write_reports = lambda *a, **k: None
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    times_path = work / "wall_times.json"
    times = json.loads(times_path.read_text()) if times_path.is_file() else {}
    model, tok = sc.load_model()
    log(f"CPU {cpu_model()}, torch threads {torch.get_num_threads()}")

    def run(name: str, cfg_kwargs: dict, cache: Path) -> Path:
        out = work / name
        if _done(out, cfg_kwargs["architecture"]):
            log(f"{name}: done already")
            return out
        cfg = TrainConfig(hooks=[HOOK], corpus=CORPUS, expansion=8, out=str(out),
                          cache_activations=str(cache), seed=0, eval_tokens=EVAL_SPLIT_TOKENS,
                          resume=(out / "checkpoint.safetensors").is_file(), **cfg_kwargs)
        log(f"{name}: {cfg_kwargs} (cache {cache}, resume {cfg.resume})")
        began = time.perf_counter()
        train_saes(model, tok, cfg)
        times[name] = round(times.get(name, 0.0) + time.perf_counter() - began, 1)
        write_json(times_path, times)
        log(f"{name}: {times[name]:.0f} s (wall, all attempts)")
        return out

    prev_cache = None
    for tokens in BUDGETS:
        cache = work / f"cache-{tokens}"
        cfg = TrainConfig(hooks=[HOOK], corpus=CORPUS, tokens=tokens, eval_tokens=EVAL_SPLIT_TOKENS)
        linked = link_cache(prev_cache, cache, cache_meta(model, tok, cfg))
        log(f"cache for {tokens:,} tokens: {linked} shards linked from {prev_cache}")
        run(f"topk-{tokens}", {"architecture": "topk", "k": list(KS), "tokens": tokens}, cache)
        prev_cache = cache

    # L1 coefficient from TRAINING activations only: L0 (on cached training activations) of
    # short ReLU runs on the first 200k tokens of the same stream, multiplying or dividing the
    # coefficient by 2.5 until L0 lies in L1_RANGE; then the full-budget run with it
    small, big = BUDGETS[0], RELU_TOKENS
    cache_small, cache_big = work / f"cache-{small}", work / f"cache-{big}"
    sweep_path = work / "l1_sweep.json"
    sweep = json.loads(sweep_path.read_text()) if sweep_path.is_file() else []
    l1 = 5.0
    for _ in range(6):
        done = {s["l1"]: s for s in sweep}
        if l1 not in done:
            out = run(f"relu-sweep-l1{l1:g}", {"architecture": "relu", "l1": l1, "tokens": small},
                      cache_small)
            done[l1] = {"l1": l1, "tokens": small, "train_l0": train_l0(out, cache_small)}
            sweep.append(done[l1])
            write_json(sweep_path, sweep)
            log(f"l1 {l1:g}: train L0 {done[l1]['train_l0']:.1f}")
        l0 = done[l1]["train_l0"]
        if L1_RANGE[0] <= l0 <= L1_RANGE[1]:
            break
        l1 = round(l1 * (2.5 if l0 > L1_RANGE[1] else 0.4), 4)
    log(f"chosen l1 {l1:g} (sweep {sweep})")
    out = run(f"relu-{big}", {"architecture": "relu", "l1": l1, "tokens": big}, cache_big)
    log(f"relu-{big}: train L0 {train_l0(out, cache_big):.1f}")


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------
DENSE = ("raw", "pca", "ica")


def sae_dirs(work: Path) -> dict[str, Path]:
    """Evaluation name -> SAE set directory, for the runs that exist."""
    out = {}
    for tokens in BUDGETS:
        run = work / f"topk-{tokens}"
        for k, folder in ((KS[0], run), (KS[1], run / "variants" / f"k{KS[1]}-x8")):
            if (folder / HOOK / "cfg.json").is_file():
                out[f"topk{k}-{tokens // 1000}k"] = folder
    relu = work / f"relu-{RELU_TOKENS}"
    if (relu / HOOK / "cfg.json").is_file():
        out[f"relu-{RELU_TOKENS // 1000}k"] = relu
    return out


def stage_eval(args) -> None:
    """Greedy elimination for each named basis (resumable), one JSON per basis."""
    import torch
    import saecircuits as sc
    from saecircuits.elimination import compare_bases_cunningham, parse_thresholds, prepare
    from saecircuits.fileio import write_json
    from saecircuits.tasks import from_records

    torch.set_num_threads(1)
    work = Path(args.work)
    folder = work / f"eval-n{args.n}"
    (folder / "partial").mkdir(parents=True, exist_ok=True)
    thresholds = parse_thresholds(args.thresholds)
    model, tok = sc.load_model()
    task = from_records(tok, fresh_records(tok, args.n, seed=0), name="ioi_fresh")
    began = time.perf_counter()
    setup = prepare(model, tok, task, HOOK)
    log(f"set-up {time.perf_counter() - began:.1f} s: runner {setup.runner.kind}, check "
        f"{setup.runner_check:.2e}, positions {setup.start}..{setup.x_clean.shape[1] - 1}")
    for name in args.bases.split(","):
        out = folder / f"{name}.json"
        if out.is_file():
            log(f"{name}: done already")
            continue
        basis = _bases_for(work, folder, [name], model, tok, args.fit_tokens).get(name)
        if basis is None:
            continue
        t0 = time.perf_counter()
        res = compare_bases_cunningham(model, tok, task, HOOK, [basis], thresholds, seed=0,
                                       batch=args.batch, state_dir=folder / "partial", setup=setup)
        curve = res.curves[name]
        write_json(out, {**curve.to_dict(), "kl_clean": res.kl_clean, "n_prompts": len(task),
                         "thresholds": thresholds, "runner": res.info,
                         "wall_seconds_last_call": round(time.perf_counter() - t0, 1)})
        log(f"{name}: {curve.tests} candidate evaluations ({curve.skipped} zero-edit, {curve.reused} "
            f"reused), {curve.seconds:.0f} s; final {curve.points[-1].units if curve.points else '-'} units")


def _bases_for(work: Path, folder: Path, names: list[str], model, tok, fit_tokens: int = 16384):
    """Bases by evaluation name: raw, PCA/ICA (fitted once, kept in folder/fits.safetensors),
    and the SAEs that exist."""
    import saecircuits as sc
    from saecircuits.bases import build_bases, linear_basis, sae_basis
    from saecircuits.fileio import read_safetensors, write_safetensors

    fits = folder / "fits.safetensors"
    saved = read_safetensors(fits) if fits.is_file() else {}
    saes, out = sae_dirs(work), {}
    for name in names:
        if name == "raw":
            basis = build_bases(model, tok, HOOK, ["raw"])[0]
        elif name in DENSE:
            if f"{name}/w" not in saved:
                t0 = time.perf_counter()
                b = build_bases(model, tok, HOOK, [name], fit_tokens=fit_tokens, corpus=CORPUS, seed=0)[0]
                saved |= {f"{name}/mean": b.mean, f"{name}/w": b.w, f"{name}/dec": b.dec}
                write_safetensors(fits, saved)
                log(f"{name}: fitted on {fit_tokens:,} {CORPUS} activations in "
                    f"{time.perf_counter() - t0:.0f} s")
            basis = linear_basis(name, saved[f"{name}/mean"], saved[f"{name}/w"], saved[f"{name}/dec"])
        elif name in saes:
            basis = sae_basis(sc.SAESet.load(saes[name], hooks=[HOOK])[HOOK])
        else:
            log(f"{name}: no such basis yet (have {sorted(saes)})")
            continue
        basis.name = name
        out[name] = basis
    return out


def stage_ranking(args) -> None:
    """The attribution-ranked variant (units ranked once; KL and edit per n) for every basis."""
    import torch
    import saecircuits as sc
    from saecircuits.bases import compare_bases
    from saecircuits.fileio import write_json
    from saecircuits.tasks import from_records

    torch.set_num_threads(1)
    work = Path(args.work)
    folder = work / f"eval-n{args.fit_n}"
    model, tok = sc.load_model()
    task = from_records(tok, fresh_records(tok, args.n, seed=0), name="ioi_fresh")
    bases = _bases_for(work, folder, args.bases.split(","), model, tok)
    t0 = time.perf_counter()
    res = compare_bases(model, tok, task, HOOK, list(bases.values()), ns=(1, 2, 4, 8, 16, 32, 64, 128, 256))
    log(f"ranking variant, {len(task)} prompts, {len(bases)} bases: {time.perf_counter() - t0:.0f} s")
    print(res.table())
    from saecircuits.bases import kl_headline

    print(kl_headline(res.kl_points(), res.kl_clean, 0.25))
    write_json(work / f"ranking-n{args.n}.json", res.to_dict())


def sae_metrics(work: Path, names: list[str], n_tokens: int = 4096) -> dict[str, dict]:
    """L0, explained variance and dead share of every SAE on the same held-out corpus
    activations (the documents `train_saes` held out of embedded-mix:0.7, seed 0)."""
    import torch
    import saecircuits as sc
    from saecircuits.bases import corpus_activations
    from trainers.corpus import load_corpus

    model, tok = sc.load_model()
    held = load_corpus(tok, CORPUS).split(0.02, 0, min_holdout_tokens=EVAL_SPLIT_TOKENS)[1]
    x = corpus_activations(model, tok, HOOK, n_tokens, corpus=held, context=256)
    var = (x - x.mean(0)).pow(2).sum(-1).mean()
    dirs, out = sae_dirs(work), {}
    for name in names:
        if name not in dirs:
            continue
        sae = sc.SAESet.load(dirs[name], hooks=[HOOK])[HOOK]
        with torch.no_grad():
            f = sae.encode(x)
            rec = sae.decode(f)
        meta = sae.cfg.metadata
        out[name] = {"l0": float((f > 0).float().sum(-1).mean()),
                     "explained_variance": float(1 - (x - rec).pow(2).sum(-1).mean() / var),
                     "dead_fraction": float(((f > 0).sum(0) == 0).float().mean()),
                     "train_seconds": meta.get("train_seconds"), "tokens": meta.get("tokens"),
                     "architecture": sae.cfg.architecture, "k": sae.cfg.k, "d_sae": sae.cfg.d_sae}
    return out


def interp_reach(points: list[tuple[int, float, float]], target: float) -> tuple[float | None, float | None]:
    """Units and edit magnitude at which the elimination path (every unit patched → none)
    leaves KL ≤ target for good: from its last state with KL ≤ target, interpolated toward the
    next state (linear in KL; log-linear in units). None when no state reaches the target."""
    path = sorted(points, key=lambda p: -p[0])
    last = max((i for i, p in enumerate(path) if p[1] <= target), default=None)
    if last is None:
        return None, None
    if last + 1 == len(path):
        return path[last][0], path[last][2]
    (u0, k0, e0), (u1, k1, e1) = path[last], path[last + 1]
    w = (target - k0) / (k1 - k0)
    lu = math.log(max(u0, 1)) * (1 - w) + math.log(max(u1, 1)) * w
    return math.exp(lu), e0 * (1 - w) + e1 * w


def _label(name: str) -> str:
    if name in DENSE:
        return name.upper() if name != "raw" else "raw dims"
    return name.replace("topk", "TopK k").replace("relu-", "ReLU/L1 ").replace("-", " @ ")


def stage_report(args) -> None:
    """results JSON + markdown rows + docs/ plots from the eval folder."""
    from saecircuits.bases import line_chart
    from saecircuits.fileio import write_json, write_text

    work = Path(args.work)
    folder = work / f"eval-n{args.n}"
    curves = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    order = [b for b in DENSE if b in curves] + sorted((b for b in curves if b not in DENSE),
                                                       key=lambda b: (b.split("-")[0], int(b.split("-")[1][:-1])))
    curves = {b: curves[b] for b in order}
    metrics = sae_metrics(work, [b for b in order if b not in DENSE]) if not args.no_metrics else {}
    kl_clean = next(iter(curves.values()))["kl_clean"]
    targets = [share * kl_clean for share in SHARES]

    def pts(c):  # (units, KL, edit): every unit patched, then one point per threshold
        return [(c["all"]["units"], c["all"]["kl"], c["all"]["edit"])] + \
               [(p["units"], p["kl"], p["edit"]) for p in c["points"]]

    reach = {b: [interp_reach(pts(c), t) for t in targets] for b, c in curves.items()}
    head = (["basis", "L0", "EV", "active units", "KL all patched", "candidate evaluations", "seconds"]
            + [f"KL ≤ {t:.2f}: units / edit" for t in targets])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b, c in curves.items():
        m = metrics.get(b, {})
        cells = [_label(b), f"{m['l0']:.0f}" if m else "", f"{m['explained_variance']:.3f}" if m else "",
                 f"{c['active_units']:,} / {c['size']:,}", f"{c['all']['kl']:.3f}", f"{c['tests']:,}",
                 f"{c['seconds']:.0f}"]
        cells += ["not reached" if n is None else f"{n:,.0f} / {e:.2f}" for n, e in reach[b]]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    verdict = []
    dense = [b for b in DENSE if b in curves]
    for b in (b for b in curves if b not in DENSE):
        for (n, e), t in zip(reach[b], targets):
            if n is None:
                verdict.append(f"{_label(b)}, KL ≤ {t:.2f}: not reached")
                continue
            beat_u = [d for d in dense if reach[d][targets.index(t)][0] is None or n < reach[d][targets.index(t)][0]]
            beat_e = [d for d in dense if reach[d][targets.index(t)][1] is None or e < reach[d][targets.index(t)][1]]
            verdict.append(f"{_label(b)}, KL ≤ {t:.2f}: fewer units than {', '.join(beat_u) or 'none'}; "
                           f"smaller edit than {', '.join(beat_e) or 'none'}")
    print(table)
    print("\n".join(verdict))
    colors = {_label(b): c for b, c in zip(order, ["#1f77b4", "#2ca02c", "#9467bd", "#fdae6b", "#fd8d3c",
                                                  "#e6550d", "#a63603", "#fcbba1", "#fb6a4a", "#cb181d",
                                                  "#67000d"])}
    docs = Path(args.docs)
    series_u = {_label(b): [(max(u, 1), kl) for u, kl, _ in pts(c) if u > 0] for b, c in curves.items()}
    series_e = {_label(b): [(e, kl) for _, kl, e in pts(c)] for b, c in curves.items()}
    title = f"IOI (fresh held-out, {curves[order[0]]['n_prompts']} prompts) @ {HOOK}, greedy elimination"
    write_text(docs / "cunningham-units.svg", line_chart(series_u, title, "units patched (log scale)",
               "KL(edited ‖ counterfactual)", logx=True, colors=colors, width=760))
    write_text(docs / "cunningham-edit.svg", line_chart(series_e, title, "edit magnitude (mean ‖Δx‖₂)",
               "KL(edited ‖ counterfactual)", colors=colors, width=760))
    budget = {}
    for k in KS:
        s_ = [(int(b.split("-")[1][:-1]) * 1000, reach[b][1][0]) for b in curves
              if b.startswith(f"topk{k}-") and reach[b][1][0] is not None]
        if s_:
            budget[f"TopK k{k}"] = s_
    xs = [x for s_ in budget.values() for x, _ in s_] or [BUDGETS[0], BUDGETS[-1]]
    for d in dense:
        if reach[d][1][0] is not None:
            budget[_label(d)] = [(min(xs), reach[d][1][0]), (max(xs), reach[d][1][0])]
    for b in curves:
        if b.startswith("relu") and reach[b][1][0] is not None:
            budget[_label(b)] = [(int(b.split("-")[1][:-1]) * 1000, reach[b][1][0])]
    write_text(docs / "cunningham-budget.svg", line_chart(
        budget, f"units needed for KL ≤ {targets[1]:.2f} vs SAE training tokens", "training tokens",
        "units patched", logx=True, width=760))
    write_json(Path(args.json), {"hook": HOOK, "cpu": cpu_model(), "kl_clean": kl_clean,
                                 "targets": targets, "metrics": metrics, "curves": curves,
                                 "table": table, "verdict": verdict})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="stage", required=True)
    t = sub.add_parser("train")
    t.add_argument("--work", default="/work/scratch/bases/runs")
    e = sub.add_parser("eval")
    e.add_argument("--work", default="/work/scratch/bases/runs")
    e.add_argument("--bases", default="raw,pca,ica")
    e.add_argument("--n", type=int, default=16, help="prompts")
    e.add_argument("--thresholds", default="log:1e-5:1:50")
    e.add_argument("--batch", type=int, default=16)
    e.add_argument("--fit-tokens", type=int, default=16384)
    k = sub.add_parser("ranking")
    k.add_argument("--work", default="/work/scratch/bases/runs")
    k.add_argument("--bases", default="raw,pca,ica")
    k.add_argument("--n", type=int, default=16, help="prompts")
    k.add_argument("--fit-n", type=int, default=8, help="eval folder whose PCA/ICA fits to reuse")
    r = sub.add_parser("report")
    r.add_argument("--work", default="/work/scratch/bases/runs")
    r.add_argument("--n", type=int, default=16, help="prompts (picks the eval folder)")
    r.add_argument("--docs", default="docs")
    r.add_argument("--json", default="benchmarks/results_cunningham.json")
    r.add_argument("--no-metrics", action="store_true")
    args = ap.parse_args()
    {"train": stage_train, "eval": stage_eval, "ranking": stage_ranking,
     "report": stage_report}[args.stage](args)


if __name__ == "__main__":
    main()
