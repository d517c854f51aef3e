"""The self-contained viewer page and the local server."""
from __future__ import annotations

import json
import re
import threading
import urllib.request

import pytest

from saecircuits.cli import main
from saecircuits.errors import ExportError
from saecircuits.export import export_graph
from saecircuits.export.serve import serve
from saecircuits.export.viewer import script_json

from test_export import EVIL, make_graph


def _data(html: str) -> dict:
    blob = re.search(r'<script id="saecircuits-data" type="application/json">(.*?)</script>',
                     html, re.S).group(1)
    return json.loads(blob)


def test_script_json_cannot_close_the_script_element():
    text = script_json({"t": "</script><script>alert(1)</script>\u2028&"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"t": "</script><script>alert(1)</script>\u2028&"}


def test_viewer_page_is_self_contained_and_carries_graph_summary_dashboards(tmp_path):
    g = make_graph(label=EVIL)
    dash = {"resid.0:0": {"hook": "resid.0", "index": 0, "label": EVIL, "contexts": [],
                          "histogram": {"edges": [], "counts": []}}}
    export_graph(g, tmp_path / "e", dashboards=dash, formats=["html"])
    html = (tmp_path / "e" / "index.html").read_text()
    assert " src=" not in html and " href=" not in html and "fetch(" not in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert html.count("<script") == 2  # the data block and the inline code, nothing injected
    assert ".innerHTML" not in html and "insertAdjacentHTML" not in html  # textContent only
    data = _data(html)
    assert {n["id"] for n in data["graph"]["nodes"]} == set(g.graph.nodes)
    assert len(data["graph"]["edges"]) == g.graph.number_of_edges()
    assert data["summary"]["task"] == "ioi" and data["summary"]["faithfulness"] == 0.83
    assert data["dashboards"]["resid.0:0"]["label"] == EVIL


def test_dashboard_labels_fill_unlabelled_feature_nodes(tmp_path):
    g = make_graph()
    for _, d in g.graph.nodes(data=True):
        d["label"] = ""
    dash = {"resid.0:0": {"hook": "resid.0", "index": 0, "label": "' Mary' ' John'"}}
    export_graph(g, tmp_path / "e", dashboards=dash, formats=["html", "dot", "neuronpedia"])
    assert "&#x27; Mary&#x27;" in (tmp_path / "e" / "graph.dot").read_text()
    clerps = {n["saecircuits_id"]: n["clerp"]
              for n in json.loads((tmp_path / "e" / "graph.json").read_text())["nodes"]}
    assert clerps["resid.0/0/0"] == "' Mary' ' John'" and clerps["resid.0/0/10"] == ""
    assert g.nodes["resid.0/0/0"]["label"] == ""  # the graph itself is not changed


def test_serve_returns_the_exported_files(tmp_path):
    export_graph(make_graph(), tmp_path / "e")
    with serve(tmp_path / "e") as server:
        assert server.url.startswith("http://127.0.0.1:")
        body = urllib.request.urlopen(server.url, timeout=10).read().decode()
        assert body == (tmp_path / "e" / "index.html").read_text()
        graph = json.loads(urllib.request.urlopen(server.url.replace("index.html", "graph.json"),
                                                  timeout=10).read())
        assert len(graph["nodes"]) == len(make_graph())
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(server.url.replace("index.html", "../../etc/passwd"), timeout=10)
    with pytest.raises(ExportError, match="index.html"):
        serve(tmp_path)


def test_cli_serve_is_bounded(tmp_path, capsys):
    export_graph(make_graph(), tmp_path / "e")
    done = []
    thread = threading.Thread(target=lambda: done.append(
        main(["serve", str(tmp_path / "e"), "--port", "0", "--seconds", "0.5"])))
    thread.start()
    thread.join(timeout=20)
    assert done == [0]
    assert "serving" in capsys.readouterr().out
    assert main(["serve", str(tmp_path / "nothing"), "--port", "0", "--seconds", "0"]) == 2


def test_viewer_nodes_carry_graph_json_ids_and_optional_fields(tmp_path):
    """The page maps its nodes to graph.json `node_id`s (for `qParams.pinnedIds`) through the
    `saecircuits_id` field, embeds graph.json itself for the download button, and passes on
    `explanation` / `ctx_idx` when a node has them."""
    g = make_graph()
    g.graph.nodes["resid.0/0/0"]["explanation"] = "fires on names"
    export_graph(g, tmp_path / "e", formats=["html", "neuronpedia"])
    data = _data((tmp_path / "e" / "index.html").read_text())
    on_disk = json.loads((tmp_path / "e" / "graph.json").read_text())
    assert data["graphJson"] == on_disk
    by_id = {n["saecircuits_id"]: n["node_id"] for n in on_disk["nodes"]}
    assert {n["id"]: n["np_id"] for n in data["graph"]["nodes"]} == by_id
    nodes = {n["id"]: n for n in data["graph"]["nodes"]}
    assert nodes["resid.0/0/0"]["explanation"] == "fires on names"
    assert "explanation" not in nodes["resid.0/1/0"]


def test_svg_tolerates_missing_and_star_positions():
    from saecircuits.export import to_dot

    g = make_graph(n_layers=1, n_pos=2, per=1)
    g.add_node("resid.0/*/7", kind="feature", hook="resid.0", layer=0, pos=None, feature=7,
               effect=0.9, label="summed")
    dot = to_dot(g, max_nodes=3)
    assert "resid.0 #7 @*" in dot and "summed" in dot
    assert dot.count("pos=") == 4  # the three top nodes and the metric, each pinned
