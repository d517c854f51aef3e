"""Circuit evaluation: faithfulness curves, completeness, edge faithfulness, method agreement.

    F(C)          mean metric when every node outside circuit C is ablated (its value set to the
                  ablation target at every hook; nodes inside C are recomputed)
    faithfulness  (F(C) − F(∅)) / (F(M) − F(∅)),  M = the whole model, ∅ = every node ablated
    completeness  (F(M∖C) − F(∅)) / (F(M) − F(∅)): ablate the circuit only (small is complete)
    edge faithfulness (exact, `Evaluator.edge_faithfulness`): the circuit's faithfulness when,
                  besides the nodes outside C, the edges outside the kept edge set are removed:
                  each circuit node v (and the metric) is recomputed in a forward where every
                  upstream circuit node u feeds it its edge-ablated value when (u, v) is kept
                  and its ablation target when not (all other nodes ablated). Removing no edge
                  gives F(C); removing every edge gives F(∅) (design invariant 9).
    edge faithfulness (linear): first-order estimate of the same (`edge_faithfulness_linear`)
    baseline span |F(M) − F(∅)| / |F(M)|: how much room the ablation leaves to be explained
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
from ..progress import bar as progress_bar, track
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
                 means=None, seed: int = 0, progress: bool = True):
        """`Evaluator(rm, states=states, ...)` (bound) or `Evaluator(model, saes, states, ...)`;
        `progress`: a bar per pass over the chunks."""
        rm = bind(model, saes)
        lazy = isinstance(states, LazyStates)   # keep it lazy: a list would pin every chunk
        states = states if lazy else list(states)
        if not states:
            raise ConfigError("Evaluator needs at least one prepared chunk state")
        ab.check_ablation(ablation, states[0].chunk.task)
        self.rm, self.states, self.ablation, self.progress = rm, states, ablation, progress
        self.model, self.saes = rm.model, rm.saes
        if ablation == "mean" and means is None:
            means = ab.dataset_means(rm, [s.chunk for s in self.states], progress)
        self.means, self.seed = means, seed
        # lazy states: targets are rebuilt per chunk in each `metric` call, never all held
        self.targets = None if lazy else [self._targets(i, s) for i, s in track(
            enumerate(self.states), f"ablation targets ({ablation})", total=len(self.states),
            unit="chunk", enabled=progress)]
        self.n = sum(len(s.chunk.task) for s in self.states)
        # a lazy chunk's metric is computed here when no earlier pass has (forward + backward)
        self.f_model = float(torch.cat([s.metric for s in track(
            self.states, "clean metric", unit="chunk", enabled=progress)]).mean())
        self.f_empty = self.metric(set(), desc=f"all nodes ablated ({ablation})")

    def metric(self, keep: Iterable[Node], invert: bool = False, desc: str | None = None) -> float:
        """Mean metric with every node outside `keep` ablated (`invert`: ablate `keep` only);
        `desc`: the progress bar's label."""
        keep = {Node.coerce(nd) for nd in keep}
        total = 0.0
        desc = desc or f"{'completeness' if invert else 'faithfulness'} ({self.ablation})"
        chunks = track(enumerate(self.states), desc, total=len(self.states), unit="chunk",
                       enabled=self.progress)
        for i, st in chunks:
            tg = self._targets(i, st) if self.targets is None else self.targets[i]
            masks = _masks(st, keep, invert)
            vals = {h: (masks[h][0], tg[h][0], masks[h][1], tg[h][1]) for h in st.f}
            total += float(ab.run_metric(self.rm, st.chunk, edit=ab.set_edit(vals)).sum())
        return total / self.n

    def span_ratio(self) -> float | None:
        """|F(M) − F(∅)| / |F(M)| (None when F(M) = 0)."""
        return abs(self.f_model - self.f_empty) / abs(self.f_model) if self.f_model else None

    def check_span(self) -> None:
        """GraphError when F(M) = F(∅) (faithfulness undefined); cheap, run before attribution."""
        self._normalise(self.f_model)

    def _region(self, node: Node, f: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        where = slice(None) if node.pos is None else node.pos
        return e[:, where, :] if node.is_error else f[:, where, node.feature]

    def edge_metric(self, nodes: Iterable[Node], kept_edges: Iterable[tuple]) -> float:
        """Mean metric of circuit `nodes` with every edge outside `kept_edges` removed (exact:
        one forward per destination group and chunk; see the module docstring)."""
        nodes = _nonempty({Node.coerce(nd) for nd in nodes})
        kept = {(Node.coerce(u), Node.coerce(v)) for u, v in kept_edges}
        order = {h: i for i, h in enumerate(self.rm.hooks)}
        nodes.sort(key=lambda nd: order[nd.hook])
        metric = Node.metric()
        total = 0.0
        groups: dict[tuple, list[Node]] = {}   # destinations that share their kept inputs
        for v in nodes:
            inc = frozenset(u for u in nodes if order[u.hook] < order[v.hook] and (u, v) in kept)
            groups.setdefault((v.hook, inc), []).append(v)
        with progress_bar(len(self.states) * (len(groups) + 1), "edge faithfulness (exact)",
                          unit="pass", enabled=self.progress) as bar:
            for i, st in enumerate(self.states):
                tg = self.targets[i] if self.targets is not None else self._targets(i, st)
                x: dict[Node, torch.Tensor] = {}

                def frozen(dest: Node, upto: int | None):
                    """hook -> full-mask edit values: targets, kept upstream circuit nodes at x."""
                    vals = {}
                    for h in st.f:
                        if upto is not None and order[h] >= upto:
                            continue
                        tf, te = tg[h][0].clone(), tg[h][1].clone()
                        for u in nodes:
                            if u.hook == h and u in x and (u, dest) in kept:
                                self._region(u, tf, te)[...] = x[u]
                        full_f = torch.ones(1, 1, 1, dtype=torch.bool, device=tf.device).expand_as(tf)
                        full_e = torch.ones(1, 1, 1, dtype=torch.bool, device=te.device)
                        vals[h] = (full_f, tf, full_e.expand(*te.shape[:2], 1), te)
                    return vals

                for (h, _inc), dests in sorted(groups.items(), key=lambda kv: order[kv[0][0]]):
                    store: dict = {}
                    vals = frozen(dests[0], order[h])
                    setter = ab.set_edit(vals)

                    def edit(site, f, err, _h=h, _setter=setter, _store=store):
                        if site.name == _h:
                            _store[_h] = (f.detach(), err.detach())
                            return None
                        return _setter(site, f, err)

                    ab.run_metric(self.rm, st.chunk, edit=edit)
                    f_d, e_d = store[h]
                    for v in dests:
                        x[v] = self._region(v, f_d, e_d).clone()
                    bar.update(1)
                out = ab.run_metric(self.rm, st.chunk, edit=ab.set_edit(frozen(metric, None)))
                total += float(out.sum())
                bar.update(1)
        return total / self.n

    def edge_faithfulness(self, nodes: Iterable[Node], kept_edges: Iterable[tuple]) -> float:
        """Faithfulness of the circuit with the edges outside `kept_edges` removed (exact)."""
        return self._normalise(self.edge_metric(nodes, kept_edges))

    def _targets(self, i: int, st: State) -> dict:
        """hook -> (target f, target err) of chunk `i` for the evaluation ablation."""
        return ab.targets(self.rm, st.chunk, {h: (st.f[h], st.err[h]) for h in st.f},
                          self.ablation, self.means, self.seed + i)

    def faithfulness(self, keep: Iterable[Node], desc: str | None = None) -> float:
        return self._normalise(self.metric(_nonempty(keep), desc=desc))

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
        val = ev.metric(nodes, desc=f"faithfulness curve: top {k} ({ev.ablation})")
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


def error_share(scores: NodeScores, nodes: Iterable[Node]) -> float | None:
    """Share of the circuit's total |effect| carried by its error nodes (None when all zero)."""
    nodes = [Node.coerce(nd) for nd in nodes]
    tot = sum(abs(scores.effect(nd)) for nd in nodes)
    err = sum(abs(scores.effect(nd)) for nd in nodes if nd.is_error)
    return err / tot if tot > 0 else None


DEGENERATE_SPAN = 0.25
ERROR_DOMINATED = 0.5
LOW_ACCURACY = 0.7
PARTIAL_SITES = 0.5


def trace_warnings(summary: dict) -> list[str]:
    """Warnings for numbers that mean less than they seem: a degenerate baseline (span < 25 % of
    |F(M)|), error-dominated circuits (> 50 % of |effect|), low clean accuracy (< 0.7)."""
    out = []
    for name, row in summary.get("evaluation", {}).items():
        span = row.get("baseline_span")
        if span is not None and span < DEGENERATE_SPAN:
            out.append(f"degenerate {name} baseline: |F(M) - F(∅)| is {span:.0%} of |F(M)| "
                       f"(< {DEGENERATE_SPAN:.0%}), so {name} faithfulness and completeness say "
                       "little")
    share = summary.get("error_share")
    if share is not None and share > ERROR_DOMINATED:
        out.append(f"error nodes carry {share:.0%} of the circuit's |effect| (> "
                   f"{ERROR_DOMINATED:.0%}): the SAEs leave most of the mechanism unexplained")
    through = summary.get("share_through_sites")
    if through is not None and through < PARTIAL_SITES:
        out.append(f"only {through:.0%} of the clean -> patch change runs through the dictionaries' "
                   "sites (ablating every node leaves the rest of the model live): faithfulness is a "
                   "share of that part; put dictionaries at every layer (transcoders: `saecircuits "
                   "graph`) to cover the whole behaviour")
    acc = summary.get("accuracy_clean")
    if acc is not None and acc < LOW_ACCURACY:
        out.append(f"clean accuracy {acc:.2f} < {LOW_ACCURACY}: the model often fails the task, so "
                   "its circuit is a circuit for a mostly wrong answer")
    return out
