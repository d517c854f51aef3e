"""Regression pin for the bound-model refactor (issue 11): spliced logits, node effects and the
graph JSON of `trace_circuit` on the tiny random Llama with seeded random SAEs must not change.

The expected values are stored in `tests/fixtures/regression_bound.json` (computed on the tiny
random Llama with the tests' own tokenizer, tests/helpers.py). Regenerating them is a separate,
explicit step (only when a behaviour change is intended and explained in the commit):

    PYTHONPATH=$PWD python3 tests/regen_regression.py

The test never writes the fixture: with the former `REGEN_REGRESSION` variable set it fails
rather than compare the fixture with itself.

Feature labels are compared separately: the refactor deliberately moved the graph's labels to
the one logit lens with the final norm applied (the dashboards' lens), checked against a
hand-computed lens by test_bound.py::test_graph_labels_use_the_logit_lens_with_the_final_norm.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

import saecircuits as sc
from saecircuits.attribution import ablation as ab
from saecircuits.attribution import trace_circuit
from saecircuits.attribution.nodes import node_scores
from saecircuits.splice import encode_inputs, spliced_logits
from saecircuits.tasks import make_task

FIXTURE = Path(__file__).parent / "fixtures" / "regression_bound.json"
HOOKS = ["resid.0", "mlp.1", "resid.2"]
PROMPTS = ["The cat sat on the mat", "When Mary and John went to the store, John gave"]
TOL = 1e-5


def _saes():
    return sc.SAESet({h: sc.SAE.random(sc.SAEConfig("topk", 64, 48, k=8, hook=h), seed=10 + i)
                      for i, h in enumerate(HOOKS)})


def compute(model, tok) -> dict:
    """Everything the fixture pins, as plain JSON values."""
    saes = _saes()
    out: dict = {}
    logits = spliced_logits(model, saes, encode_inputs(tok, PROMPTS))
    out["logits_last"] = logits[:, -1, :200].tolist()
    out["logits_sum"] = float(logits.double().sum())
    task = make_task(tok, "ioi", n=4, seed=0)
    states = ab.prepare(model, saes, ab.chunks(tok, task, 2), "patch")
    for method in ("attrib", "ig"):
        sc_ = node_scores(model, saes, states, HOOKS, method, positional=True, steps=3,
                          progress=False)
        out[f"scores_{method}"] = {
            "feature_effect": {h: v.tolist() for h, v in sc_.feature_effect.items()},
            "error_effect": {h: v.tolist() for h, v in sc_.error_effect.items()},
            "metric_clean": sc_.metric_clean}
        graph, summary = trace_circuit(model, tok, saes, "ioi", method=method, n=4, top_k=8,
                                       batch_size=2, steps=3, edge_influence=1.0,
                                       progress=False)
        out[f"graph_{method}"] = graph.to_dict()
        out[f"summary_{method}"] = summary
    return json.loads(json.dumps(out))


def _close(a, b, path="", atol=TOL, field_atol=None, extra_ok=False) -> None:
    """Recursive comparison: floats within TOL relative or `atol` absolute (`field_atol`: key ->
    the absolute tolerance of the values under that key), everything else equal. `extra_ok`: `a`'s
    dicts may hold keys `b` lacks (fields a later version adds); `b`'s must all match."""
    field_atol = field_atol or {}
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), path
        assert math.isclose(a, b, rel_tol=TOL, abs_tol=atol), (path, a, b)
    elif isinstance(a, dict):
        same = set(b) <= set(a) if extra_ok else set(a) == set(b)
        assert isinstance(b, dict) and same, (path, sorted(set(a) ^ set(b)))
        for k in b:
            _close(a[k], b[k], f"{path}.{k}", field_atol.get(k, atol), field_atol, extra_ok)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (path, len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]", atol, field_atol, extra_ok)
    else:
        assert a == b, (path, a, b)


def _scale(x) -> float:
    """Largest |float| in nested lists and dicts."""
    if isinstance(x, dict):
        return max((_scale(v) for v in x.values()), default=0.0)
    if isinstance(x, list):
        return max((_scale(v) for v in x), default=0.0)
    return abs(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else 0.0


def _effect_atol(values) -> float:
    """TOL relative to the largest value: the tiny random model's feature effects are ~1e-5, so an
    absolute TOL would let them change by 100% unnoticed."""
    scale = _scale(values)
    assert scale > 0
    return TOL * scale


def _strip_labels(graph: dict) -> dict:
    graph = json.loads(json.dumps(graph))
    graph["meta"]["model"] = Path(graph["meta"]["model"]).name  # a per-run tmp directory
    for node in graph["nodes"]:
        if node["kind"] in ("feature", "error"):
            node.pop("label")
    # networkx subgraphs iterate a set of ids: node/edge order follows PYTHONHASHSEED
    graph["nodes"].sort(key=lambda n: n["id"])
    graph["edges"].sort(key=lambda e: (e["source"], e["target"]))
    return graph


@pytest.fixture(scope="module")
def result(tiny):
    if os.environ.get("REGEN_REGRESSION"):
        pytest.fail("REGEN_REGRESSION is set: the regression test does not regenerate its fixture "
                    "(that would compare it with itself); run `python3 tests/regen_regression.py`",
                    pytrace=False)
    return compute(*tiny)


@pytest.fixture(scope="module")
def expected():
    return json.loads(FIXTURE.read_text())


def test_spliced_logits_unchanged(result, expected):
    assert len(result["logits_last"]) == len(expected["logits_last"]) > 0
    _close(result["logits_last"], expected["logits_last"], "logits_last")
    _close(result["logits_sum"], expected["logits_sum"], "logits_sum")


@pytest.mark.parametrize("method", ["attrib", "ig"])
def test_node_effects_unchanged(result, expected, method):
    got, want = result[f"scores_{method}"], expected[f"scores_{method}"]
    assert set(got) == set(want)
    for key in want:
        atol = _effect_atol(want[key]) if key.endswith("_effect") else TOL
        _close(got[key], want[key], f"scores_{method}.{key}", atol)
    nonzero = sum(1 for v in result[f"scores_{method}"]["feature_effect"].values()
                  for row in v for x in row if x != 0.0)
    assert nonzero > 0


@pytest.mark.parametrize("method", ["attrib", "ig"])
def test_graph_json_unchanged(result, expected, method):
    want = _strip_labels(expected[f"graph_{method}"])
    effects = {"effect": _effect_atol([n.get("effect", 0.0) for n in want["nodes"] if n["kind"] != "metric"]),
               "weight": _effect_atol([e["weight"] for e in want["edges"]])}
    _close(_strip_labels(result[f"graph_{method}"]), want, f"graph_{method}", field_atol=effects)
    got, want = [dict(d[f"summary_{method}"]) for d in (result, expected)]
    for d in (got, want):
        d["model"] = Path(d["model"]).name
    # a summary may gain fields (a later version reports more); the pinned ones must not change
    _close(got, want, f"summary_{method}", extra_ok=True)
    assert sum(1 for n in result[f"graph_{method}"]["nodes"] if n["kind"] == "feature") > 0
