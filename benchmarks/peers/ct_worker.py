r"""circuit-tracer 0.5.0's `attribute()` on local files, in its own venv (nnsight backend, CPU, float32).

Run with the circuit-tracer venv's python (`bash benchmarks/peers/setup.sh DIR circuit-tracer`;
imports circuit_tracer, torch, numpy, yaml; NOT saecircuits):

    DIR/circuit-tracer/bin/python benchmarks/peers/ct_worker.py \
        --model ~/.cache/saecircuits/models/SmolLM2-135M-Instruct --transcoders TC_DIR \
        --prompt "When Mary and John went to the store, John gave a drink to" --out OUT \
        [--threads 1] [--batch-size 512] [--max-feature-nodes N] [--slug NAME] [--lazy]

TC_DIR: config.yaml (circuit-tracer's hub config: model_kind transcoder_set | cross_layer_transcoder,
feature_input_hook, feature_output_hook, transcoders: [file names relative to TC_DIR]) + safetensors
in circuit-tracer's formats (benchmarks/peers/make_ct_transcoders.py writes both). Loaded with
circuit-tracer's own `load_transcoder_set` / `load_clt`, eagerly (lazy_encoder=lazy_decoder=False;
--lazy reads weights from disk at each use, circuit-tracer's hub default for decoders), then
`ReplacementModel.from_pretrained_and_transcoders(MODEL, transcoders, backend="nnsight", device="cpu",
dtype=torch.float32)`, `attribute(prompt, model, max_n_logits=10, desired_logit_prob=0.95,
batch_size=512, max_feature_nodes=None)`, `compute_graph_scores(graph)`, `prune_graph(graph)` (0.8 / 0.98).

Writes to OUT:
    adjacency.npy        [N, N] float32, rows = targets, columns = sources (node order below)
    nodes.json           features {layer, pos, feature, activation, active_index}, errors {layer, pos},
                         embeddings {pos, token}, logits {token, token_str, prob}, n_active_features
    node_mask.npy [N] bool, kept_edges.npy [K, 2] int64 (target, source) = edge_mask.nonzero(),
                         cumulative_scores.npy [N] float32 (the three outputs of prune_graph)
    meta.json            prompt, input tokens (with the prepended special token), sizes, scores
                         {replacement, completeness}, pruning counts, timings_s {transcoders_load,
                         model_load, attribute, graph_scores, prune}, torch_threads, cpu, versions
    graph_files/         (--slug) circuit-tracer's own create_graph_files JSON for its frontend

Loading saecircuits' SmolLM2 cache: circuit-tracer's venv has transformers 4.57. A cache written by
transformers 5.x before saecircuits' fix failed there: `"quantization_config": null` (4.57's
`PretrainedConfig.to_dict` calls `.to_dict()` on it; circuit-tracer's `from_pretrained_and_transcoders`
also does `config.quantization_config["dequantize"] = True` whenever the attribute exists), the
tokenizer class `TokenizersBackend` (unknown to 4.x), and — silently — `rope_parameters` without
`rope_theta`: 4.57 ignores `rope_parameters` and uses RoPE base 10000 instead of SmolLM2's 100000
(top logit on the IOI prompt 10.914 instead of 11.037). saecircuits/models.py now writes (and repairs
in place) config.json without the null, with `rope_theta`, and `PreTrainedTokenizerFast`; 4.57 and 5.x
then give the same logits (11.0370 for " Mary").

WHAT circuit-tracer 0.5.0 COMPUTES (source: circuit_tracer/ in the venv's site-packages)
==========================================================================================

Model mapping (utils/tl_nnsight_mapping.py, `LlamaForCausalLM`; Qwen3 and GptOss are the same apart
from hook names):
    attention_location_pattern  model.layers[{l}].self_attn.source.attention_interface_0.source.nn_functional_dropout_0
    layernorm_scale_locations   model.layers[{l}].input_layernorm.source.mean_0,
                                model.layers[{l}].post_attention_layernorm.source.mean_0, model.norm.source.mean_0
    feature hooks               mlp.hook_in  = post_attention_layernorm OUTPUT,  mlp.hook_out = mlp OUTPUT,
                                hook_resid_mid = post_attention_layernorm INPUT, hook_mlp_out = mlp OUTPUT
    pre_logit_location "model" (its output.last_hidden_state, i.e. AFTER model.norm), embed_location
    model.embed_tokens, embed_weight model.embed_tokens.weight, unembed_weight lm_head.weight.
    The model is loaded with attn_implementation="eager" (replacement_model_nnsight.py,
    NNSightReplacementModel.from_pretrained_and_transcoders).

Tokenization (replacement_model/common.py, ensure_tokenized): `tokenizer(prompt,
add_special_tokens=False)`; if the first id is not in tokenizer.all_special_ids, the first non-falsy of
[bos_token_id, pad_token_id, eos_token_id, *all_special_ids] is PREPENDED (`filter(None, ...)` also
skips id 0). SmolLM2: bos_token_id = 1 (`<|im_start|>`), so the IOI prompt becomes 15 tokens
[1, 2427, 5099, 284, 2322, 3514, 288, 260, 4249, 28, 2322, 4502, 253, 5968, 288]; n_pos counts it.
Position 0 is "zero_positions" = slice(0, 1) (slice(0, 4) for Gemma-3 "-it" models).

Frozen pieces (NNSightReplacementModel.configure_gradient_flow / configure_skip_connection, applied in
run_forward_pass's trace; values are unchanged, only gradients are cut):
  * Norms: for Llama the output of `mean_0` inside LlamaRMSNorm.forward —
    `variance = hidden_states.pow(2).mean(-1, keepdim=True)` — is replaced by `.detach()`, in
    input_layernorm, post_attention_layernorm of every layer and the final model.norm. So each norm
    becomes the linear map x -> weight * x * rsqrt(variance_frozen + eps): ONLY the RMS denominator is
    frozen; the gain `weight` stays in the linear model. (Gemma 2/3 freeze `torch_rsqrt_0` inside
    `self__norm_0` of every norm, q_norm/k_norm included for Gemma 3.)
  * Attention: the output of `nn.functional.dropout` in eager_attention_forward (the softmaxed
    pattern; dropout p = 0 in eval) is detached. Q and K are used only to compute that pattern, so NO
    gradient reaches q_proj/k_proj/RoPE: attention is linear through v_proj (of input_layernorm's
    output) and o_proj with the pattern as a constant mixing matrix over positions (causal).
  * MLPs: `mlp_out = skip + (mlp_out - skip).detach()` at the feature output hook, with
    `skip = transcoders.compute_skip(l, feature_input)` for skip transcoders and
    `skip = 0 * feature_input.sum()` otherwise. So the real MLP is a constant; the only gradient path
    through an MLP slot is the transcoder's linear skip `x @ W_skip.T` (single-layer; CLT: `x @
    W_skip[l]`). The skip term is INSIDE the linear model as a path, it is not a node.
  * The embedding output gets requires_grad = True (gradient reaches it for the token nodes).

Active features and error nodes (setup_attribution + TranscoderSet.compute_attribution_components):
  one un-batched trace records mlp_in[l] = feature input hook output, mlp_out[l] = feature output hook
  output, and the real logits. Per layer: pre = F.linear(mlp_in[l], W_enc, b_enc); acts =
  activation_function(pre) (ReLU: F.relu; JumpReLU: `x * (x > threshold)`, strict >); `acts[0] = 0`
  (zero_positions); active = the nonzeros of `acts.to_sparse()` (so a feature active at BOS is dropped;
  with ReLU/JumpReLU, active <=> acts > 0). reconstruction[l] = sum_active acts * W_dec[f] (index_add
  over positions) + x @ W_skip.T (if any) + b_dec; error_vectors = mlp_out - reconstruction, then
  `error_vectors[:, 0] = 0`. So error[l, p] = MLP output minus the full transcoder output (skip and
  b_dec included) — at p = 0 it is zeroed, and position 0's MLP outputs, all b_dec and all attention/MLP
  constants are "biases" that belong to no node. activation_matrix = torch.stack(per-layer sparse).coalesce():
  features are ordered by (layer, pos, feature index) ascending.
  token_vectors = embed_weight[tokens] (n_pos, d_model); encoder_vecs = W_enc rows of the active features
  (UNscaled); decoder_vecs = acts[s] * W_dec[f_s] (scaled by the activation).

Node order / adjacency layout (graph.py Graph docstring, attribute.py Phase 5):
  [selected features (ascending active index = (layer, pos, feature) order), error[l][p] for l in
  0..L-1 for p in 0..n_pos-1 (index n_feat + l*n_pos + p; positions 0 included, their columns zero),
  token embeddings p = 0..n_pos-1 (BOS included, with edges), logit targets (in target order)].
  adjacency[target, source]: ROWS = targets, COLUMNS = sources. Only feature rows and logit rows are
  filled; error and embedding rows are 0; logit columns are 0. N = n_feat + (L+1)*n_pos + n_logits.

Edge weights (attribution/context_nnsight.py, AttributionContext.compute_batch): one forward of the
  prompt REPLICATED batch_size times (run_forward_pass: `input_ids.expand(batch_size, -1)`), keeping the
  autograd graph; cached: _resid_activations = [mlp_in[0..L-1], final normed hidden state (after
  model.norm)] and _feature_output_activations = [embed output, mlp_out[0..L-1]]. For a batch of target
  nodes (one batch row each), backward from _resid_activations[max layer in batch] with a ZERO seed;
  walking l = max_layer .. 0: (if l < max_layer) g = grad at mlp_out[l] and
      feature rows:  buf[s, b] += sum_d g[b, pos_s, d] * (a_s * W_dec[f_s])[d]   for features s at layer l
      error rows:    buf[err(l, p), b] += sum_d g[b, p, d] * error[l, p, d]       for all p
  then the gradient at _resid_activations[l] (= mlp_in[l]) is overwritten at (row b, pos_b) by the
  target's seed for targets at layer l (`grads_out.index_put_((batch, pos), values)`); finally
      token rows:    buf[tok(p), b] += sum_d g_embed[b, p, d] * embed_weight[token_p, d].
  Seeds: feature target t -> W_enc[f_t] (raw encoder row) at (l_t, p_t) of mlp_in, so a feature row
  holds the direct effects on its PRE-activation minus b_enc, W_enc[f_t] . mlp_in[l_t][p_t];
  logit target -> its vector at the final normed hidden state, last position (layer index L).
  So A[t, s] = (source output vector at its hook) . d(target seed . target hook) / d(source hook) in the
  frozen linear model: for a feature source, a_s * W_dec[f_s] . d/d mlp_out[l_s][p_s]; for an error
  source, error[l,p] . d/d mlp_out[l][p]; for a token, embed_weight[tok_p] . d/d embed[p]. Sign: no
  flip, positive = excitatory. Paths: residual stream, attention value/output (frozen patterns, frozen
  norm denominators, norm gains) and transcoder skip terms; never through MLPs or other features (every
  node is a direct effect). Only sources at layers < the target's layer contribute (mlp_out[l_t] is
  downstream of mlp_in[l_t]); positions p_s <= p_t. Linearization identity: for a feature target,
  sum over sources of A[t, s] + (constants: b_dec and BOS-position MLP outputs propagated) =
  W_enc[f_t] . mlp_in[l_t][p_t]; for a logit, = demeaned logit (below).
  With a CLT, a source feature has one decoder per output layer L >= l_s; each contributes at its layer
  into the same row (encoder_to_decoder_map), and only L < l_t reach a feature target at l_t.

Logit targets (attribution/targets.py, AttributionTargets._from_salient / _compute_logit_vecs):
  probs = softmax(logits[0, -1]) of the real (unfrozen) forward; top_p, top_idx = topk(probs,
  max_n_logits=10); cutoff = int(searchsorted(cumsum(top_p), desired_logit_prob=0.95)) + 1 (the smallest
  prefix whose cumulative probability >= 0.95, at most 10); targets = top_idx[:cutoff], in descending
  probability; logit_probabilities = probs[targets] (NOT renormalised); seed vectors =
  `unembed_weight[idx] - unembed_weight.mean(dim=0, keepdim=True)` (lm_head.weight is [vocab, d_model]:
  the unembedding row minus the mean row over the whole vocabulary), injected at the final normed
  hidden state of the last position. So a logit node's input is logit[tok] - mean_v logit[v].
  attribution_targets may instead be a token-id tensor, token strings (each must be one token), or
  CustomTarget(token_str, prob, vec) with an arbitrary direction vec (d_model) and weight prob (virtual
  vocab index vocab_size + i) — e.g. a contrast direction W_U[a] - W_U[b].

Batching and max_feature_nodes (attribute.py _run_attribution): Phase 3: logit rows in batches of
  batch_size (one backward each; rows 0..n_logits-1 of edge_matrix). Phase 4: if max_feature_nodes
  (None -> all) equals the number of active features, all features in index order, batch_size per
  backward (a partial batch still costs a full batch_size backward: the forward batch is fixed).
  Otherwise, repeatedly: influences = compute_partial_influences(edge_matrix[:st], logit_probabilities,
  row_to_node_index[:st]) over the rows computed so far (abs, row-normalised with clamp(min=1e-8),
  power iteration prod = prod[row_to_node_index] @ normalized, starting from the logit probabilities,
  summed, max_iter 128); the queue = the top min(update_interval(4) * batch_size, remaining) unvisited
  features by that influence; process it in batches; repeat. Selected features = those visited, then
  sorted ascending (columns re-read in that order, rows sorted to match).

Graph algebra (graph.py), verbatim:
    def normalize_matrix(matrix):
        normalized = matrix.abs()
        return normalized / normalized.sum(dim=1, keepdim=True).clamp(min=1e-10)
    def compute_influence(A, logit_weights, max_iter=1000):
        current_influence = logit_weights @ A
        influence = current_influence
        while current_influence.any():          # RuntimeError after max_iter iterations
            current_influence = current_influence @ A
            influence += current_influence
        return influence                         # = w (A + A^2 + A^3 + ...), w itself excluded
    def compute_node_influence(adjacency_matrix, logit_weights):
        return compute_influence(normalize_matrix(adjacency_matrix), logit_weights)
    def compute_edge_influence(pruned_matrix, logit_weights):
        normalized_pruned = normalize_matrix(pruned_matrix)
        pruned_influence = compute_influence(normalized_pruned, logit_weights)
        pruned_influence += logit_weights
        edge_scores = normalized_pruned * pruned_influence[:, None]
        return edge_scores
    def find_threshold(scores, threshold):
        sorted_scores = torch.sort(scores, descending=True).values
        cumulative_score = torch.cumsum(sorted_scores, dim=0) / torch.sum(sorted_scores)
        threshold_index = int(torch.searchsorted(cumulative_score, threshold).item())
        threshold_index = min(threshold_index, len(cumulative_score) - 1)
        return sorted_scores[threshold_index]
  with logit_weights = zeros(N); logit_weights[-n_logits:] = graph.logit_probabilities.
  prune_graph(graph, node_threshold=0.8, edge_threshold=0.98):
    node_influence = compute_node_influence(A, w)
    node_mask = node_influence >= find_threshold(node_influence, node_threshold)
    node_mask[-n_logits - n_tokens:] = True                      # tokens and logits always kept
    pruned = A.clone(); pruned[~node_mask] = 0; pruned[:, ~node_mask] = 0
    edge_scores = compute_edge_influence(pruned, w)
    edge_mask = edge_scores >= find_threshold(edge_scores.flatten(), edge_threshold)
    old_node_mask = node_mask.clone()
    node_mask[:-n_logits-n_tokens] &= edge_mask[:, :-n_logits-n_tokens].any(0)  # features/errors need a kept outgoing edge
    node_mask[:n_features] &= edge_mask[:n_features].any(1)                    # features need a kept incoming edge
    while not torch.all(node_mask == old_node_mask):
        old_node_mask[:] = node_mask
        edge_mask[~node_mask] = False; edge_mask[:, ~node_mask] = False
        (the same two node_mask lines again)
    cumulative_scores[i] = cumsum(sorted(node_influence, desc)) / sum(node_influence), at i's rank
      (from the UNPRUNED influence; create_graph_files stores it as a node's `influence`).
  compute_graph_scores(graph) -> (replacement, completeness):
    error = [n_features, n_features + n_tokens * L), token = [error_end, error_end + n_tokens)
    normalized_matrix = normalize_matrix(A); node_influence = compute_influence(normalized_matrix, w)
    replacement_score = node_influence[tokens].sum() / (node_influence[tokens].sum() + node_influence[errors].sum())
    non_error_fractions = 1 - normalized_matrix[:, errors].sum(dim=-1)
    output_influence = node_influence + w
    completeness_score = (non_error_fractions * output_influence).sum() / output_influence.sum()
  (error and token rows are all zero, so their non_error_fraction is 1: they count as "complete"
  with their own influence as weight.)

Transcoder files:
  Single-layer (transcoder/single_layer_transcoder.py, load_relu_transcoder, to_safetensors): one
  safetensors per layer, keys `W_enc` [d_transcoder, d_model], `W_dec` [d_transcoder, d_model], `b_enc`
  [d_transcoder], `b_dec` [d_model], optional `W_skip` [d_model, d_model] (used as x @ W_skip.T), optional
  `activation_function.threshold` [d_transcoder] -> JumpReLU (bandwidth 0.1, only for training grads),
  else ReLU (F.relu). `log_thresholds` is refused (assert). TopK exists as a class
  (transcoder/activation_functions.py) but no loader builds it. encode = act(F.linear(x, W_enc, b_enc)),
  decode = acts @ W_dec + b_dec (+ x @ W_skip.T). A TranscoderSet needs layers 0..max (assert) with one
  common d_transcoder, and is configured by feature_input_hook / feature_output_hook (names from the
  model mapping; for Llama "mlp.hook_in" / "mlp.hook_out"), scan, and (hub) config.yaml
  `model_kind: transcoder_set`, `transcoders: [paths or hf://...]` or files layer_{i}.safetensors.
  TranscoderSet.to_safetensors(dir) writes layer_{i}.safetensors.
  Cross-layer (transcoder/cross_layer_transcoder.py, load_clt / _load_state_dict / to_safetensors):
  a folder with, per layer l, W_enc_{l}.safetensors holding `W_enc_{l}` [d_transcoder, d_model], `b_enc_{l}`
  [d_transcoder], `b_dec_{l}` [d_model] and optionally `threshold_{l}` [d_transcoder] (JumpReLU iff
  threshold_0 exists, else ReLU), and W_dec_{l}.safetensors holding `W_dec_{l}` [d_transcoder, L - l,
  d_model] (decoders of layer-l features to output layers l..L-1; output layer l+j uses [:, j]). L = the
  number of W_enc_*.safetensors files. load_clt never reads a skip (W_skip [L, d_model, d_model], used as
  x @ W_skip[l], exists in the class and only the Gemma Scope 2 CLT loader fills it). Default hooks
  hook_resid_mid (Llama: post_attention_layernorm INPUT) -> hook_mlp_out; config.yaml `model_kind:
  cross_layer_transcoder`. Reconstruction at layer L' = sum_{l <= L'} sum_f a_{l,f} W_dec_l[f, L'-l] + b_dec[L'].
  Gemma Scope (load_gemma_scope_transcoder, chosen when the hub repo id contains "gemma-scope", the
  config lists `transcoders`, and the file is .npz): np.load keys `W_enc` [d_model, d_transcoder]
  (transposed on load), `W_dec` [d_transcoder, d_model], `b_enc`, `b_dec`, `threshold` (-> JumpReLU).
  Gemma Scope 2 (load_gemma_scope_2_transcoder, repo id contains "gemma-scope-2"): safetensors `w_enc`
  [d_model, d_transcoder] (transposed), `w_dec`, `b_enc`, `b_dec`, `threshold`, optional
  `affine_skip_connection` [d_model, d_model] (W_skip = its transpose); the GS2 CLT loader stacks per-layer
  files (`w_dec` [d_sae, L, d_model] per layer, sliced [i:]) and loops `range(max(paths.keys()))`, i.e.
  it skips the last layer's file. Gemma 2/3 mappings read "ln2.hook_normalized" (pre_feedforward_layernorm's
  `self__norm_0` output, before the (1 + weight) gain) or "mlp.hook_in" (pre_feedforward_layernorm output)
  and write "hook_mlp_out" (post_feedforward_layernorm output).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def read_config(folder: Path) -> dict:
    """config.yaml of a transcoder folder (circuit-tracer's hub config keys)."""
    import yaml

    path = folder / "config.yaml"
    if not path.is_file():
        raise SystemExit(f"{folder} has no config.yaml (write one with make_ct_transcoders.py)")
    cfg = yaml.safe_load(path.read_text())
    if cfg.get("model_kind") not in ("transcoder_set", "cross_layer_transcoder"):
        raise SystemExit(f"{path}: model_kind {cfg.get('model_kind')!r} is neither transcoder_set "
                         "nor cross_layer_transcoder")
    return cfg


def load_transcoders(folder: Path, cfg: dict, lazy: bool):
    """circuit-tracer's own loaders, on the CPU in float32."""
    scan = cfg.get("scan") or folder.name
    cpu = torch.device("cpu")
    if cfg["model_kind"] == "cross_layer_transcoder":
        from circuit_tracer.transcoder.cross_layer_transcoder import load_clt

        return load_clt(str(folder), feature_input_hook=cfg["feature_input_hook"],
                        feature_output_hook=cfg["feature_output_hook"], scan=scan, device=cpu,
                        dtype=torch.float32, lazy_decoder=lazy, lazy_encoder=lazy)
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    paths = {i: str(folder / name) for i, name in enumerate(cfg["transcoders"])}
    return load_transcoder_set(paths, scan=scan, feature_input_hook=cfg["feature_input_hook"],
                               feature_output_hook=cfg["feature_output_hook"], device=cpu,
                               dtype=torch.float32, lazy_encoder=lazy, lazy_decoder=lazy)


def node_table(graph, n_layers: int) -> dict:
    """The adjacency matrix's node order, as parallel lists per node kind."""
    sel = graph.selected_features
    feats = graph.active_features[sel]
    n_pos = len(graph.input_tokens)
    tokens = graph.input_tokens.tolist()
    return {
        "order": "features, errors (layer-major: index = n_features + layer * n_pos + pos), "
                 "embeddings (one per position), logits",
        "features": {"layer": feats[:, 0].tolist(), "pos": feats[:, 1].tolist(),
                     "feature": feats[:, 2].tolist(),
                     "activation": graph.activation_values[sel].tolist(),
                     "active_index": sel.tolist()},
        "errors": {"layer": [l for l in range(n_layers) for _ in range(n_pos)],
                   "pos": [p for _ in range(n_layers) for p in range(n_pos)]},
        "embeddings": {"pos": list(range(n_pos)), "token": tokens},
        "logits": {"token": [t.vocab_idx for t in graph.logit_targets],
                   "token_str": [t.token_str for t in graph.logit_targets],
                   "prob": graph.logit_probabilities.tolist()},
        "n_active_features": int(graph.active_features.shape[0]),
    }


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description="circuit-tracer 0.5.0 attribute() on local files")
    parser.add_argument("--model", required=True, help="local HF folder (e.g. saecircuits' SmolLM2 cache)")
    parser.add_argument("--transcoders", required=True, help="folder with config.yaml + safetensors")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=512, help="attribute()'s default: 512")
    parser.add_argument("--max-feature-nodes", type=int, default=None, help="default: all active")
    parser.add_argument("--max-n-logits", type=int, default=10)
    parser.add_argument("--desired-logit-prob", type=float, default=0.95)
    parser.add_argument("--lazy", action="store_true", help="circuit-tracer's lazy weight loading")
    parser.add_argument("--slug", default=None,
                        help="also write circuit-tracer's own graph JSON (create_graph_files) to OUT/graph_files")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)

    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.graph import compute_graph_scores, prune_graph

    folder = Path(args.transcoders).expanduser()
    cfg = read_config(folder)
    t0 = time.perf_counter()
    transcoders = load_transcoders(folder, cfg, args.lazy)
    t1 = time.perf_counter()
    model = ReplacementModel.from_pretrained_and_transcoders(
        str(Path(args.model).expanduser()), transcoders, backend="nnsight", device="cpu", dtype=torch.float32)
    t2 = time.perf_counter()
    graph = attribute(args.prompt, model, max_n_logits=args.max_n_logits,
                      desired_logit_prob=args.desired_logit_prob, batch_size=args.batch_size,
                      max_feature_nodes=args.max_feature_nodes)
    t3 = time.perf_counter()
    replacement, completeness = compute_graph_scores(graph)
    t4 = time.perf_counter()
    pruned = prune_graph(graph)  # node_threshold 0.8, edge_threshold 0.98
    t5 = time.perf_counter()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    adjacency = graph.adjacency_matrix.float().numpy()
    np.save(out / "adjacency.npy", adjacency)
    np.save(out / "node_mask.npy", pruned.node_mask.numpy())
    np.save(out / "kept_edges.npy", pruned.edge_mask.nonzero().numpy())  # [K, 2] (target, source)
    np.save(out / "cumulative_scores.npy", pruned.cumulative_scores.float().numpy())
    n_layers = model.cfg.n_layers
    nodes = node_table(graph, n_layers)
    (out / "nodes.json").write_text(json.dumps(nodes))
    tok = model.tokenizer
    meta = {
        "prompt": args.prompt,
        "input_tokens": graph.input_tokens.tolist(),
        "input_token_strs": [tok.decode([t]) for t in graph.input_tokens.tolist()],
        "n_layers": n_layers, "n_pos": len(graph.input_tokens),
        "n_features": len(nodes["features"]["layer"]), "n_active_features": nodes["n_active_features"],
        "n_logits": len(graph.logit_targets), "n_nodes": int(adjacency.shape[0]),
        "n_nonzero_edges": int(np.count_nonzero(adjacency)),
        "scores": {"replacement": replacement, "completeness": completeness},
        "pruning": {"node_threshold": 0.8, "edge_threshold": 0.98,
                    "nodes_kept": int(pruned.node_mask.sum()), "edges_kept": int(pruned.edge_mask.sum())},
        "transcoders": {"folder": str(folder), **{k: v for k, v in cfg.items() if k != "transcoders"},
                        "d_transcoder": int(transcoders.d_transcoder), "lazy": args.lazy},
        "settings": {"batch_size": args.batch_size, "max_feature_nodes": args.max_feature_nodes,
                     "max_n_logits": args.max_n_logits, "desired_logit_prob": args.desired_logit_prob},
        "timings_s": {"transcoders_load": t1 - t0, "model_load": t2 - t1, "attribute": t3 - t2,
                      "graph_scores": t4 - t3, "prune": t5 - t4},
        "torch_threads": torch.get_num_threads(), "cpu": cpu_model(),
        "versions": {p: version(p) for p in ("circuit-tracer", "torch", "transformers", "nnsight")},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    if args.slug:
        from circuit_tracer.utils.create_graph_files import create_graph_files

        create_graph_files(graph, args.slug, str(out / "graph_files"), scan=graph.scan or folder.name)
    print(json.dumps({k: meta[k] for k in ("n_pos", "n_features", "n_logits", "n_nodes", "scores",
                                           "pruning", "timings_s", "torch_threads")}))


if __name__ == "__main__":
    main()
