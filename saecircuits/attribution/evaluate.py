"""Circuit evaluation: faithfulness curves, completeness, edge faithfulness, method agreement.

    F(C)          mean metric when every node outside circuit C is ablated (its value set to the
                  ablation target at every hook; nodes inside C are recomputed)
    faithfulness  (F(C) − F(∅)) / (F(M) − F(∅)),  M = the whole model, ∅ = every node ablated
    completeness  (F(M∖C) − F(∅)) / (F(M) − F(∅)): ablate the circuit only (small is complete)
    edge faithfulness (linear): the circuit's faithfulness after also removing the direct
                  effects of the pruned edges between circuit nodes (first-order estimate)
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from ..errors import ConfigError, GraphError
from ..replacement import bind
from . import ablation as ab
from .ablation import State
from ..graph import Node
from .nodes import NodeScores
from .stream import LazyStates


def _masks(state: State, keep: set[Node], invert: bool):
    """hook -> (ablate_f `[1, T, d_sae]`, ablate_err `[1, T, 1]`) bool masks."""
    out = {}
    for h, f in state.f.items():
        T, d = f.shape[1], f.shape[2]
        kf = torch.zeros(T, d, dtype=torch.bool, device=f.device)
        ke = torch.zeros(T, 1, dtype=torch.bool, device=f.device)
        for node in keep:
            if node.hook != h:
                continue
            where = slice(None) if node.pos is None else node.pos
            if node.is_error:
                ke[where] = True
            else:
                kf[where, node.feature] = True
        if invert:
            out[h] = (kf.unsqueeze(0), ke.unsqueeze(0))
        else:
            out[h] = ((~kf).unsqueeze(0), (~ke).unsqueeze(0))
    return out


def _nonempty(keep: Iterable[Node]) -> list[Node]:
    keep = list(keep)
    if not keep:
        raise GraphError("the circuit is empty: it has no feature or error nodes to evaluate")
    return keep


class Evaluator:
    """Runs circuits with the complement ablated; targets are computed once per chunk."""

    def __init__(self, model, saes=None, states: Sequence[State] = (), ablation: str = "mean",
                 means=None, seed: int = 0):
        """`Evaluator(rm, states=states, ...)` (bound) or `Evaluator(model, saes, states, ...)`."""
        rm = bind(model, saes)
        lazy = isinstance(states, LazyStates)   # keep it lazy: a list would pin every chunk
        states = states if lazy else list(states)
        if not states:
            raise ConfigError("Evaluator needs at least one prepared chunk state")
        ab.check_ablation(ablation, states[0].chunk.task)
        self.rm, self.states, self.ablation = rm, states, ablation
        self.model, self.saes = rm.model, rm.saes
        if ablation == "mean" and means is None:
            means = ab.dataset_means(rm, [s.chunk for s in self.states])
        self.means, self.seed = means, seed
        # lazy states: targets are rebuilt per chunk in each `metric` call, never all held
        self.targets = None if lazy else [self._targets(i, s) for i, s in enumerate(self.states)]
        self.n = sum(len(s.chunk.task) for s in self.states)
        self.f_model = float(torch.cat([s.metric for s in self.states]).mean())
        self.f_empty = self.metric(set())

    def metric(self, keep: Iterable[Node], invert: bool = False) -> float:
        """Mean metric with every node outside `keep` ablated (`invert`: ablate `keep` only)."""
        keep = {Node.coerce(nd) for nd in keep}
        total = 0.0
        for i, st in enumerate(self.states):
            tg = self._targets(i, st) if self.targets is None else self.targets[i]
            masks = _masks(st, keep, invert)
            vals = {h: (masks[h][0], tg[h][0], masks[h][1], tg[h][1]) for h in st.f}
            total += float(ab.run_metric(self.rm, st.chunk, edit=ab.set_edit(vals)).sum())
        return total / self.n

    def _targets(self, i: int, st: State) -> dict:
        """hook -> (target f, target err) of chunk `i` for the evaluation ablation."""
        return ab.targets(self.rm, st.chunk, {h: (st.f[h], st.err[h]) for h in st.f},
                          self.ablation, self.means, self.seed + i)

    def faithfulness(self, keep: Iterable[Node]) -> float:
        return self._normalise(self.metric(_nonempty(keep)))

    def completeness(self, keep: Iterable[Node]) -> float:
        return self._normalise(self.metric(_nonempty(keep), invert=True))

    def _normalise(self, value: float) -> float:
        span = self.f_model - self.f_empty
        if abs(span) < 1e-9:
            raise GraphError("F(M) equals F(∅): the ablation does not change the metric, so "
                             "faithfulness is undefined")
        return (value - self.f_empty) / span


def circuit_by_size(scores: NodeScores, k: int, errors: bool | str = True) -> list[Node]:
    """Top-k feature nodes by |effect| plus error nodes: with `errors=True` those at least as
    large as the k-th feature (feature-circuits' threshold rule), `"all"` every one, `False` none."""
    if errors not in (True, False, "all"):
        raise ConfigError(f"errors must be True, False or 'all', got {errors!r}")
    ranked = scores.nodes()
    feats = [nd for nd in ranked if not nd.is_error][:k]
    if errors == "all":
        return feats + [nd for nd in ranked if nd.is_error]
    if not errors:
        return feats
    if not feats:
        return [nd for nd in ranked if nd.is_error] if k == 0 else []
    floor = abs(scores.effect(feats[-1]))
    return feats + [nd for nd in ranked if nd.is_error and abs(scores.effect(nd)) >= floor]


def faithfulness_curve(ev: Evaluator, scores: NodeScores,
                       sizes: Sequence[int] = (5, 10, 20, 50, 100, 200),
                       errors: bool | str = True) -> list[dict]:
    """Faithfulness of the top-k circuits for each k in `sizes` (`errors`: see `circuit_by_size`)."""
    out = []
    for k in sizes:
        nodes = circuit_by_size(scores, k, errors)
        n_feat = sum(1 for nd in nodes if not nd.is_error)
        val = ev.metric(nodes)
        out.append({"k": k, "features": n_feat, "errors": len(nodes) - n_feat, "metric": val,
                    "faithfulness": ev._normalise(val)})
    return out


def edge_faithfulness_linear(ev: Evaluator, nodes: Sequence[Node], all_edges: dict,
                             kept_edges: set) -> float:
    """Faithfulness of the circuit minus the direct effects of its pruned internal edges."""
    node_set = {Node.coerce(nd) for nd in nodes}
    removed = sum(w for (u, v), w in all_edges.items()
                  if (u, v) not in kept_edges and u in node_set
                  and (v.kind == "metric" or v in node_set))
    return ev._normalise(ev.metric(nodes) - removed)


def agreement(estimate: NodeScores, exact: dict[Node, float]) -> dict:
    """Pearson r and sign agreement of `estimate` against exact effects on the same nodes."""
    nodes = list(exact)
    if len(nodes) < 2:
        raise GraphError("agreement needs at least two nodes")
    a = torch.tensor([estimate.effect(nd) for nd in nodes], dtype=torch.float64)
    b = torch.tensor([exact[nd] for nd in nodes], dtype=torch.float64)
    r = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    return {"n": len(nodes), "pearson_r": r if math.isfinite(r) else float("nan"),
            "sign_agreement": float(((a > 0) == (b > 0)).double().mean())}
