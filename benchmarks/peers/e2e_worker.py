"""One implementation's end-to-end SAE training run on a fixed token set (run inside its venv).

Reads `train` ([rows, context] int64 input_ids) from the safetensors file `--data`, loads
SmolLM2 from a local HF directory, trains one TopK SAE (k 32, d_sae 4,608) on the output of
decoder layer 10 with that implementation's own trainer, saves it in its own format under
`--out`, and writes a JSON line of timings to `--result`:
  load_s  process start (before `import torch`) -> model loaded and tokens read
  train_s model loaded -> SAE saved (harvest forwards + SAE steps + saving: the timed part)
  total_s process start -> SAE saved
With `--check` it then (untimed) computes the peer's own explained variance on the held-out
rows with the peer's own SAE module, as a check of the shared evaluator and of the conversion.

    python e2e_worker.py IMPL --data tokens.safetensors --out DIR --result r.json [--threads 2]
IMPL: ours | ours-fp32 | sparsify | saelens | saelens-bf16 (its autocast_lm=True)
"""
from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

D_SAE, K, LAYER = 4608, 32, 10


def hf_model(path: str):
    from transformers import AutoModelForCausalLM

    # float32 weights for every implementation (the directory's dtype; transformers 5 would
    # otherwise pick it from config.json anyway): no implementation gets lower-precision weights
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def run_ours(args, train: torch.Tensor, fp32: bool) -> tuple[float, dict]:
    """saecircuits `train_saes` with its defaults; the block/batch sizes are set so that it
    harvests exactly the given rows (its default 64-window block wastes a remainder)."""
    import numpy as np

    from saecircuits.models import load_model
    from trainers import TrainConfig, train_saes
    from trainers.corpus import TokenCorpus

    model, tok = load_model(device="cpu")
    rows, ctx = train.shape
    corpus = TokenCorpus(train.flatten().numpy().astype(np.int32), np.array([0, train.numel()], np.int64),
                         ["fixed-token-set"], None, tok.bos_token_id, "bench-e2e")
    # our default batch (1,020 activations = 4 windows of 255: position 0 of every window is
    # skipped, as in training and evaluation everywhere in saecircuits); block = the largest
    # multiple of 16 windows <= 128 that divides the row count, so every row is harvested once
    wpb = max(w for w in range(16, 129, 16) if rows % w == 0) if rows % 16 == 0 else None
    if wpb is None:
        raise SystemExit(f"ours: the row count {rows} must be a multiple of 16")
    cfg = TrainConfig(hooks=[f"resid.{LAYER}"], architecture="topk", k=K, d_sae=D_SAE,
                      tokens=rows * (ctx - 1), context=ctx, holdout=0.0, eval_tokens=0, out=args.out,
                      windows_per_block=wpb, progress=False,
                      **({"precision": "fp32"} if fp32 else {}))
    batch = cfg.batch_size
    t_loaded = time.perf_counter()
    sets = train_saes(model, tok, cfg, corpus=corpus)
    sae = sets[f"resid.{LAYER}"]
    own = {"final_train_ev": sae.cfg.metadata.get("final_train_ev"),
           "activations_trained": (rows * (ctx - 1) // batch) * batch,
           "settings": f"defaults; batch {batch}, windows_per_block {wpb}"
                       + ("; precision fp32" if fp32 else f"; precision {cfg.precision}")}
    return t_loaded, own


def run_sparsify(args, train: torch.Tensor) -> tuple[float, dict]:
    """sparsify's own `Trainer.fit` with its defaults (signum, auxk_alpha 0, batch 32 sequences)."""
    from datasets import Dataset
    from sparsify import SparseCoderConfig, Trainer, TrainConfig

    model = hf_model(args.model)
    ds = Dataset.from_dict({"input_ids": train.tolist()}).with_format("torch")
    t_loaded = time.perf_counter()
    cfg = TrainConfig(SparseCoderConfig(k=K, num_latents=D_SAE), hookpoints=[f"layers.{LAYER}"],
                      log_to_wandb=False, save_dir=args.out, run_name="run")
    trainer = Trainer(cfg, ds, model)
    trainer.fit()
    own = {"activations_trained": (len(ds) // cfg.batch_size) * cfg.batch_size * train.shape[1],
           "settings": f"defaults (optimizer {cfg.optimizer}, lr auto, auxk_alpha {cfg.auxk_alpha}, "
                       f"batch_size {cfg.batch_size} sequences)"}
    args._peer = ("sparsify", trainer.saes[f"layers.{LAYER}"], model)
    return t_loaded, own


def run_saelens(args, train: torch.Tensor, autocast_lm: bool = False) -> tuple[float, dict]:
    """SAELens' own `LanguageModelSAETrainingRunner` (TopK; its HookedProxyLM path, since
    TransformerLens' HookedTransformer has no SmolLM2 entry) with its defaults except
    training_tokens and context_size (the budget) and prepend_bos=False (the rows are given).
    autocast_lm: its own option (default off) to run the harvesting forward under bf16 autocast."""
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig
    from sae_lens.load_model import load_model
    from sae_lens.saes.topk_sae import TopKTrainingSAEConfig

    hook = f"model.layers.{LAYER}"
    model = load_model("AutoModelForCausalLM", args.model, device="cpu",
                       model_from_pretrained_kwargs={"dtype": torch.float32}, hook_names=[hook])
    ds = Dataset.from_dict({"input_ids": train.tolist()})
    rows, ctx = train.shape
    t_loaded = time.perf_counter()
    batch = 4096  # its default train_batch_size_tokens
    # its mixing buffer keeps activations back for mixing, so a budget of every row's tokens would
    # wrap into a second epoch: train on whole batches that the rows cover (49 of 4,096 for 800x256)
    tokens = max(1, rows * ctx // batch - 1) * batch  # >= 1 step (tiny budgets then wrap)
    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=576, d_sae=D_SAE, k=K, dtype="float32", device="cpu"),
        model_name=args.model, model_class_name="AutoModelForCausalLM", hook_name=hook,
        dataset_path="local-fixed-token-set", is_dataset_tokenized=True, streaming=False,
        context_size=ctx, prepend_bos=False, training_tokens=tokens, train_batch_size_tokens=batch,
        device="cpu", dtype="float32", output_path=args.out, checkpoint_path=None, autocast_lm=autocast_lm,
        logger=LoggingConfig(log_to_wandb=False))
    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=ds, override_model=model)
    sae = runner.run()
    own = {"activations_trained": tokens,
           "settings": f"defaults (Adam lr {cfg.lr}, constant schedule, aux-k coefficient "
                       f"{cfg.sae.aux_loss_coefficient}, normalize_activations "
                       f"{cfg.sae.normalize_activations}); training_tokens {tokens}, context {ctx}, "
                       "prepend_bos False" + ("; autocast_lm True" if autocast_lm else "")}
    args._peer = ("saelens", sae, model)
    return t_loaded, own


@torch.no_grad()
def peer_check(args, heldout: torch.Tensor) -> dict:
    """The peer's own SAE module on held-out layer-10 outputs (positions 1.. of each row, as
    in our evaluator): explained variance = 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² over all tokens."""
    kind, sae, model = args._peer
    hf = model.model if kind == "saelens" else model  # HookedProxyLM wraps the HF model
    layer = hf.model.layers[LAYER]
    got = {}

    def grab(_m, _i, out):
        got["x"] = (out[0] if isinstance(out, tuple) else out).detach()
        raise StopIteration  # nothing after layer 10 is needed
    xs = []
    handle = layer.register_forward_hook(grab)
    try:
        for i in range(0, heldout.shape[0], 8):
            try:
                hf(heldout[i:i + 8])
            except StopIteration:
                pass
            xs.append(got["x"][:, 1:].reshape(-1, got["x"].shape[-1]).float())
    finally:
        handle.remove()
    x = torch.cat(xs)
    if kind == "sparsify":
        out = sae(x)
        x_hat = out.sae_out
        own_fvu = float(out.fvu)  # sparsify's own FVU over the whole held-out set
    else:
        sae.eval()
        x_hat = sae.decode(sae.encode(x))
        own_fvu = None
    ev = 1 - float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    res = {"peer_module_ev": ev, "tokens": x.shape[0]}
    if own_fvu is not None:
        res["peer_reported_fvu"] = own_fvu
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("impl", choices=["ours", "ours-fp32", "sparsify", "saelens", "saelens-bf16"])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--result", required=True)
    p.add_argument("--model", default=str(Path.home() / ".cache/saecircuits/models/SmolLM2-135M-Instruct"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--check", action="store_true", help="peer's own EV on the held-out rows (untimed)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from safetensors.torch import load_file

    data = load_file(args.data)
    train = data["train"]
    run = {"ours": lambda: run_ours(args, train, False), "ours-fp32": lambda: run_ours(args, train, True),
           "sparsify": lambda: run_sparsify(args, train), "saelens": lambda: run_saelens(args, train),
           "saelens-bf16": lambda: run_saelens(args, train, autocast_lm=True)}
    t_loaded, own = run[args.impl]()
    t_end = time.perf_counter()
    res = {"impl": args.impl, "threads": torch.get_num_threads(), "rows": train.shape[0],
           "tokens": train.numel(), "load_s": t_loaded - T0, "train_s": t_end - t_loaded,
           "total_s": t_end - T0, "tokens_per_s": train.numel() / (t_end - t_loaded),
           "python": sys.executable, "torch": torch.__version__, "own": own}
    if args.check and getattr(args, "_peer", None) is not None:
        res["own"]["check"] = peer_check(args, data["heldout"])
    Path(args.result).write_text(json.dumps(res, indent=1))
    print(f"{args.impl}: train {res['train_s']:.1f} s, total {res['total_s']:.1f} s, "
          f"{res['tokens_per_s']:.0f} tok/s", flush=True)
    os._exit(0)  # skip slow interpreter teardown of dataset/tokenizer threads


if __name__ == "__main__":
    main()
