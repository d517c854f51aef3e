"""TopK SAE training-step throughput on cached-activation-sized batches (issue 3).

Times, in one run and side by side (medians): our TopK step (sparse gather encoder-gradient +
embedding_bag decoder, aux-k on, Adam, unit-norm decoder), a plain dense PyTorch TopK step of
the same SAE, and one bare [batch×d_in]@[d_in×d_sae] matmul (the lower bound of any step).

    python benchmarks/bench_train_step.py [--batch 4096] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from saecircuits.dictionaries import DictionaryConfig
from trainers.loop import Trainer


def dense_step(params, opt, x, k):
    enc, b_enc, dec, b_dec = params
    opt.zero_grad(set_to_none=True)
    pre = (x - b_dec) @ enc + b_enc
    vals, idx = pre.topk(k, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
    x_hat = f @ dec + b_dec
    loss = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    loss.backward()
    opt.step()


def median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dead", type=float, default=0.05,
                        help="fraction of latents held dead so aux-k does real work (default 5%%)")
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.d_in, generator=gen)
    x = x / x.norm(dim=1, keepdim=True) * args.d_in ** 0.5
    trainer = Trainer(DictionaryConfig("topk", args.d_in, args.d_sae, k=args.k, hook="resid.10"),
                      total_steps=10_000, dead_tokens=10**9)
    n_dead = int(args.dead * args.d_sae)
    step = [0]

    def ours():
        trainer.since_fired[:n_dead] = 2 * 10**9  # these latents count as dead: aux-k runs on them
        trainer.step(x, x, step[0])
        step[0] += 1

    params = [torch.nn.Parameter(t) for t in (torch.randn(args.d_in, args.d_sae) * 0.05,
                                              torch.zeros(args.d_sae),
                                              torch.randn(args.d_sae, args.d_in) * 0.05,
                                              torch.zeros(args.d_in))]
    opt = torch.optim.Adam(params, lr=1e-3)
    w = torch.randn(args.d_in, args.d_sae)
    rows = {"saecircuits TopK step": median_time(ours, args.repeats),
            "dense PyTorch TopK step": median_time(lambda: dense_step(params, opt, x, args.k), args.repeats),
            "bare matmul fp32": median_time(lambda: x @ w, args.repeats),
            "bare matmul bf16": median_time(lambda: x.bfloat16() @ w.bfloat16(), args.repeats)}
    print(f"batch {args.batch}, d_in {args.d_in}, d_sae {args.d_sae}, k {args.k}, aux-k on "
          f"({n_dead} dead latents), "
          f"threads {torch.get_num_threads()}")
    for name, t in rows.items():
        print(f"{name:26s} {t * 1e3:8.1f} ms  {args.batch / t:9.0f} tok/s")
    ours_t = rows["saecircuits TopK step"]
    print(f"ours vs dense: {rows['dense PyTorch TopK step'] / ours_t:.2f}x faster; "
          f"ours = {rows['bare matmul fp32'] / ours_t:.0%} of the one-matmul bound")


if __name__ == "__main__":
    main()
