"""Auto-interp explanations (`saecircuits explain`) as feature labels for graphs and dashboards.

An explanations file is `explanations.json` of an explain run: `{"hook:feature": text}` (a
value may also be `{"explanation": text, "score": number | null}`). Its scores come from the
sibling `results.json` the same run writes (rows with `key`, `basis`, `score`, `score_top`);
a file without one gives explanations without scores. Explanations are LLM output: the
exporters treat them as untrusted text (escaped in DOT/SVG, `textContent` in the pages).

    expl = load_explanation_records("runs/explain")     # {"resid.10:123": Explanation(...)}
    labelled = with_explanations(graph, expl)           # feature nodes gain `explanation`
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from ..errors import ExportError
from ..fileio import file_in
from ..graph import FeatureGraph

EXPLANATIONS_FILE = "explanations.json"
RESULTS_FILE = "results.json"


@dataclass(frozen=True)
class Explanation:
    """One feature's explanation; `score` / `score_top`: the simulation correlation over all
    scoring excerpts / the held-out top ones (None when unknown)."""

    text: str
    score: float | None = None
    score_top: float | None = None

    def fields(self) -> dict[str, Any]:
        """The node / dashboard attributes: `explanation` and, when known, `explanation_score`."""
        out: dict[str, Any] = {"explanation": self.text}
        if self.score is not None:
            out["explanation_score"] = self.score
        return out


ExplanationsLike = Union[Mapping[str, Union[str, Explanation]], str, os.PathLike, None]


def _number(value: Any, what: str, path: Path) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExportError(f"{what} in {str(path)!r} must be a number or null, got {value!r}")
    return float(value) if math.isfinite(value) else None


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ExportError(f"{what} file {str(path)!r} is not valid JSON: {err}") from err
    except OSError as err:
        raise ExportError(f"cannot read {what} file {str(path)!r}: {err}") from err


def _scores(path: Path) -> dict[str, tuple[float | None, float | None]]:
    """`key -> (score, score_top)` of the SAE rows of an explain run's results.json."""
    rows = _read_json(path, "explain results")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("key"), str)
                                             for r in rows):
        raise ExportError(f"explain results file {str(path)!r} must be a list of rows with a 'key'")
    return {r["key"]: (_number(r.get("score"), f"score of {r['key']!r}", path),
                       _number(r.get("score_top"), f"score_top of {r['key']!r}", path))
            for r in rows if r.get("basis", "sae") == "sae"}


def load_explanation_records(path: str | os.PathLike) -> dict[str, Explanation]:
    """`{"hook:feature": Explanation}` from an explanations.json or an explain --out directory;
    scores from the sibling results.json when there is one. ExportError names a bad file."""
    path = file_in(path, EXPLANATIONS_FILE, "no explanations file at {path} (write one with "
                   "`saecircuits explain --out DIR`)")
    data = _read_json(path, "explanations")
    if not isinstance(data, dict):
        raise ExportError(f"explanations file {str(path)!r} must map 'hook:feature' to text")
    out: dict[str, Explanation] = {}
    for key, value in data.items():
        hook, sep, index = key.rpartition(":")
        if not sep or not hook or not index.isdigit():
            raise ExportError(f"explanations file {str(path)!r}: bad key {key!r} "
                              "(expected HOOK:INDEX such as resid.12:1234)")
        if isinstance(value, dict) and isinstance(value.get("explanation"), str):
            out[key] = Explanation(value["explanation"],
                                   _number(value.get("score"), f"score of {key!r}", path),
                                   _number(value.get("score_top"), f"score_top of {key!r}", path))
        elif isinstance(value, str):
            out[key] = Explanation(value)
        else:
            raise ExportError(f"explanations file {str(path)!r} must map 'hook:feature' to text; "
                              f"{key!r} maps to {type(value).__name__}")
    results = path.parent / RESULTS_FILE
    if results.is_file():
        scores = _scores(results)
        out = {k: e if e.score is not None or k not in scores else Explanation(e.text, *scores[k])
               for k, e in out.items()}
    return out


def load_explanations(path: str | os.PathLike) -> dict[str, str]:
    """`{"hook:feature": explanation}` from an explanations.json (or an explain --out dir)."""
    return {k: e.text for k, e in load_explanation_records(path).items()}


def as_explanations(explanations: ExplanationsLike) -> dict[str, Explanation]:
    """Normalise a path, a `{key: text | Explanation}` mapping or None to `{key: Explanation}`."""
    if explanations is None:
        return {}
    if isinstance(explanations, (str, os.PathLike)):
        return load_explanation_records(explanations)
    if not isinstance(explanations, Mapping):
        raise ExportError("explanations must be a path or a mapping 'hook:feature' -> text, got "
                          f"{type(explanations).__name__}")
    out = {}
    for key, value in explanations.items():
        if isinstance(value, str):
            value = Explanation(value)
        if not isinstance(key, str) or not isinstance(value, Explanation):
            raise ExportError(f"explanation {key!r}: expected text, got {type(value).__name__}")
        out[key] = value
    return out


def with_explanations(graph: FeatureGraph, explanations: ExplanationsLike) -> FeatureGraph:
    """A copy whose feature nodes with an explanation carry `explanation` (and
    `explanation_score` when known); `graph` itself when there is nothing to add."""
    expl = as_explanations(explanations)
    hits = [(n, expl[f"{d.get('hook')}:{d.get('feature')}"]) for n, d in graph.graph.nodes(data=True)
            if d.get("kind") == "feature" and f"{d.get('hook')}:{d.get('feature')}" in expl]
    if not hits:
        return graph
    out = graph.copy()
    for nid, e in hits:
        out.graph.nodes[nid].pop("explanation_score", None)
        out.graph.nodes[nid].update(e.fields())
    return out


def dashboards_with_explanations(dashboards: Mapping[str, Any],
                                 explanations: ExplanationsLike) -> dict[str, Any]:
    """Dashboards (`"hook:index" -> data`) whose features with an explanation gain
    `explanation` (and `explanation_score`); the input is not changed."""
    expl = as_explanations(explanations)
    out = dict(dashboards)
    for key, data in dashboards.items():
        if key in expl and isinstance(data, dict):
            out[key] = {k: v for k, v in data.items() if k != "explanation_score"} \
                | expl[key].fields()
    return out
