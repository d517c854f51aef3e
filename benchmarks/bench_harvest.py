"""Harvesting throughput vs the bare model forward truncated at the same layer (issue 3).

Times, side by side in one run (medians, interleaved): `trainers.activations.harvest` of the
requested hook points (one nnsight trace that stops after the deepest one, pad/first-token
removal, float32 copies) and a plain HF forward of the decoder layers up to that depth only
(the model's layer list cut there; no final norm, no lm_head), both under the same autocast.

    python benchmarks/bench_harvest.py [--hooks resid.4,resid.10] [--batch 8] [--ctx 256]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from saecircuits import hooks, load_model
from saecircuits.models import unwrap
from trainers.activations import harvest
from trainers.corpus import default_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hooks", default="resid.4,resid.10")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--ctx", type=int, default=256)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--autocast", default="bfloat16", choices=("bfloat16", "none"))
    args = parser.parse_args()
    model, tok = load_model(device="cpu")
    points = hooks.sort_by_forward_order(model, args.hooks.split(","))
    depth = max(p.layer for p in points)
    ids = default_corpus(tok).windows(args.ctx, seed=0)[: args.batch]
    dtype = None if args.autocast == "none" else torch.bfloat16
    base = unwrap(model).model
    layers = base.layers

    def bare():
        base.layers = layers[: depth + 1]
        try:
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16,
                                                 enabled=dtype is not None):
                hidden = base.embed_tokens(ids)
                pos = torch.arange(ids.shape[1]).unsqueeze(0)
                emb = base.rotary_emb(hidden, pos)
                mask = torch.ones_like(ids)
                from transformers.masking_utils import create_causal_mask
                causal = create_causal_mask(config=base.config, inputs_embeds=hidden,
                                            attention_mask=mask, past_key_values=None,
                                            position_ids=pos)
                for layer in base.layers:
                    hidden = layer(hidden, attention_mask=causal, position_ids=pos,
                                   position_embeddings=emb)
            return hidden
        finally:
            base.layers = layers

    def ours():
        return harvest(model, points, ids, autocast=dtype)

    times = {"harvest (nnsight, stop after deepest hook)": [], "bare forward, layers 0..%d" % depth: []}
    fns = list(zip(times, (ours, bare)))
    for _, fn in fns:
        fn()  # warm-up
    for _ in range(args.runs):
        for name, fn in fns:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    tokens = args.batch * args.ctx
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"SmolLM2, hooks {args.hooks} (deepest layer {depth}), {args.batch}x{args.ctx} tokens, "
          f"autocast {args.autocast}, threads {torch.get_num_threads()}, median of {args.runs}")
    for name, t in med.items():
        print(f"  {name:45s} {t * 1000:8.1f} ms  {tokens / t:7.0f} tok/s")
    ours_t, bare_t = med.values()
    print(f"harvest overhead vs bare truncated forward: {ours_t / bare_t - 1:+.1%}")


if __name__ == "__main__":
    main()
