"""Pick features to steer: contrastive mean activation difference, attribution scores, and the
first-order effect of adding a feature on chosen next tokens (`promoting_features`).

Top-activating contexts: `saecircuits.export.dashboards.top_contexts`.

Both run the SAE spliced into a plain trace (`saecircuits.splice`) and stop the forward
after the hook point.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..errors import ConfigError
from ..replacement import ReplacementModel
from ..dictionaries import Dictionary as SAE
from ..splice import encode_inputs


def feature_activations(model, sae_or_saes: Mapping[str, SAE], hook: str, prompts: Sequence[str],
                        tok, batch_size: int = 16) -> list[torch.Tensor]:
    """Per prompt, `[n_tokens, d_sae]` activations at `hook` over its non-pad tokens."""
    if hook not in list(sae_or_saes):
        raise ConfigError(f"no SAE at hook point {hook!r}; SAEs are at {sorted(sae_or_saes)}")
    rm = ReplacementModel(model, {hook: sae_or_saes[hook]}, tok)
    out: list[torch.Tensor] = []
    for start in range(0, len(prompts), batch_size):
        inputs = rm.inputs(encode_inputs(tok, list(prompts[start:start + batch_size])))
        with torch.no_grad(), model.trace(inputs) as tracer:
            acts = rm.splice()
            tracer.stop()
        feats = acts[hook].features.detach().cpu()
        mask = inputs["attention_mask"].bool().cpu()
        out += [feats[row][mask[row]] for row in range(feats.shape[0])]
    return out


def contrastive_features(model, saes: Mapping[str, SAE], hook: str, clean: Sequence[str],
                         patch: Sequence[str], tok, top: int = 10, position: int | None = -1,
                         batch_size: int = 16) -> list[tuple[int, float]]:
    """Features whose mean activation at `position` is most higher on `clean` than on `patch`.

    position: token index within each prompt (-1: last), or None for the mean over its tokens.

    Returns `[(feature, mean_clean − mean_patch)]`, largest difference first.
    """
    if not clean or not patch:
        raise ConfigError("contrastive_features needs non-empty clean and patch prompt lists")
    def pooled(prompts):
        feats = feature_activations(model, saes, hook, prompts, tok, batch_size)
        return torch.stack([f.mean(0) if position is None else f[position] for f in feats])

    a, b = pooled(clean), pooled(patch)
    diff = a.mean(0) - b.mean(0)
    values, index = diff.topk(top)
    return [(int(i), float(v)) for i, v in zip(index, values)]


def attribution_features(model, saes: Mapping[str, SAE], hook: str, prompts: Sequence[str], metric, tok,
                         top: int = 10, position: int = -1) -> list[tuple[int, float]]:
    """Features with the largest mean gradient × activation on `metric` at `position`.

    metric: `logits [batch, pos, vocab] -> [batch]` (e.g. `Task.metric`). A positive score means
    the feature supports the metric (zero-ablating it lowers the metric to first order).
    Returns `[(feature, score)]`, largest first.
    """
    if hook not in list(saes):
        raise ConfigError(f"no SAE at hook point {hook!r}; SAEs are at {sorted(saes)}")
    rm = ReplacementModel(model, {hook: saes[hook]}, tok)
    logits, acts = rm.run(encode_inputs(tok, list(prompts)), grad=True)
    metric(logits).sum().backward()
    feats = acts[hook].features
    score = (feats.detach() * feats.grad)[:, position].mean(0)
    values, index = score.topk(top)
    return [(int(i), float(v)) for i, v in zip(index, values)]


def promoting_features(rm: ReplacementModel, prompts: Sequence[str], token_ids: Sequence[int],
                       top: int = 32, position: int = -1) -> dict[str, list[tuple[int, float]]]:
    """Per hook, the features whose decoder rows raise log P(any of `token_ids`) most when added.

    One forward + backward of the bound model (every SAE spliced, error terms held fixed):
    `g[f] = mean over prompts of d log sum_t P(t | prompt) / d f` at `position`, i.e. the
    first-order change of the log-probability per unit of feature f added there (inactive
    features included, unlike `attribution_features`). Multiply by a feature's typical size
    (e.g. its corpus max) to compare features across hooks.
    Returns `{hook: [(feature, g), ...]}` with the `top` largest g per hook, largest first.
    """
    if not rm.hooks:
        raise ConfigError("promoting_features needs a model with SAEs bound (no hook points)")
    ids = sorted({int(t) for t in token_ids})
    if not ids:
        raise ConfigError("promoting_features needs at least one target token id, got none")
    logits, acts = rm.run(encode_inputs(rm.tokenizer, list(prompts)), grad=True)
    logp = logits[:, position].float().log_softmax(-1)[:, ids].logsumexp(-1)  # [batch]
    hooks = list(rm.hooks)  # autograd.grad: nothing accumulates into SAE or model parameters
    grads = torch.autograd.grad(logp.sum(), [acts[h].features for h in hooks])
    out = {}
    for hook, g in zip(hooks, grads):
        grad = g[:, position].float().mean(0)  # [d_sae]
        values, index = grad.topk(min(top, grad.numel()))
        out[hook] = [(int(i), float(v)) for i, v in zip(index, values)]
    return out
