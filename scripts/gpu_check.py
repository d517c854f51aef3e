"""GPU check: train, trace, steer and evaluate on a device and compare with the same run on CPU.

Everything is built here (no downloads, no SmolLM2): a word-level tokenizer over a small
vocabulary, a tiny random Llama from a config (seed 0), and seeded random text. Two kinds of
comparison, each printed as a PASS/FAIL row:

    same SAEs     SAEs trained on CPU, then trace / steer / eval run on CPU and on DEVICE with
                  them: node effects, faithfulness, tracked logits, CE/EV metrics must agree
                  tightly (float32 kernels differ only in summation order).
    own training  SAEs trained on DEVICE: their eval metrics must agree with the CPU-trained
                  ones within a loose tolerance (training amplifies rounding differences).

    python3 scripts/gpu_check.py                      # cuda vs cpu, ~20k training tokens
    python3 scripts/gpu_check.py --device cpu         # smoke test (cpu vs cpu: determinism)

Exit status 0 when every row passes, 1 otherwise.
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = 400


def build_tokenizer(folder: Path):
    """A word-level fast tokenizer: `w0..w{WORDS-1}`, `A`..`E` and the special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<unk>", "<pad>", "<s>", "</s>"]
                                          + list("ABCDE") + [f"w{i}" for i in range(WORDS)])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>",
                                  bos_token="<s>", eos_token="</s>")
    tok.save_pretrained(folder)
    return tok


def build_model(folder: Path, vocab: int) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)


def texts(n_docs: int, seed: int) -> list[str]:
    """Seeded documents of 20-60 words with some repeated structure (bigram chains)."""
    rng = random.Random(seed)
    nxt = {i: [rng.randrange(WORDS) for _ in range(3)] for i in range(WORDS)}
    docs = []
    for _ in range(n_docs):
        w = rng.randrange(WORDS)
        words = []
        for _ in range(rng.randint(20, 60)):
            words.append(f"w{w}")
            w = rng.choice(nxt[w]) if rng.random() < 0.8 else rng.randrange(WORDS)
        docs.append(" ".join(words))
    return docs


def task(tok, n: int = 8):
    """Contrastive task: the same prefix ending in A or B; answers are two fixed words."""
    from saecircuits.tasks.base import Task

    rng = random.Random(1)
    clean, patch = [], []
    for _ in range(n):
        prefix = " ".join(f"w{rng.randrange(WORDS)}" for _ in range(6))
        clean.append(f"{prefix} A")
        patch.append(f"{prefix} B")
    ids = lambda w: torch.full((n,), tok.convert_tokens_to_ids(w), dtype=torch.long)
    return Task("synthetic", clean, patch, ids("w1"), ids("w2"))


def run(device: str, folder: Path, docs, saes_in, args, out: Path) -> dict:
    """Train (unless `saes_in`), then trace, steer and eval on `device`. Returns plain numbers."""
    from saecircuits import load_model
    from saecircuits.attribution import TraceConfig, trace_circuit
    from saecircuits.sae import SAESet
    from saecircuits.steering import Intervention, steer
    from trainers import TrainConfig, train_saes
    from trainers.evaluate import evaluate_saes

    model, tok = load_model(str(folder), device=device)
    res: dict = {}
    if saes_in is None:
        cfg = TrainConfig(hooks=["resid.0", "resid.1"], architecture="topk", k=8, d_sae=128,
                          tokens=args.tokens, context=32, eval_tokens=0, out=str(out),
                          progress=False, corpus=docs, seed=0, holdout=0.05)
        saes = train_saes(model, tok, cfg)
        res["sae_devices"] = sorted({str(s.device) for s in saes.values()})
    else:
        saes = SAESet({h: s for h, s in saes_in.items()}).to(device)
    ev = evaluate_saes(model, tok, saes, docs[-args.eval_docs:], n_tokens=args.eval_tokens,
                       context=32, progress=False)
    for hook, m in ev.items():
        for key in ("explained_variance", "ce_loss_score", "l0", "mse"):
            res[f"eval {hook} {key}"] = float(m[key])
    graph, summary = trace_circuit(model, tok, saes, task(tok), TraceConfig(
        method="attrib", ablation="patch", n=8, top_k=10, batch_size=8, edge_influence=1.0,
        progress=False))
    res["trace metric_clean"] = summary["metric_clean"]
    res["trace faithfulness"] = summary["faithfulness"]
    res["trace effects"] = {n: d["effect"] for n, d in graph.nodes(data=True)
                            if d["kind"] in ("feature", "error")}
    res["trace edges"] = {f"{u}->{v}": w for u, v, w in graph.edges(data="weight")}
    feat = max((d for _, d in graph.nodes(data=True) if d["kind"] == "feature"),
               key=lambda d: abs(d["effect"]))
    out_steer = steer(model, saes, task(tok).clean[:4],
                      [Intervention(feat["hook"], feat["feature"], mode="set", value=5.0)],
                      max_new_tokens=6, track=["w1", "w2"], tokenizer=tok)
    res["steer feature"] = f"{feat['hook']}:{feat['feature']}"
    res["steer ids"] = out_steer.steered_ids.tolist()
    res["steer logits"] = out_steer.steered_logits.flatten().tolist()
    res["saes"] = {h: s.to("cpu") for h, s in saes.items()}
    return res


def compare(a: dict, b: dict, tight: float, loose: float, trained: bool) -> list[tuple]:
    """Rows (check, value A, value B, max abs diff, tolerance, pass)."""
    rows = []

    def close(name, x, y, tol):
        x, y = float(x), float(y)
        diff = abs(x - y)
        rows.append((name, f"{x:.6g}", f"{y:.6g}", f"{diff:.2e}", f"{tol:g}",
                     math.isfinite(diff) and diff <= tol * max(1.0, abs(x))))

    tol = loose if trained else tight
    for key in sorted(k for k in a if k.startswith("eval ")):
        close(key, a[key], b[key], tol)
    if trained:
        return rows
    for key in ("trace metric_clean", "trace faithfulness"):
        close(key, a[key], b[key], tol)
    ea, eb = a["trace effects"], b["trace effects"]
    same = set(ea) == set(eb)
    rows.append(("trace node set", f"{len(ea)} nodes", f"{len(eb)} nodes", "-", "equal", same))
    common = sorted(set(ea) & set(eb))
    worst = max((abs(ea[n] - eb[n]) for n in common), default=float("nan"))
    scale = max((abs(ea[n]) for n in common), default=1.0)
    rows.append(("trace node effects (max)", f"{scale:.6g}", "", f"{worst:.2e}", f"{tol:g}",
                 bool(common) and worst <= tol * max(1.0, scale)))
    wa, wb = a["trace edges"], b["trace edges"]
    common = sorted(set(wa) & set(wb))
    worst = max((abs(wa[k] - wb[k]) for k in common), default=0.0)
    rows.append(("trace edge weights (max)", f"{len(wa)} edges", f"{len(wb)} edges",
                 f"{worst:.2e}", f"{tol:g}", set(wa) == set(wb) and worst <= tol * max(
                     1.0, max((abs(v) for v in wa.values()), default=1.0))))
    rows.append(("steer feature", a["steer feature"], b["steer feature"], "-", "equal",
                 a["steer feature"] == b["steer feature"]))
    rows.append(("steer generated ids", "", "", "-", "equal", a["steer ids"] == b["steer ids"]))
    la, lb = torch.tensor(a["steer logits"]), torch.tensor(b["steer logits"])
    worst = float((la - lb).abs().max()) if la.shape == lb.shape else float("inf")
    rows.append(("steer tracked logits (max)", "", "", f"{worst:.2e}", f"{tol:g}",
                 worst <= tol * max(1.0, float(la.abs().max()))))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device compared with cpu (default: %(default)s)")
    parser.add_argument("--tokens", type=int, default=20_000, help="training tokens (default: %(default)s)")
    parser.add_argument("--eval-tokens", type=int, default=2_000, help="(default: %(default)s)")
    parser.add_argument("--docs", type=int, default=800, help="corpus documents (default: %(default)s)")
    parser.add_argument("--eval-docs", type=int, default=60, help="(default: %(default)s)")
    parser.add_argument("--tight", type=float, default=1e-3,
                        help="relative tolerance, same SAEs (default: %(default)s)")
    parser.add_argument("--loose", type=float, default=0.05,
                        help="relative tolerance, SAEs trained on each device (default: %(default)s)")
    parser.add_argument("--skip-own", action="store_true",
                        help="skip training on the device (the fast smoke test)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: error: --device {args.device} but torch sees no CUDA device")
        return 2
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        tmp = Path(tmp)
        folder = tmp / "tiny-llama"
        folder.mkdir()
        tok = build_tokenizer(folder)
        build_model(folder, len(tok))
        docs = texts(args.docs, seed=0)
        print(f"tiny Llama, vocab {len(tok)}; {args.tokens} training tokens; cpu vs {args.device}")
        cpu = run("cpu", folder, docs, None, args, tmp / "cpu")
        dev_same = run(args.device, folder, docs, cpu["saes"], args, tmp / "dev-same")
        dev_own = None if args.skip_own else run(args.device, folder, docs, None, args, tmp / "dev-own")
    rows = [("same SAEs: " + r[0], *r[1:]) for r in compare(cpu, dev_same, args.tight, args.loose, False)]
    if dev_own is not None:
        rows += [("own training: " + r[0], *r[1:])
                 for r in compare(cpu, dev_own, args.tight, args.loose, True)]
        on_device = all(d.split(":")[0] == args.device.split(":")[0] for d in dev_own["sae_devices"])
        rows.append(("own training: SAEs on the training device", "cpu",
                     ",".join(dev_own["sae_devices"]), "-", "device", on_device))
    width = max(len(r[0]) for r in rows)
    print(f"{'check':<{width}}  {'cpu':>12}  {args.device:>12}  {'diff':>9}  {'tol':>6}  result")
    for name, x, y, diff, tol, ok in rows:
        print(f"{name:<{width}}  {x:>12}  {y:>12}  {diff:>9}  {tol:>6}  {'PASS' if ok else 'FAIL'}")
    failed = [r[0] for r in rows if not r[-1]]
    print(f"gpu_check: {'FAIL (' + ', '.join(failed) + ')' if failed else 'PASS'} "
          f"({len(rows) - len(failed)}/{len(rows)} checks)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
