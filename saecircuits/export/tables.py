"""FeatureGraph <-> pandas DataFrames, CSV and Parquet (round trips exactly).

`nodes_df(graph)`: one row per node, columns `id, kind, hook, layer, pos, feature,
activation, effect, label` plus one column per extra node attribute (e.g. `explanation`,
plain text, and `explanation_score` of auto-interp explanations).
`edges_df(graph)`: columns `source, target, weight` plus extra edge attributes.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import GraphError
from ..fileio import atomic_path
from ..graph import EDGE_COLUMNS, NODE_COLUMNS, FeatureGraph

_INT = ("layer", "pos", "feature")
_FLOAT = ("activation", "effect", "weight")
_STR = ("id", "kind", "hook", "label", "source", "target", "explanation")
_OPTIONAL_STR = ("hook", "explanation")  # an empty cell reads back as None (no attribute)


def _check_extra(name: str, value: Any) -> Any:
    """Extra attributes must survive JSON (they are stored as JSON text in CSV)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise GraphError(f"attribute {name!r}={value!r} is not JSON-serialisable: {err}") from err
    return value


def nodes_df(graph: FeatureGraph) -> pd.DataFrame:
    """Nodes as a DataFrame (nullable `Int64` for layer/pos/feature, None for missing hooks)."""
    return graph.nodes_df()


def edges_df(graph: FeatureGraph) -> pd.DataFrame:
    """Edges as a DataFrame (`source`, `target`, `weight` float64, extras)."""
    return graph.edges_df()


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def from_dataframes(nodes: pd.DataFrame, edges: pd.DataFrame,
                    meta: dict[str, Any] | None = None) -> FeatureGraph:
    """Rebuild a FeatureGraph from `nodes_df`/`edges_df`-shaped frames."""
    for frame, need, what in ((nodes, ("id", "kind"), "nodes"),
                              (edges, EDGE_COLUMNS, "edges")):
        missing = [c for c in need if c not in frame.columns]
        if missing:
            raise GraphError(f"{what} table lacks column(s) {missing}")
    graph = FeatureGraph(meta=meta)
    try:
        for row in nodes.to_dict("records"):
            attrs = {k: (None if _missing(v) else v) for k, v in row.items()}
            nid = str(attrs.pop("id"))
            for col in _INT:
                if attrs.get(col) is not None:
                    attrs[col] = int(attrs[col])
            for col in ("activation", "effect"):
                attrs[col] = 0.0 if attrs.get(col) is None else float(attrs[col])
            attrs["label"] = "" if attrs.get("label") is None else str(attrs["label"])
            extras = {k: v for k, v in attrs.items() if k not in NODE_COLUMNS and v is not None}
            base = {k: attrs.get(k) for k in NODE_COLUMNS if k != "id"}
            graph.add_node(nid, **base, **extras)
        for row in edges.to_dict("records"):
            attrs = {k: v for k, v in row.items() if not _missing(v)}
            u, v = str(attrs.pop("source")), str(attrs.pop("target"))
            graph.add_edge(u, v, float(attrs.pop("weight")))
            graph.graph.edges[u, v].update(attrs)
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, GraphError):
            raise
        raise GraphError(f"corrupt graph table: {err}") from err
    return graph


# -- CSV: every cell is text; typed columns are parsed by name, extras are JSON ------------
def _csv_cell(col: str, value: Any) -> str:
    if _missing(value):
        return ""
    if col in _FLOAT:
        return repr(float(value))
    if col in _INT:
        return str(int(value))
    if col in _STR:
        return str(value)
    return json.dumps(_check_extra(col, value), ensure_ascii=False)


def _to_text_frame(frame: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({c: [_csv_cell(c, v) for v in frame[c].tolist()] for c in frame.columns},
                       columns=list(frame.columns))
    return out


def write_csv(graph: FeatureGraph, folder: str | os.PathLike) -> tuple[Path, Path]:
    """Write `nodes.csv` (largest |effect| first; nodes without an effect last) and `edges.csv`
    (UTF-8, RFC 4180 quoting) into `folder`."""
    folder = Path(folder)
    paths = folder / "nodes.csv", folder / "edges.csv"
    nodes = nodes_df(graph).sort_values("effect", key=lambda col: -col.abs(), kind="stable",
                                        na_position="last")
    for frame, path in zip((nodes, edges_df(graph)), paths):
        with atomic_path(path) as tmp:
            _to_text_frame(frame).to_csv(tmp, index=False, encoding="utf-8")
    return paths


def _parse_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise GraphError(f"missing graph table {str(path)!r}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise GraphError(f"corrupt graph table {str(path)!r}: {err}") from err
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise GraphError(f"graph table {str(path)!r} lacks column(s) {missing}")
    parsed: dict[str, list[Any]] = {}
    try:
        for col in frame.columns:
            cells = frame[col].tolist()
            if col in _INT:
                parsed[col] = [None if c == "" else int(c) for c in cells]
            elif col in _FLOAT:
                parsed[col] = [None if c == "" else float(c) for c in cells]
            elif col in _OPTIONAL_STR:
                parsed[col] = [None if c == "" else c for c in cells]
            elif col in _STR:
                parsed[col] = cells
            else:
                parsed[col] = [None if c == "" else json.loads(c) for c in cells]
    except ValueError as err:
        raise GraphError(f"corrupt value in {str(path)!r} column {col!r}: {err}") from err
    return pd.DataFrame(parsed, columns=list(frame.columns), dtype=object)


def read_csv(folder: str | os.PathLike, meta: dict[str, Any] | None = None) -> FeatureGraph:
    """Read `nodes.csv`/`edges.csv` from `folder` back into a FeatureGraph."""
    folder = Path(folder)
    return from_dataframes(_parse_csv(folder / "nodes.csv", ("id", "kind")),
                           _parse_csv(folder / "edges.csv", EDGE_COLUMNS), meta)


def write_parquet(graph: FeatureGraph, folder: str | os.PathLike) -> tuple[Path, Path]:
    """Write `nodes.parquet` and `edges.parquet` (typed columns; extras as JSON text)."""
    folder = Path(folder)
    paths = folder / "nodes.parquet", folder / "edges.parquet"
    for frame, path in zip((nodes_df(graph), edges_df(graph)), paths):
        frame = frame.copy()
        for col in frame.columns:
            if col not in NODE_COLUMNS and col not in EDGE_COLUMNS:
                frame[col] = [None if _missing(v) else json.dumps(_check_extra(col, v))
                              for v in frame[col].tolist()]
        with atomic_path(path) as tmp:
            frame.to_parquet(tmp, index=False)
    return paths


def read_parquet(folder: str | os.PathLike, meta: dict[str, Any] | None = None) -> FeatureGraph:
    """Read `nodes.parquet`/`edges.parquet` from `folder` back into a FeatureGraph."""
    folder = Path(folder)
    frames = []
    for name in ("nodes.parquet", "edges.parquet"):
        path = folder / name
        if not path.is_file():
            raise GraphError(f"missing graph table {str(path)!r}")
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several unrelated types on bad files
            raise GraphError(f"corrupt graph table {str(path)!r}: {err}") from err
        frame = frame.astype(object)
        for col in frame.columns:
            if col not in NODE_COLUMNS and col not in EDGE_COLUMNS:
                frame[col] = [None if _missing(v) else json.loads(v) for v in frame[col].tolist()]
        frames.append(frame)
    return from_dataframes(frames[0], frames[1], meta)
