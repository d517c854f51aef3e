"""Attribution graphs of one prompt on the frozen replacement model (circuit-tracer's method).

With attention patterns and norm scales frozen and every MLP replaced by its transcoder
(`saecircuits.frozen`), the model is linear in the residual stream, so the direct effect of every
source node on every target node is exact:

    nodes      active features (layer, pos, feature; activation a), one error node per
               (layer, pos) (the MLP output minus the transcoder's prediction), the token
               embeddings (pos), and logit targets
    targets    a feature's pre-activation W_enc[:, j]·mlp_in + b_enc; a logit target's
               logit(t) − mean logit (its seed: the unembedding row minus the mean row); or a
               contrast direction such as logit(a) − logit(b)
    edges      source -> target: a·W_dec,i·g for a feature, err·g for an error node, emb·g for a
               token, with g the gradient of the target at the source's write site
               (one batched backward per `batch_size` targets)

Adjacency layout (circuit-tracer's): rows are targets, columns sources, nodes ordered features
(by layer, then position), errors (layer-major, L × T), tokens (T), logits. Scores and pruning
are circuit-tracer 0.5.0's (`normalize_matrix`, `compute_influence`, `prune_graph`,
`compute_graph_scores`):

    A          |adjacency| with rows normalised to sum 1
    influence  w (A + A² + ...), w = the logit probabilities on the logit rows
    replacement   token influence / (token influence + error influence)
    completeness  Σ_n (1 − error share of n's normalised inputs)(influence_n + w_n) / Σ (influence + w)
    prune      nodes up to `node_threshold` cumulative influence, edges up to `edge_threshold`
               cumulative edge influence (tokens and logits always kept)

Each feature's incoming edges plus its bias (b_enc plus every transcoder's b_dec through the
frozen model) equal its pre-activation (`AttributionGraph.linearity_error`, design invariant 10).
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from typing import TYPE_CHECKING

import torch

from ..configs import GraphConfig  # noqa: F401 (re-exported)
from ..dictionaries import Dictionary
from ..errors import ConfigError, GraphError, TaskError
from ..frozen import FrozenPass, frozen_forward
from ..hooks import n_layers as model_layers
from ..precision import resolve as resolve_precision
from ..progress import bar as progress_bar
from ..wrapping import model_name_of, unwrap

if TYPE_CHECKING:
    from ..graph import FeatureGraph


@dataclass
class AttributionGraph:
    """One prompt's attribution graph (see the module doc for the layout).

    features: `[n_feat, 3]` long (layer, pos, feature index); activations `[n_feat]`;
    layers: transcoder names by layer (e.g. "mlp.5"); tokens: prompt ids `[T]`;
    token_strings; logit_tokens `[n_logits]` (ids, or the contrast pair's first token);
    logit_probs `[n_logits]` (the targets' weights); adjacency `[n, n]` (rows targets).
    """

    prompt: str
    tokens: torch.Tensor
    token_strings: list[str]
    layers: list[str]
    features: torch.Tensor
    activations: torch.Tensor
    logit_tokens: torch.Tensor
    logit_probs: torch.Tensor
    logit_labels: list[str]
    adjacency: torch.Tensor
    pre_activations: torch.Tensor            # [n_feat] each feature's pre-activation (forward)
    biases: torch.Tensor                     # [n_feat + n_logits] non-node part of each target
    targets_values: torch.Tensor             # [n_logits] the logit targets' values (forward)
    model: str = ""
    meta: dict = field(default_factory=dict)

    # -- layout ---------------------------------------------------------------------------
    @property
    def n_pos(self) -> int:
        return int(self.tokens.numel())

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_logits(self) -> int:
        return int(self.logit_tokens.numel())

    @property
    def error_slice(self) -> slice:
        return slice(self.n_features, self.n_features + self.n_layers * self.n_pos)

    @property
    def token_slice(self) -> slice:
        start = self.error_slice.stop
        return slice(start, start + self.n_pos)

    @property
    def logit_slice(self) -> slice:
        start = self.token_slice.stop
        return slice(start, start + self.n_logits)

    def logit_weights(self) -> torch.Tensor:
        w = torch.zeros(self.adjacency.shape[0], dtype=self.adjacency.dtype)
        w[self.logit_slice] = self.logit_probs.to(w.dtype)
        return w

    # -- circuit-tracer's scores -------------------------------------------------------------
    def node_influence(self) -> torch.Tensor:
        return compute_influence(normalize_matrix(self.adjacency), self.logit_weights())

    def scores(self) -> tuple[float, float]:
        """(replacement score, completeness score), as circuit-tracer's `compute_graph_scores`."""
        a = normalize_matrix(self.adjacency)
        w = self.logit_weights()
        influence = compute_influence(a, w)
        tokens = influence[self.token_slice].sum()
        errors = influence[self.error_slice].sum()
        replacement = tokens / (tokens + errors)
        non_error = 1 - a[:, self.error_slice].sum(dim=-1)
        output = influence + w
        completeness = (non_error * output).sum() / output.sum()
        return float(replacement), float(completeness)

    def error_share(self) -> float:
        """Share of the (normalised) influence on the logits held by error nodes."""
        influence = self.node_influence()
        total = influence[: self.logit_slice.start].sum()
        return float(influence[self.error_slice].sum() / total) if total > 0 else 0.0

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98):
        """(node mask, edge mask, cumulative influence) as circuit-tracer's `prune_graph`."""
        return prune_graph(self.adjacency, self.logit_weights(), self.n_features, self.n_pos,
                           self.n_logits, node_threshold, edge_threshold)

    def linearity_error(self) -> float:
        """max over feature and logit targets of |Σ incoming edges + bias − value| relative to the
        size of the sum (Σ |edges| + |bias|, what float rounding scales with); invariant 10: ≈ 0
        when the frozen model is linear and every source is a node."""
        rows = torch.cat([self.adjacency[: self.n_features], self.adjacency[self.logit_slice]]).double()
        values = torch.cat([self.pre_activations, self.targets_values]).double()
        bias = self.biases.double()
        got = rows.sum(1) + bias
        scale = (rows.abs().sum(1) + bias.abs()).clamp_min(1e-12)
        return float(((got - values).abs() / scale).max()) if values.numel() else 0.0

    # -- files --------------------------------------------------------------------------------
    _TENSORS = ("tokens", "features", "activations", "logit_tokens", "logit_probs", "adjacency",
                "pre_activations", "biases", "targets_values")

    def save(self, folder) -> None:
        """`attribution.safetensors` (adjacency and node tables) + `attribution.json`."""
        from pathlib import Path

        from ..fileio import write_json, write_safetensors

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_safetensors(folder / "attribution.safetensors",
                          {k: getattr(self, k).contiguous() for k in self._TENSORS})
        write_json(folder / "attribution.json", {
            "prompt": self.prompt, "token_strings": self.token_strings, "layers": self.layers,
            "logit_labels": self.logit_labels, "model": self.model, "meta": self.meta,
            "format": "saecircuits attribution graph 1"})

    @classmethod
    def load(cls, folder) -> "AttributionGraph":
        from pathlib import Path

        from ..fileio import parse_json, read_safetensors, read_text

        folder = Path(folder)
        info = parse_json(read_text(folder / "attribution.json", "attribution graph", GraphError),
                          str(folder / "attribution.json"), GraphError)
        tensors = read_safetensors(folder / "attribution.safetensors")
        missing = set(cls._TENSORS) - set(tensors)
        if missing:
            raise GraphError(f"{folder}/attribution.safetensors lacks {sorted(missing)}")
        return cls(prompt=info["prompt"], token_strings=info["token_strings"], layers=info["layers"],
                   logit_labels=info["logit_labels"], model=info.get("model", ""),
                   meta=info.get("meta", {}), **{k: tensors[k] for k in cls._TENSORS})

    # -- node names ---------------------------------------------------------------------------
    def node_ids(self) -> list[str]:
        """Graph ids (design.md): `{layer name}/{pos}/{feature}`, `{layer name}/{pos}/err`,
        `embed/{pos}`, `logit/{token}`."""
        ids = [f"{self.layers[int(l)]}/{int(p)}/{int(f)}" for l, p, f in self.features.tolist()]
        ids += [f"{self.layers[l]}/{p}/err" for l in range(self.n_layers) for p in range(self.n_pos)]
        ids += [f"embed/{p}" for p in range(self.n_pos)]
        ids += [f"logit/{int(t)}" for t in self.logit_tokens.tolist()]
        return ids


# -- circuit-tracer's graph arithmetic ---------------------------------------------------------
def normalize_matrix(matrix: torch.Tensor) -> torch.Tensor:
    """|matrix| with each row divided by its sum (rows of zeros stay zero)."""
    normalized = matrix.abs()
    return normalized / normalized.sum(dim=1, keepdim=True).clamp(min=1e-10)


def compute_influence(a: torch.Tensor, logit_weights: torch.Tensor, max_iter: int = 1000) -> torch.Tensor:
    """w A + w A² + ... (A is nilpotent: a DAG), summed until the terms vanish."""
    current = logit_weights @ a
    influence = current.clone()
    for _ in range(max_iter):
        if not current.any():
            return influence
        current = current @ a
        influence += current
    raise GraphError(f"influence did not converge after {max_iter} iterations (the graph has a cycle)")


def _threshold(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    ordered = torch.sort(scores, descending=True).values
    cumulative = torch.cumsum(ordered, dim=0) / torch.sum(ordered)
    index = int(torch.searchsorted(cumulative, torch.tensor(fraction, dtype=cumulative.dtype)))
    return ordered[min(index, len(cumulative) - 1)]


def prune_graph(adjacency: torch.Tensor, logit_weights: torch.Tensor, n_features: int, n_pos: int,
                n_logits: int, node_threshold: float = 0.8, edge_threshold: float = 0.98):
    """circuit-tracer's `prune_graph`: (node mask `[n]`, edge mask `[n, n]`, cumulative influence
    `[n]`)."""
    node_influence = compute_influence(normalize_matrix(adjacency), logit_weights)
    node_mask = node_influence >= _threshold(node_influence, node_threshold)
    node_mask[-n_logits - n_pos:] = True
    pruned = adjacency.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    normalized = normalize_matrix(pruned)
    pruned_influence = compute_influence(normalized, logit_weights) + logit_weights
    edge_scores = normalized * pruned_influence[:, None]
    edge_mask = edge_scores >= _threshold(edge_scores.flatten(), edge_threshold)
    old = node_mask.clone()
    node_mask[: -n_logits - n_pos] &= edge_mask[:, : -n_logits - n_pos].any(0)
    node_mask[:n_features] &= edge_mask[:n_features].any(1)
    while not torch.equal(node_mask, old):
        old = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[: -n_logits - n_pos] &= edge_mask[:, : -n_logits - n_pos].any(0)
        node_mask[:n_features] &= edge_mask[:n_features].any(1)
    ordered, order = torch.sort(node_influence, descending=True)
    cumulative = torch.zeros_like(node_influence)
    cumulative[order] = torch.cumsum(ordered, dim=0) / torch.sum(ordered)
    return node_mask, edge_mask, cumulative


# -- building a graph ---------------------------------------------------------------------------
def _layered(model, transcoders: Mapping[str, Dictionary], allow_partial: bool) -> list[str]:
    """One name per layer, in order: its transcoder's, or `mlp.L` for a layer without one
    (`allow_partial`: that MLP's output is an error node), after checking the set."""
    if not isinstance(transcoders, Mapping) or not transcoders:
        raise ConfigError("a replacement graph needs a non-empty set of transcoders")
    not_tc = sorted(n for n, d in transcoders.items() if not d.is_transcoder)
    if not_tc:
        raise ConfigError(f"replacement graphs need transcoders (mlp_in.L -> mlp.L); {', '.join(not_tc)} "
                          "are SAEs (trace SAE circuits with `trace`)")
    by_layer: dict[int, str] = {}
    for name, dic in transcoders.items():
        read, write = dic.check_sites(model)
        if by_layer.get(write.layer) is not None:
            raise ConfigError(f"two transcoders write layer {write.layer}: {by_layer[write.layer]!r} "
                              f"and {name!r}")
        by_layer[write.layer] = name
    missing = [layer for layer in range(model_layers(model)) if layer not in by_layer]
    if missing and not allow_partial:
        raise ConfigError(f"a replacement graph needs a transcoder at every MLP; layers {missing} have "
                          "none (train them, or pass allow_partial / --allow-partial to count those "
                          "MLPs' outputs as error nodes)")
    return [by_layer.get(layer, f"mlp.{layer}") for layer in range(model_layers(model))]


def _tokenize(tok, prompt: str, model, prepend_bos: bool = True) -> torch.Tensor:
    """`[1, T]` ids: the prompt without special tokens, after the first of (BOS, pad, EOS, other
    special tokens) when it does not start with a special token (circuit-tracer's
    `ensure_tokenized`)."""
    from ..limits import check_text_length, check_tokens

    if not isinstance(prompt, str) or not prompt:
        raise ConfigError("the prompt must be a non-empty string")
    check_text_length(prompt, "the prompt")
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    special = set(getattr(tok, "all_special_ids", []) or [])
    if prepend_bos and (not ids or ids[0] not in special):
        first = next(filter(None, [tok.bos_token_id, tok.pad_token_id, tok.eos_token_id,
                                   *sorted(special)]), None)
        if first is not None:
            ids = [first] + ids
    if not ids:
        raise ConfigError(f"the prompt {prompt!r} has no tokens")
    check_tokens(model, len(ids), "the prompt")
    return torch.tensor([ids])


def _single_token(tok, text: str, what: str) -> int:
    ids = tok.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise TaskError(f"{what} {text!r} is {len(ids)} tokens, not one; give a single-token string")
    return ids[0]


class _Replacement:
    """What `attribute` needs of the dictionaries replacing the MLPs, per layer index li:
    encoder columns and b_enc of target features, decoder rows of source features for each output
    layer they write, b_dec of an output layer. Per-layer transcoders write their own layer only;
    a cross-layer transcoder writes every layer from its own on."""

    def __init__(self, layers: list[str], transcoders=None, clt=None, bare=()):
        self.layers, self.tcs, self.clt, self.bare = layers, transcoders or {}, clt, set(bare)

    def has_features(self, li: int) -> bool:
        return self.clt is not None or self.layers[li] not in self.bare

    def enc_cols(self, li: int, idx: torch.Tensor) -> torch.Tensor:
        if self.clt is not None:
            return self.clt.W_enc[li].detach()[:, idx.to(self.clt.W_enc.device)].T
        dic = self.tcs[self.layers[li]]
        return dic.W_enc.detach()[:, idx.to(dic.device)].T

    def b_enc(self, li: int, idx: torch.Tensor) -> torch.Tensor:
        if self.clt is not None:
            return self.clt.b_enc[li].detach()[idx]
        return self.tcs[self.layers[li]].b_enc.detach()[idx]

    def dec_rows(self, li: int, lo: int, idx: torch.Tensor) -> torch.Tensor | None:
        """Decoder rows `[n, d]` of layer-li features into output layer lo (None: none)."""
        if self.clt is not None:
            return self.clt.W_dec[li].detach()[lo - li][idx].float() if lo >= li else None
        if lo != li or not self.has_features(li):
            return None
        return self.tcs[self.layers[li]].W_dec.detach()[idx].float()

    def b_dec(self, lo: int) -> torch.Tensor | None:
        if self.clt is not None:
            return self.clt.b_dec[lo].detach().float()
        name = self.layers[lo]
        return None if name in self.bare else self.tcs[name].b_dec.detach().float()

    def decode_first(self, fp: FrozenPass, li: int) -> torch.Tensor:
        """Position 0's decoded MLP output of layer li's features (for per-layer transcoders: the
        features of li; for a CLT: every layer's features into li)."""
        if self.clt is not None:
            return sum(fp.features[self.layers[s]][0].float() @ self.clt.W_dec[s][li - s].detach().float()
                       for s in range(li + 1))
        name = self.layers[li]
        if name in self.bare:
            return torch.zeros_like(fp.errors[name][0].float())
        return (fp.features[name][0].to(self.tcs[name].dtype) @ self.tcs[name].W_dec.detach()).float()


UPDATE_INTERVAL = 4      # circuit-tracer: re-rank the features every 4 batches


def partial_influences(rows: torch.Tensor, logit_probs: torch.Tensor, row_nodes: torch.Tensor,
                       logit_start: int, max_iter: int = 128) -> torch.Tensor:
    """circuit-tracer's `compute_partial_influences`: influence of every node on the logits
    through the rows computed so far (|rows| row-normalised with clamp 1e-8; power iteration
    `prod = prod[row_nodes] @ normalized` from the logit probabilities, summed)."""
    normalized = rows.abs()
    normalized /= normalized.sum(dim=1, keepdim=True).clamp(min=1e-8)
    influences = torch.zeros(rows.shape[1])
    prod = torch.zeros(rows.shape[1])
    prod[logit_start:logit_start + logit_probs.numel()] = logit_probs
    for _ in range(max_iter):
        prod = prod[row_nodes] @ normalized
        if not prod.any():
            break
        influences += prod
    return influences


def attribute(model, tok, transcoders, prompt: str, cfg: GraphConfig | None = None,
              **overrides) -> AttributionGraph:
    """The attribution graph of `prompt` (module doc). `model`: an nnsight model or a
    `ReplacementModel` (then `transcoders` may be None: its dictionaries). `transcoders`: per-layer
    transcoders (name -> dictionary) or a `CrossLayerTranscoder`."""
    from ..dictionaries.crosslayer import CrossLayerTranscoder
    from ..frozen import frozen_forward_clt
    from ..replacement import ReplacementModel

    cfg = GraphConfig(**{**(cfg.__dict__ if cfg is not None else {}), **overrides})
    if isinstance(model, ReplacementModel):
        transcoders = transcoders if transcoders is not None else model.saes
        model = model.model
    if isinstance(transcoders, CrossLayerTranscoder):
        clt = transcoders
        clt.check_sites(model)
        layers = [f"mlp.{l}" for l in range(clt.cfg.n_layers)]
        rep = _Replacement(layers, clt=clt)
    else:
        clt = None
        layers = _layered(model, transcoders, cfg.allow_partial)
        bare = tuple(name for name in layers if name not in transcoders)
        rep = _Replacement(layers, transcoders, bare=bare)
    ids = _tokenize(tok, prompt, model, cfg.prepend_bos)
    hf = unwrap(model)
    from ..replacement import unembedding

    w_u, b_u = unembedding(model)
    if b_u is not None:
        raise ConfigError("unembedding biases are not supported in replacement graphs")
    target_ids = None
    if cfg.target is not None:
        target_ids = [_single_token(tok, t, "target token") for t in cfg.target]
    prec = resolve_precision(cfg.precision, next(hf.parameters()).device)
    began = time.perf_counter()
    with prec.autocast():
        if clt is not None:
            fp = frozen_forward_clt(model, clt, ids)
        else:
            fp = frozen_forward(model, {n: transcoders[n] for n in layers if n not in rep.bare}, ids,
                                tuple(rep.bare))
    forward_s = time.perf_counter() - began
    T = ids.shape[1]

    # -- nodes: position 0's features and errors are not nodes (circuit-tracer's zero_positions) --
    at_first: dict[int, torch.Tensor] = {}
    if cfg.zero_first:
        for li, name in enumerate(layers):
            at_first[li] = fp.errors[name][0].float() + rep.decode_first(fp, li)
        for li, name in enumerate(layers):
            if rep.has_features(li):
                fp.features[name] = fp.features[name].clone()
                fp.features[name][0] = 0
            fp.errors[name] = fp.errors[name].clone()
            fp.errors[name][0] = 0
    feats, acts, pres = [], [], []
    for li, name in enumerate(layers):
        if not rep.has_features(li):
            continue
        f = fp.features[name]                                   # [T, d_sae]
        pos, idx = (f != 0).nonzero(as_tuple=True)
        feats.append(torch.stack([torch.full_like(pos, li), pos, idx], 1))
        acts.append(f[pos, idx].float())
        with torch.no_grad():
            x = fp.mlp_in[name].detach()[0].float()
            pre = (x[pos] * rep.enc_cols(li, idx).float()).sum(-1) + rep.b_enc(li, idx).float()
        pres.append(pre)
    features = torch.cat(feats).cpu() if feats else torch.zeros(0, 3, dtype=torch.long)
    activations = torch.cat(acts).cpu() if acts else torch.zeros(0)
    pre_acts = torch.cat(pres).cpu() if pres else torch.zeros(0)
    n_feat = features.shape[0]

    final_logits = fp.logits[-1].float()
    if target_ids is None:
        probs = torch.softmax(final_logits, -1)
        top_p, top_i = probs.sort(descending=True)
        cut = int(torch.searchsorted(top_p.cumsum(0), torch.tensor(cfg.desired_logit_prob))) + 1
        n_logits = max(1, min(cfg.max_n_logits, cut))
        logit_tokens, logit_probs = top_i[:n_logits].cpu(), top_p[:n_logits].cpu()
        seeds_u = (w_u[logit_tokens.to(w_u.device)] - w_u.mean(0, keepdim=True)).detach().float()
        values = (final_logits[logit_tokens.to(final_logits.device)] - final_logits.mean()).cpu()
        labels = [tok.decode([int(t)]) for t in logit_tokens.tolist()]
    else:
        a, b = target_ids
        logit_tokens = torch.tensor([a])
        logit_probs = torch.ones(1)
        seeds_u = (w_u[a] - w_u[b]).detach().float()[None]
        values = (final_logits[a] - final_logits[b]).reshape(1).cpu()
        labels = [f"{tok.decode([a])} − {tok.decode([b])}"]
    n_logits = logit_tokens.numel()

    n_err = len(layers) * T
    n = n_feat + n_err + T + n_logits
    n_select = n_feat if cfg.max_feature_nodes is None else min(n_feat, cfg.max_feature_nodes)
    store = torch.zeros(n_logits + n_select, n, dtype=torch.float32)   # computed rows, all columns
    store_bias = torch.zeros(n_logits + n_select, dtype=torch.float64)
    row_nodes = torch.zeros(n_logits + n_select, dtype=torch.long)    # node index of each row
    # source tables: for each output layer lo, (source rows, decoder rows, positions, activations)
    sources: dict[int, list] = {lo: [] for lo in range(len(layers))}
    for li in range(len(layers)):
        rows = (features[:, 0] == li).nonzero().squeeze(-1)
        if not rows.numel():
            continue
        idx = features[rows, 2]
        for lo in range(li, len(layers)):
            dec = rep.dec_rows(li, lo, idx)
            if dec is not None:
                sources[lo].append((rows, dec, features[rows, 1], activations[rows]))
    leaves = [fp.leaves["embed"]] + [fp.leaves[name] for name in layers]
    err_vecs = {li: fp.errors[name].float() for li, name in enumerate(layers)}
    emb = fp.embeddings.float()
    b_dec = {lo: rep.b_dec(lo) for lo in range(len(layers))}

    def fill(st: int, grads: Sequence[torch.Tensor | None], bias0: torch.Tensor) -> None:
        """Write the edges of S targets into store rows st..st+S from the gradients at the leaves."""
        S = bias0.shape[0]
        block = store[st:st + S]
        g_emb = grads[0]
        if g_emb is not None:
            block[:, n_feat + n_err: n_feat + n_err + T] = (g_emb[:, 0].float() * emb).sum(-1).cpu()
        bias = bias0.double()
        for lo in range(len(layers)):
            g = grads[lo + 1]
            if g is None:
                continue
            g = g[:, 0].float()                                  # [S, T, d]
            block[:, n_feat + lo * T: n_feat + (lo + 1) * T] = (g * err_vecs[lo]).sum(-1).cpu()
            if b_dec[lo] is not None:
                bias = bias + (g.sum(1) @ b_dec[lo]).double().cpu()
            if lo in at_first:
                bias = bias + (g[:, 0] @ at_first[lo].to(g.device)).double().cpu()
            for rows, dec, pos, act in sources[lo]:
                block[:, rows] += (g[:, pos.to(g.device)] * dec).sum(-1).cpu() * act
        store_bias[st:st + S] = bias

    def feature_rows(batch_idx: torch.Tensor, st: int) -> None:
        """Rows of the features `batch_idx` (indices into `features`), written at store row st."""
        S = batch_idx.numel()
        chunk = features[batch_idx]
        outs, seeds = [], []
        for li in sorted(set(chunk[:, 0].tolist())):
            x = fp.mlp_in[layers[li]]
            seed = torch.zeros((S,) + tuple(x.shape), dtype=x.dtype, device=x.device)
            which = (chunk[:, 0] == li).nonzero().squeeze(-1)
            seed[which, 0, chunk[which, 1]] = rep.enc_cols(li, chunk[which, 2]).to(x.dtype)
            outs.append(x)
            seeds.append(seed)
        grads = torch.autograd.grad(outs, leaves, grad_outputs=seeds, retain_graph=True,
                                    allow_unused=True, is_grads_batched=True)
        b_enc = torch.stack([rep.b_enc(int(l), torch.tensor(int(j))).float().cpu() for l, _, j in chunk.tolist()])
        fill(st, grads, b_enc)
        row_nodes[st:st + S] = batch_idx

    bar = progress_bar(math.ceil(n_logits / cfg.batch_size) + math.ceil(n_select / cfg.batch_size),
                       "attribution graph", unit="batch", enabled=cfg.progress, leave=True)
    device = fp.final.device
    visited = torch.zeros(n_feat, dtype=torch.bool)
    st = 0
    try:
        with prec.autocast():
            for s in range(0, n_logits, cfg.batch_size):          # logit rows first
                sl = slice(s, min(n_logits, s + cfg.batch_size))
                S = sl.stop - sl.start
                seed = torch.zeros((S,) + tuple(fp.final.shape), dtype=fp.final.dtype, device=device)
                seed[:, 0, -1] = seeds_u[sl].to(device, fp.final.dtype)
                grads = torch.autograd.grad([fp.final], leaves, grad_outputs=[seed], retain_graph=True,
                                            allow_unused=True, is_grads_batched=True)
                fill(st, grads, torch.zeros(S))
                row_nodes[st:st + S] = torch.arange(n - n_logits + sl.start, n - n_logits + sl.stop)
                st += S
                bar.update(1)
            while int(visited.sum()) < n_select:                    # feature rows
                if n_select == n_feat:
                    pending = torch.arange(n_feat)                 # all, in order (layer-sorted)
                else:   # circuit-tracer: the most influential unvisited features, by the rows so far
                    infl = partial_influences(store[:st], logit_probs, row_nodes[:st], n - n_logits)
                    rank = torch.argsort(infl[:n_feat], descending=True)
                    size = min(UPDATE_INTERVAL * cfg.batch_size, n_select - int(visited.sum()))
                    pending = rank[~visited[rank]][:size]
                for i in range(0, pending.numel(), cfg.batch_size):
                    batch_idx = pending[i:i + cfg.batch_size]
                    feature_rows(batch_idx, st)
                    visited[batch_idx] = True
                    st += batch_idx.numel()
                    bar.update(1)
    finally:
        bar.close()

    # -- the graph over the selected features (circuit-tracer's layout) ---------------------------
    selected = visited.nonzero().squeeze(-1)                   # ascending = (layer, pos, feature)
    keep_cols = torch.cat([selected, torch.arange(n_feat, n)])
    row_of = torch.full((n,), -1, dtype=torch.long)
    row_of[row_nodes[:st]] = torch.arange(st)
    m = keep_cols.numel()
    adjacency = torch.zeros(m, m, dtype=torch.float32)
    biases = torch.zeros(selected.numel() + n_logits, dtype=torch.float64)
    dropped = torch.ones(n, dtype=torch.bool)
    dropped[keep_cols] = False
    target_nodes = torch.cat([selected, torch.arange(n - n_logits, n)])
    for out_i, node in enumerate(target_nodes.tolist()):
        r = int(row_of[node])
        full = store[r]
        new_row = selected.numel() + n_err + T + (out_i - selected.numel()) if out_i >= selected.numel() else out_i
        adjacency[new_row] = full[keep_cols]
        # sources left out of the graph (unselected features) count as bias
        biases[out_i] = store_bias[r] + full[dropped].double().sum()
    features, activations, pre_acts = features[selected], activations[selected], pre_acts[selected]
    graph = AttributionGraph(
        prompt=prompt, tokens=ids[0].cpu(), token_strings=[tok.decode([int(t)]) for t in ids[0].tolist()],
        layers=layers, features=features, activations=activations, logit_tokens=logit_tokens,
        logit_probs=logit_probs.float(), logit_labels=labels, adjacency=adjacency,
        pre_activations=pre_acts, biases=biases.float(), targets_values=values.float(),
        model=model_name_of(model),
        meta={"seconds": round(time.perf_counter() - began, 2), "forward_seconds": round(forward_s, 2),
              "precision": prec.record(), "config": {k: v for k, v in cfg.__dict__.items()},
              "dictionaries": "cross-layer transcoder" if clt is not None else "per-layer transcoders",
              "partial": bool(rep.bare), "error_only_layers": sorted(rep.bare),
              "active_features": n_feat, "selected_features": int(selected.numel())})
    return graph


# -- to the graph floor (export, viewer) ----------------------------------------------------------
def to_feature_graph(graph: AttributionGraph, model=None, tok=None,
                     transcoders: Mapping[str, Dictionary] | None = None, prune: bool = True,
                     node_threshold: float | None = None, edge_threshold: float | None = None,
                     label_top: int = 3) -> "FeatureGraph":
    """The (pruned) graph as a `FeatureGraph`: node `effect` = circuit-tracer's node influence,
    edges = direct effects (weight of source -> target); meta carries the prompt, its tokens, the
    scores, the error share and warnings. With `model` and `transcoders`, features are labelled by
    the tokens their decoder rows promote (the one logit lens)."""
    from ..graph import FeatureGraph
    from ..replacement import logit_lens

    cfg = graph.meta.get("config", {})
    node_threshold = cfg.get("node_threshold", 0.8) if node_threshold is None else node_threshold
    edge_threshold = cfg.get("edge_threshold", 0.98) if edge_threshold is None else edge_threshold
    influence = graph.node_influence()
    n = graph.adjacency.shape[0]
    if prune:
        nodes_keep, edges_keep, _ = graph.prune(node_threshold, edge_threshold)
    else:
        nodes_keep = torch.ones(n, dtype=torch.bool)
        edges_keep = graph.adjacency != 0
    ids = graph.node_ids()
    replacement, completeness = graph.scores()
    share = graph.error_share()
    warnings = []
    if share > 0.25:
        warnings.append(f"error nodes hold {share:.0%} of the influence on the logits: the transcoders "
                        "leave that much of the computation unexplained")
    if graph.meta.get("error_only_layers"):
        warnings.append(f"MLPs {', '.join(graph.meta['error_only_layers'])} have no transcoder: their "
                        "whole outputs are error nodes")
    meta = {"model": graph.model, "task": "replacement graph", "method": "frozen replacement model "
            "(circuit-tracer)", "prompt": graph.prompt, "prompt_tokens": graph.token_strings,
            "prompt_token_ids": graph.tokens.tolist(), "replacement_score": replacement,
            "completeness_score": completeness, "error_share": share, "warnings": warnings,
            "n_layers": graph.n_layers, "slug": "replacement-" + sha256(graph.prompt.encode()).hexdigest()[:10],
            "node_threshold": node_threshold, "edge_threshold": edge_threshold,
            "seconds": graph.meta.get("seconds"), "target": " | ".join(graph.logit_labels)}
    fg = FeatureGraph(meta=meta)
    labels: dict[int, str] = {}
    from ..dictionaries.crosslayer import CrossLayerTranscoder

    if model is not None and transcoders is not None and tok is not None:
        keep_feats = nodes_keep[: graph.n_features].nonzero().squeeze(-1).tolist()
        for start in range(0, len(keep_feats), 256):
            part = keep_feats[start:start + 256]
            if isinstance(transcoders, CrossLayerTranscoder):   # label by the own-layer decoder
                rows = torch.stack([transcoders.W_dec[int(graph.features[i, 0])].detach()[0, int(graph.features[i, 2])]
                                    .float().cpu() for i in part])
            else:
                rows = torch.stack([transcoders[graph.layers[int(graph.features[i, 0])]]
                                    .W_dec.detach()[int(graph.features[i, 2])].float().cpu() for i in part])
            top = logit_lens(model, rows).topk(label_top, dim=-1).indices
            for i, t in zip(part, top.tolist()):
                labels[i] = "↑ " + " ".join(repr(tok.decode([j])) for j in t)
    for i in nodes_keep.nonzero().squeeze(-1).tolist():
        nid, eff = ids[i], float(influence[i])
        if i < graph.n_features:
            layer, pos, feat = (int(v) for v in graph.features[i])
            fg.add_node(nid, kind="feature", hook=graph.layers[layer], layer=layer, pos=pos, feature=feat,
                        activation=float(graph.activations[i]), effect=eff, label=labels.get(i, ""),
                        token=graph.token_strings[pos])
        elif i < graph.error_slice.stop:
            layer, pos = divmod(i - graph.n_features, graph.n_pos)
            fg.add_node(nid, kind="error", hook=graph.layers[layer], layer=layer, pos=pos, effect=eff,
                        label=f"{graph.layers[layer]} error", token=graph.token_strings[pos])
        elif i < graph.token_slice.stop:
            pos = i - graph.token_slice.start
            fg.add_node(nid, kind="embed", hook="embed", layer=-1, pos=pos, effect=eff,
                        label=graph.token_strings[pos], token=graph.token_strings[pos])
        else:
            j = i - graph.logit_slice.start
            fg.add_node(nid, kind="logit", layer=graph.n_layers, pos=graph.n_pos - 1,
                        feature=int(graph.logit_tokens[j]), effect=float(graph.logit_probs[j]),
                        label=graph.logit_labels[j], token=graph.logit_labels[j],
                        token_id=int(graph.logit_tokens[j]), prob=float(graph.logit_probs[j]))
    targets, sources = (edges_keep & (graph.adjacency != 0)).nonzero(as_tuple=True)
    for t, s in zip(targets.tolist(), sources.tolist()):
        if nodes_keep[t] and nodes_keep[s]:
            fg.add_edge(ids[s], ids[t], float(graph.adjacency[t, s]))
    return fg


# -- the graph against the unfrozen model ----------------------------------------------------------
def predicted_ablation_effects(graph: AttributionGraph, rows: Sequence[int], target: int = 0) -> dict:
    """Predicted change of logit target `target` when each feature in `rows` is ablated, in the
    replacement model: `direct` (its edge to the target) and `total` (through every path of
    features, each active feature responding linearly: Δa_j = Δpre_j, errors held fixed)."""
    nf = graph.n_features
    a = graph.activations.double()
    safe = torch.where(a != 0, a, torch.ones_like(a))
    feat = graph.adjacency[:nf, :nf].double() / safe[None, :]          # Δpre_j per unit Δa_i
    logit_row = graph.adjacency[graph.logit_slice.start + target, :nf].double() / safe
    eye = torch.eye(nf, dtype=torch.float64)
    # response of every feature to a unit change of each feature: (I - feat)^-1 (a DAG: exact)
    response = torch.linalg.solve_triangular(eye - _layer_sorted(graph, feat), eye, upper=False) \
        if nf else eye
    out = {"direct": [], "total": []}
    for i in rows:
        delta = torch.zeros(nf, dtype=torch.float64)
        delta[i] = -a[i]
        out["direct"].append(float(logit_row[i] * -a[i]))
        out["total"].append(float(logit_row @ (response @ delta)))
    return out


def _layer_sorted(graph: AttributionGraph, feat: torch.Tensor) -> torch.Tensor:
    """`feat` is lower triangular in the node order (features sorted by layer, edges go from
    earlier layers to later ones); checked here."""
    upper = torch.triu(feat, diagonal=0)
    if upper.abs().max() > 0 if upper.numel() else False:
        raise GraphError("feature edges are not ordered by layer")
    return feat


@torch.no_grad()
def intervention_check(model, tok, transcoders: Mapping[str, Dictionary], graph: AttributionGraph,
                       top: int = 10, target: int = 0) -> dict:
    """Ablate each of the `top` most influential features in the real model (transcoders spliced
    with their error terms, which every later layer recomputes: the model is not frozen) and
    compare the measured change of logit target `target` with the graph's predictions.
    Returns {features, measured, direct, total, pearson_total, pearson_direct}."""
    from ..dictionaries.crosslayer import CrossLayerTranscoder
    from ..replacement import ReplacementModel

    if isinstance(transcoders, CrossLayerTranscoder):
        raise ConfigError("intervention_check ablates per-layer transcoder features in the model; "
                          "a cross-layer transcoder's features write to several layers and are not "
                          "supported yet")
    nf = graph.n_features
    if nf == 0:
        raise GraphError("the graph has no feature nodes to ablate")
    influence = graph.node_influence()[:nf]
    rows = influence.argsort(descending=True)[:top].tolist()
    rm = ReplacementModel(model, {n: transcoders[n] for n in graph.layers if n in transcoders}, tok)
    ids = graph.tokens[None]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if graph.meta.get("config", {}).get("target") is not None:
        a, b = (tok.encode(t, add_special_tokens=False)[0] for t in graph.meta["config"]["target"])
        value = lambda lg: float(lg[0, a] - lg[0, b])
    else:
        t = int(graph.logit_tokens[target])
        value = lambda lg: float(lg[0, t] - lg[0].mean())
    base, _ = rm.run(inputs, last=True)
    measured = []
    for i in rows:
        layer, pos, feat = (int(v) for v in graph.features[i])
        name = graph.layers[layer]

        def edit(site, f, err, name=name, pos=pos, feat=feat):
            if site.name != name:
                return None
            f = f.clone()
            f[:, pos, feat] = 0
            return f, err

        logits, _ = rm.run(inputs, edit=edit, last=True)
        measured.append(value(logits.float()) - value(base.float()))
    pred = predicted_ablation_effects(graph, rows, target)
    out = {"features": [graph.node_ids()[i] for i in rows], "measured": measured, **pred}
    for kind in ("total", "direct"):
        out[f"pearson_{kind}"] = _pearson(pred[kind], measured)
    return out


def _pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    if len(x) < 3:
        return None
    t = torch.tensor([list(x), list(y)], dtype=torch.float64)
    if (t.std(dim=1) == 0).any():
        return None
    return float(torch.corrcoef(t)[0, 1])
