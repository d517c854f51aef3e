"""Seeded random transcoders for a Llama-architecture HF model (SmolLM2), in circuit-tracer 0.5.0's
own file formats, so saecircuits and circuit-tracer can trace graphs on the same files.

Needs torch, safetensors and transformers only (no saecircuits, no circuit-tracer): runs in
saecircuits' environment or in circuit-tracer's venv.

    python benchmarks/peers/make_ct_transcoders.py --model ~/.cache/saecircuits/models/SmolLM2-135M-Instruct \
        --out /tmp/tc [--d-transcoder 1152] [--per-token 16] [--skip] [--clt] [--seed 0]

Per-layer transcoders (default; circuit-tracer `load_transcoder_set` / `load_relu_transcoder`):
    OUT/layer_{l}.safetensors, l = 0..n_layers-1, float32:
        W_enc [d_transcoder, d_model]   f = JumpReLU(x @ W_enc.T + b_enc)
        W_dec [d_transcoder, d_model]   y = f @ W_dec + b_dec (+ x @ W_skip.T with --skip)
        b_enc [d_transcoder], b_dec [d_model]
        activation_function.threshold [d_transcoder]   (JumpReLU: f = x * (x > threshold))
        W_skip [d_model, d_model]       only with --skip
    read at `mlp.hook_in` (post_attention_layernorm output), written at `mlp.hook_out` (mlp output).
Cross-layer transcoder (--clt; circuit-tracer `load_clt`):
    OUT/W_enc_{l}.safetensors: W_enc_{l} [d_transcoder, d_model], b_enc_{l} [d_transcoder],
        b_dec_{l} [d_model], threshold_{l} [d_transcoder]
    OUT/W_dec_{l}.safetensors: W_dec_{l} [d_transcoder, n_layers - l, d_model] (to layers l..n_layers-1)
    read at `hook_resid_mid` (post_attention_layernorm input), written at `hook_mlp_out`.
OUT/config.yaml: circuit-tracer's hub config (model_kind, feature_input_hook, feature_output_hook,
transcoders = file names relative to OUT for a transcoder set) plus `seed`, `per_token`, `skip`.

Activation: JumpReLU (circuit-tracer supports ReLU, when a file has no threshold, and JumpReLU;
its TopK class is not used by any of its loaders). Encoder rows are random unit vectors, b_enc = 0;
each feature's threshold is the (1 - per_token / d_transcoder) quantile of its pre-activation over a
fixed calibration text (positions 1.., position 0 excluded as circuit-tracer zeroes it), so about
`per_token` features fire per token on text like it. Decoder rows are random with norm 0.1 and
b_dec ~ N(0, 0.01^2); W_skip ~ N(0, 0.01^2 / d_model). Random features: this checks the plumbing and
the arithmetic of a graph, not its interpretability.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

CALIBRATION = (
    "The history of the city begins with a small market on the river, where farmers sold grain and "
    "wool to traders from the coast. In 1820 a bridge was built, and the town grew quickly. "
    "def mean(values):\n    total = sum(values)\n    return total / len(values)\n"
    "She opened the letter, read it twice, and put it back in the drawer without a word. "
    "Water boils at 100 degrees Celsius at sea level; at higher altitudes it boils at lower temperatures. "
    "Q: What is the capital of France? A: Paris. Q: How many legs does a spider have? A: Eight."
)


def mlp_inputs(model_dir: str, clt: bool) -> list[torch.Tensor]:
    """Per layer, [n_tokens - 1, d_model]: what the transcoders read on the calibration text
    (post_attention_layernorm output, or its input for a CLT), position 0 dropped."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    seen: list[torch.Tensor] = []

    def grab(module, args, output):
        seen.append((args[0] if clt else output)[0, 1:].detach())

    handles = [layer.post_attention_layernorm.register_forward_hook(grab) for layer in model.model.layers]
    try:
        with torch.no_grad():
            model(tok(CALIBRATION, return_tensors="pt").input_ids)
    finally:
        for h in handles:
            h.remove()
    return seen


def random_encoder(gen: torch.Generator, d_trans: int, d_model: int) -> torch.Tensor:
    w = torch.randn(d_trans, d_model, generator=gen)
    return w / w.norm(dim=1, keepdim=True)


def thresholds(w_enc: torch.Tensor, x: torch.Tensor, per_token: int) -> torch.Tensor:
    """[d_transcoder]: each feature's (1 - per_token / d_transcoder) quantile over the tokens x."""
    pre = x @ w_enc.T  # [n_tokens, d_transcoder]
    q = 1.0 - per_token / w_enc.shape[0]
    return torch.quantile(pre, q, dim=0).clamp(min=1e-6)


def write_yaml(path: Path, entries: dict, transcoders: list[str] | None) -> None:
    lines = [f"{k}: {v}" for k, v in entries.items()]
    if transcoders is not None:
        lines.append("transcoders:")
        lines += [f"  - {name}" for name in transcoders]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="local HF folder (Llama architecture)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--d-transcoder", type=int, default=1152)
    parser.add_argument("--per-token", type=int, default=16, help="features firing per token (target)")
    parser.add_argument("--skip", action="store_true", help="add W_skip (per-layer transcoders only)")
    parser.add_argument("--clt", action="store_true", help="write a cross-layer transcoder instead")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 0 < args.per_token < args.d_transcoder:
        parser.error(f"--per-token {args.per_token} must be in 1..{args.d_transcoder - 1}")
    if args.skip and args.clt:
        parser.error("--skip is for per-layer transcoders")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    start = time.perf_counter()
    xs = mlp_inputs(args.model, args.clt)
    n_layers, d_model, d_trans = len(xs), xs[0].shape[1], args.d_transcoder
    gen = torch.Generator().manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fired = []
    names = []
    for layer, x in enumerate(xs):
        w_enc = random_encoder(gen, d_trans, d_model)
        thr = thresholds(w_enc, x, args.per_token)
        fired.append(((x @ w_enc.T) > thr).sum(1).float().mean().item())
        b_enc = torch.zeros(d_trans)
        b_dec = 0.01 * torch.randn(d_model, generator=gen)
        if args.clt:
            w_dec = torch.randn(d_trans, n_layers - layer, d_model, generator=gen)
            w_dec = 0.1 * w_dec / w_dec.norm(dim=-1, keepdim=True)
            save_file({f"W_enc_{layer}": w_enc, f"b_enc_{layer}": b_enc, f"b_dec_{layer}": b_dec,
                       f"threshold_{layer}": thr}, str(out / f"W_enc_{layer}.safetensors"))
            save_file({f"W_dec_{layer}": w_dec.contiguous()}, str(out / f"W_dec_{layer}.safetensors"))
            continue
        w_dec = torch.randn(d_trans, d_model, generator=gen)
        tensors = {"W_enc": w_enc, "W_dec": 0.1 * w_dec / w_dec.norm(dim=1, keepdim=True),
                   "b_enc": b_enc, "b_dec": b_dec, "activation_function.threshold": thr}
        if args.skip:
            tensors["W_skip"] = 0.01 * torch.randn(d_model, d_model, generator=gen) / d_model ** 0.5
        names.append(f"layer_{layer}.safetensors")
        save_file(tensors, str(out / names[-1]))
    if args.clt:
        write_yaml(out / "config.yaml", {"model_kind": "cross_layer_transcoder",
                                         "feature_input_hook": "hook_resid_mid",
                                         "feature_output_hook": "hook_mlp_out",
                                         "seed": args.seed, "per_token": args.per_token, "skip": False}, None)
    else:
        write_yaml(out / "config.yaml", {"model_kind": "transcoder_set", "feature_input_hook": "mlp.hook_in",
                                         "feature_output_hook": "mlp.hook_out", "seed": args.seed,
                                         "per_token": args.per_token, "skip": args.skip}, names)
    kind = "cross-layer transcoder" if args.clt else "per-layer transcoders"
    print(f"wrote {kind} for {n_layers} layers (d_model {d_model}, d_transcoder {d_trans}) to {out} in "
          f"{time.perf_counter() - start:.1f} s; calibration tokens fire {min(fired):.1f}..{max(fired):.1f} "
          f"features per token (target {args.per_token})")


if __name__ == "__main__":
    main()
