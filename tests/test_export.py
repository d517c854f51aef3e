"""Export directory: every format round-trips, escapes hostile token text, refuses bad input."""
from __future__ import annotations

import json
import re
import shutil
import struct
import xml.etree.ElementTree as ET

import networkx as nx
import pytest

from saecircuits.attribution.graph import FeatureGraph
from saecircuits.cli import main
from saecircuits.errors import ExportError, GraphError
from saecircuits.export.dot import TOP_NODES
from saecircuits.export import (edges_df, export_graph, from_dataframes, from_networkx,
                                graph_json, load_graph, nodes_df, read_csv, read_graphml,
                                read_node_link, read_parquet, to_dot, to_networkx)

EVIL = 'x"\'\n<script>alert(1)</script> & \\N é🙂'
DESIGN_FILES = {"graph.json", "graph-metadata.json", "nodes.csv", "edges.csv", "graph.graphml",
                "graph.nodelink.json", "graph.dot", "graph.svg", "graph.png", "index.html",
                "summary.json"}


def make_graph(n_layers: int = 3, n_pos: int = 4, per: int = 2, label: str = "tok") -> FeatureGraph:
    """A layered graph: embeddings, features and error nodes per (layer, pos), a metric."""
    g = FeatureGraph(meta={"task": "ioi", "method": "attrib", "model": "SmolLM2-135M-Instruct",
                           "metric_clean": 6.1, "metric_patch": -1.25, "faithfulness": 0.83,
                           "prompt_tokens": ["When", " Mary", EVIL, " to"][:n_pos] + [" x"] * max(0, n_pos - 4)})
    for p in range(n_pos):
        g.add_node(f"embed/{p}", kind="embed", hook="embed", layer=-1, pos=p, label=f"{label}{p}")
    prev = [f"embed/{p}" for p in range(n_pos)]
    for layer in range(n_layers):
        cur = []
        for p in range(n_pos):
            for j in range(per):
                nid = g.add_node(f"resid.{layer}/{p}/{10 * j + layer}", kind="feature",
                                 hook=f"resid.{layer}", layer=layer, pos=p, feature=10 * j + layer,
                                 activation=1.5 + j, effect=(-1) ** j * 0.1 * (p + 1),
                                 label=f"{label} L{layer}")
                cur.append(nid)
            cur.append(g.add_node(f"resid.{layer}/{p}/err", kind="error", hook=f"resid.{layer}",
                                  layer=layer, pos=p, effect=0.01 * p))
        for i, v in enumerate(cur):
            g.add_edge(prev[i % len(prev)], v, 0.3 * ((-1) ** i) + 0.01 * i)
        prev = cur
    g.add_node("metric", kind="metric", layer=n_layers, effect=1.0, label="logit diff")
    for i, u in enumerate(prev):
        g.add_edge(u, "metric", 0.05 * (i + 1))
    return g


@pytest.fixture
def graph() -> FeatureGraph:
    g = make_graph()
    g.add_node(f"resid.1/*/99", kind="feature", hook="resid.1", layer=1, pos=None, feature=99,
               effect=0.2, label=EVIL, extra={"tags": ["a", "b"], "n": 3})
    g.add_edge("resid.1/*/99", "metric", 1 / 3)
    return g


def test_export_directory_has_the_design_set_and_round_trips(graph, tmp_path):
    out = tmp_path / "exp"
    summary = export_graph(graph, out)
    assert {p.name for p in out.iterdir()} == DESIGN_FILES | {"ioi.json"}  # {slug}.json for circuit-tracer
    assert summary["n_nodes"] == len(graph) and summary["n_edges"] == graph.graph.number_of_edges()
    saved = json.loads((out / "summary.json").read_text())
    assert saved["task"] == "ioi" and saved["faithfulness"] == 0.83 and saved["metric_clean"] == 6.1
    assert saved["nodes_by_kind"] == {"embed": 4, "error": 12, "feature": 25, "metric": 1}
    assert read_csv(out, graph.meta) == graph
    assert read_graphml(out / "graph.graphml") == graph
    assert read_node_link(out / "graph.nodelink.json") == graph
    assert load_graph(out) == graph  # directory: GraphML carries the metadata
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_dataframes_networkx_and_parquet_round_trip(graph, tmp_path):
    nodes, edges = nodes_df(graph), edges_df(graph)
    assert list(nodes.columns[:9]) == ["id", "kind", "hook", "layer", "pos", "feature",
                                       "activation", "effect", "label"]
    assert str(nodes["layer"].dtype) == "Int64" and len(edges) == graph.graph.number_of_edges()
    assert nodes.set_index("id").loc["resid.1/*/99", "pos"] is __import__("pandas").NA
    assert from_dataframes(nodes, edges, graph.meta) == graph
    g = to_networkx(graph)
    assert isinstance(g, nx.DiGraph) and g.graph["meta"] == graph.meta
    g.graph["meta"]["task"] = "changed"  # a copy: the original is untouched
    assert graph.meta["task"] == "ioi"
    assert from_networkx(to_networkx(graph)) == graph
    export_graph(graph, tmp_path / "pq", formats=["parquet"])
    assert read_parquet(tmp_path / "pq", graph.meta) == graph


def test_neuronpedia_schema(graph):
    data = graph_json(graph)
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    meta = data["metadata"]
    assert {"slug", "scan", "prompt_tokens", "prompt", "node_threshold", "info"} <= set(meta)
    assert meta["info"]["generator"]["name"] == "saecircuits" and meta["scan"] == "SmolLM2-135M-Instruct"
    assert re.fullmatch(r"[a-z0-9-]+", meta["slug"])
    assert {"pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"} <= set(data["qParams"])
    ids = [n["node_id"] for n in data["nodes"]]
    assert len(set(ids)) == len(ids) == len(graph)
    by_type = {}
    for n in data["nodes"]:
        assert {"node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "clerp",
                "influence", "activation", "is_target_logit"} <= set(n)
        assert n["layer"] == "E" or n["layer"].isdigit()
        by_type.setdefault(n["feature_type"], []).append(n)
    assert all(n["layer"] == "E" for n in by_type["embedding"])
    assert all(isinstance(n["feature"], int) for n in by_type["cross layer transcoder"])
    (logit,) = by_type["logit"]
    assert logit["is_target_logit"] and int(logit["layer"]) == 4  # circuit-tracer: n_layers + 1
    assert len(by_type["mlp reconstruction error"]) == 12
    assert all(0 <= n["influence"] <= 1 for n in data["nodes"] if n["influence"] is not None)
    assert {(l["source"], l["target"]) for l in data["links"]} <= {(a, b) for a in ids for b in ids}
    assert len(data["links"]) == graph.graph.number_of_edges()


def test_logit_node_clerp_has_token_and_probability():
    g = FeatureGraph(meta={"prompt_tokens": ["a"]})
    g.add_node("embed/0", kind="embed", hook="embed", layer=-1, pos=0)
    g.add_node("logit/ Mary", kind="logit", layer=30, pos=0, feature=5335, label=" Mary", prob=0.123)
    g.add_edge("embed/0", "logit/ Mary", 1.0)
    (logit,) = [n for n in graph_json(g)["nodes"] if n["feature_type"] == "logit"]
    assert logit["clerp"] == 'Output " Mary" (p=0.123)' and logit["feature"] == 5335


def test_hostile_token_text_is_escaped_everywhere(graph, tmp_path):
    out = tmp_path / "exp"
    export_graph(graph, out)
    dot = (out / "graph.dot").read_text()
    assert "<script>" not in dot and "&lt;script&gt;" in dot and "⏎" in dot
    ET.fromstring((out / "graph.svg").read_text().encode())  # valid XML despite the text
    assert "<script>" not in (out / "graph.svg").read_text()
    html = (out / "index.html").read_text()
    assert "alert(1)" in html and "<script>alert" not in html and "</script> &" not in html
    blob = re.search(r'<script id="saecircuits-data" type="application/json">(.*?)</script>',
                     html, re.S).group(1)
    data = json.loads(blob)
    labels = {n["id"]: n["label"] for n in data["graph"]["nodes"]}
    assert labels["resid.1/*/99"] == EVIL and data["summary"]["prompt_tokens"][2] == EVIL
    assert EVIL in [n["clerp"] for n in json.loads((out / "graph.json").read_text())["nodes"]]


def test_empty_graph_exports_and_reloads(tmp_path):
    empty = FeatureGraph(meta={"task": "none"})
    summary = export_graph(empty, tmp_path / "e")
    assert summary["n_nodes"] == 0 and (tmp_path / "e" / "graph.svg").is_file()
    assert load_graph(tmp_path / "e") == empty
    assert read_csv(tmp_path / "e", empty.meta) == empty
    assert graph_json(empty)["nodes"] == [] and "digraph" in to_dot(empty)


def test_existing_directory_is_refused_unless_overwrite(graph, tmp_path):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(ExportError, match="exists"):
        export_graph(graph, out)
    assert (out / "keep.txt").read_text() == "old"
    export_graph(graph, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "graph.json").is_file()


def test_missing_dot_binary_still_writes_dot(graph, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    summary = export_graph(graph, tmp_path / "a")
    assert (tmp_path / "a" / "graph.dot").is_file() and not (tmp_path / "a" / "graph.svg").exists()
    assert "dot" in summary["svg_error"] and "graphviz" in summary["svg_error"]
    graph.save(tmp_path / "g")
    assert main(["export", str(tmp_path / "g"), "--format", "svg", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "'dot' binary is not on PATH" in err
    assert (tmp_path / "b" / "graph.dot").is_file()


def test_corrupt_graph_files_raise_graph_error(graph, tmp_path):
    out = tmp_path / "exp"
    export_graph(graph, out)
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    (bad / "graph.graphml").write_text("<graphml><oops")
    with pytest.raises(GraphError, match="corrupt GraphML"):
        read_graphml(bad / "graph.graphml")
    (bad / "graph.nodelink.json").write_text('{"nodes": [}')
    with pytest.raises(GraphError, match="corrupt node-link"):
        read_node_link(bad / "graph.nodelink.json")
    (bad / "edges.csv").write_text("source,target,weight\nembed/0,resid.0/0/0,notanumber\n")
    with pytest.raises(GraphError, match="weight"):
        read_csv(bad)
    (bad / "edges.csv").write_text("source,target,weight\nembed/0,nowhere,1.0\n")
    with pytest.raises(GraphError, match="nowhere"):
        read_csv(bad)
    (bad / "nodes.csv").write_text("id,kind\nx,planet\n")
    with pytest.raises(GraphError, match="planet"):
        read_csv(bad)
    (tmp_path / "f.json").write_text("{not json")
    with pytest.raises(GraphError, match="corrupt"):
        load_graph(tmp_path / "f.json")
    with pytest.raises(GraphError, match="no graph"):
        load_graph(tmp_path / "missing")


def test_dot_layout_ranks_layers_and_orders_positions():
    g = make_graph(n_layers=2, n_pos=3, per=1)
    dot = to_dot(g)
    ranks = re.findall(r"subgraph \w+ \{\s*rank=same(.*?)\}", dot, re.S)
    assert len(ranks) == 4  # embed, layer 0, layer 1, metric
    firsts = [re.findall(r'^\s*"?([^"\s\[]+)"? \[', block, re.M) for block in ranks]
    assert firsts[0] == ["embed/0", "embed/1", "embed/2"]
    assert [n.split("/")[1] for n in firsts[1]] == ["0", "0", "1", "1", "2", "2"]
    assert "dashed" in dot and "doubleoctagon" in dot  # error nodes and the metric stand out
    assert "#3060c0" in dot and "#c03030" in dot  # edge colour by sign


def test_dot_renders_readably_at_200_nodes(tmp_path):
    g = make_graph(n_layers=6, n_pos=8, per=3)
    assert 150 <= len(g) <= 250
    export_graph(g, tmp_path / "big", formats=["svg"])
    svg = (tmp_path / "big" / "graph.svg").read_text()
    width, height = (float(v) for v in re.search(r'<svg width="([\d.]+)pt" height="([\d.]+)pt"', svg).groups())
    drawn = re.findall(r'class="node">\s*<title>([^<]+)</title>', svg)
    effects = {n: abs(a["effect"]) for n, a in g.nodes(data=True) if a["kind"] != "metric"}
    top = sorted(effects, key=effects.get, reverse=True)[:TOP_NODES]
    assert sorted(drawn) == sorted(top + ["metric"])  # the top nodes by |effect| and the metric
    assert width <= 1600 and height < 1600  # whole picture readable on one screen
    assert "feature lowering it" in svg and "SAE error" in svg  # the legend
    assert f"top {TOP_NODES} of {len(g) - 1} nodes" in svg
    png = (tmp_path / "big" / "graph.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    png_w, png_h = struct.unpack(">II", png[16:24])
    assert 600 < png_w <= 1600 * 96 / 72 + 1 and png_h > 200
    # configurable: all nodes on request; bad values refused
    export_graph(g, tmp_path / "all", formats=["svg"], svg_nodes=None)
    assert (tmp_path / "all" / "graph.svg").read_text().count('class="node"') == len(g)
    with pytest.raises(ExportError, match="svg_nodes"):
        export_graph(g, tmp_path / "bad", formats=["svg"], svg_nodes=0)


def test_cli_export_formats_and_overwrite(graph, tmp_path, capsys):
    graph.save(tmp_path / "g")
    assert main(["export", str(tmp_path / "g"), "--format", "csv", "--format", "neuronpedia",
                 "--out", str(tmp_path / "o"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["files"]) == {"nodes.csv", "edges.csv", "graph.json", "graph-metadata.json",
                                     "ioi.json", "summary.json"}
    assert main(["export", str(tmp_path / "g"), "--out", str(tmp_path / "o")]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "g"), "--out", str(tmp_path / "o"), "--overwrite"]) == 0
    assert {p.name for p in (tmp_path / "o").iterdir()} == DESIGN_FILES | {"ioi.json"}
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "no graph" in capsys.readouterr().err


def test_featuregraph_convenience_methods(tmp_path):
    from saecircuits.attribution import FeatureGraph, node_id

    g = FeatureGraph(meta={"task": "ioi"})
    a = g.add_node(node_id("resid.4", 3, 17), kind="feature", hook="resid.4", layer=4, pos=3,
                   feature=17, effect=0.5, label='"quoted" <b>')
    g.add_node("metric", kind="metric")
    g.add_edge(a, "metric", 0.25)
    assert FeatureGraph.from_networkx(g.to_networkx()) == g
    assert list(g.nodes_df()["feature"].dropna()) == [17]
    assert g.edges_df()["weight"].tolist() == [0.25]
    summary = g.export(tmp_path / "out", formats="csv")
    assert (tmp_path / "out" / "nodes.csv").is_file() and summary["files"]
