"""Auto-interp explanations (`saecircuits explain` output) reach graph labels (graph.json `clerp`,
nodes.csv, DOT/SVG, the viewer) and dashboards; hostile explanation text stays text; bad files
give one-line errors before any model pass."""
from __future__ import annotations

import csv
import json
import re
import xml.etree.ElementTree as ET

import pydoc_data.topics
import pytest

from saecircuits.cli import main
from saecircuits.errors import ExportError
from saecircuits.export import export_graph, load_graph
from saecircuits.export.dashboards import load_dashboards, write_dashboards
from saecircuits.export.explanations import (Explanation, load_explanation_records,
                                             load_explanations, with_explanations)
from saecircuits.interp import load_explanations as interp_load_explanations
from saecircuits.models import unwrap
from saecircuits.sae import SAE, SAEConfig, SAESet
from test_export import make_graph

HOSTILE = '<script>window.pwned=1</script><img src=x onerror="window.pwned=1"> & "names"'
TEXTS = [pydoc_data.topics.topics[k] for k in ("assert", "if", "while", "for")]


def explain_dir(folder, explanations: dict, rows: list | None = None):
    """What `saecircuits explain --out folder` leaves for labels: explanations.json and,
    optionally, results.json with the scores."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "explanations.json").write_text(json.dumps(explanations), encoding="utf-8")
    if rows is not None:
        (folder / "results.json").write_text(json.dumps(rows), encoding="utf-8")
    return folder


def data_block(html: str) -> dict:
    blob = re.search(r'<script id="saecircuits-data" type="application/json">(.*?)</script>',
                     html, re.S).group(1)
    return json.loads(blob)


@pytest.fixture
def explained(tmp_path):
    # make_graph: feature nodes resid.{L}/{pos}/{10 j + L}, label "tok L{L}"
    return explain_dir(tmp_path / "explain",
                       {"resid.0:0": "the word 'Mary'", "resid.2:12": HOSTILE,
                        "resid.1:5": "never in the graph"},
                       [{"key": "resid.0:0", "basis": "sae", "unit": 0, "score": 0.42,
                         "score_top": 0.5, "explanation": "the word 'Mary'"},
                        {"key": "resid.2:12", "basis": "sae", "unit": 12, "score": None,
                         "score_top": None, "explanation": HOSTILE},
                        {"key": "resid.0:neurons0", "basis": "neurons", "unit": 0,
                         "score": 0.1, "score_top": 0.1, "explanation": "x"}])


def test_records_read_explanations_and_sibling_scores(explained):
    records = load_explanation_records(explained)
    assert records["resid.0:0"] == Explanation("the word 'Mary'", 0.42, 0.5)
    assert records["resid.2:12"] == Explanation(HOSTILE)  # a NaN score was written as null
    assert set(records) == {"resid.0:0", "resid.2:12", "resid.1:5"}  # no neuron-basis rows
    assert load_explanations(explained / "explanations.json") == {
        k: e.text for k, e in records.items()} == interp_load_explanations(explained)
    # a value may carry its own score
    (explained / "explanations.json").write_text(json.dumps(
        {"resid.0:0": {"explanation": "names", "score": 0.9}}))
    assert load_explanation_records(explained)["resid.0:0"] == Explanation("names", 0.9, None)


def test_export_carries_explanations_in_clerp_csv_dot_and_viewer(explained, tmp_path):
    graph = make_graph()
    dash = tmp_path / "dash"
    dash.mkdir()
    (dash / "dashboards.json").write_text(json.dumps({"about": "", "dashboards": {
        "resid.0:0": {"hook": "resid.0", "index": 0, "label": "' Mary'", "contexts": []},
        "resid.1:5": {"hook": "resid.1", "index": 5, "label": "", "contexts": []}}}))
    out = tmp_path / "exp"
    summary = export_graph(graph, out, dashboards=dash, explanations=explained)
    n_pos = 4
    assert summary["explained_nodes"] == 2 * n_pos  # resid.0:0 and resid.2:12 at every position
    assert "explanation" not in graph.nodes["resid.0/0/0"]  # the caller's graph is untouched

    nodes = {n["saecircuits_id"]: n for n in json.loads((out / "graph.json").read_text())["nodes"]}
    mary, evil, plain = nodes["resid.0/1/0"], nodes["resid.2/3/12"], nodes["resid.1/0/11"]
    assert mary["clerp"] == mary["explanation"] == "the word 'Mary'"
    assert mary["label"] == "tok L0" and mary["explanation_score"] == 0.42  # logit-lens kept
    assert evil["clerp"] == HOSTILE and "explanation_score" not in evil
    assert plain["clerp"] == "tok L1" and "explanation" not in plain

    with open(out / "nodes.csv", newline="", encoding="utf-8") as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    assert rows["resid.0/2/0"]["explanation"] == "the word 'Mary'"
    assert rows["resid.0/2/0"]["label"] == "tok L0"
    assert float(rows["resid.0/2/0"]["explanation_score"]) == 0.42
    assert rows["resid.2/0/12"]["explanation"] == HOSTILE
    assert rows["resid.1/0/11"]["explanation"] == "" and rows["metric"]["explanation"] == ""
    # every data format round-trips the explanation; unexplained nodes gain nothing
    for again in (load_graph(out / "graph.graphml"), load_graph(out / "graph.nodelink.json")):
        assert again.nodes["resid.2/0/12"]["explanation"] == HOSTILE
    from saecircuits.export import read_csv

    back = read_csv(out)
    assert back.nodes["resid.0/2/0"]["explanation"] == "the word 'Mary'"
    assert back.nodes["resid.0/2/0"]["explanation_score"] == 0.42
    assert "explanation" not in back.nodes["resid.1/0/11"]

    dot = (out / "graph.dot").read_text()
    assert "the word &#x27;Mary&#x27;" in dot or "the word &#39;Mary&#39;" in dot
    assert "<script>" not in dot and "&lt;script&gt;" in dot
    svg = (out / "graph.svg").read_text()
    ET.fromstring(svg.encode())
    assert "<script" not in svg and "<img" not in svg

    html = (out / "index.html").read_text()
    assert html.count("<script") == 2 and "<img" not in html  # nothing injected
    data = data_block(html)
    vnodes = {n["id"]: n for n in data["graph"]["nodes"]}
    assert vnodes["resid.0/1/0"]["explanation"] == "the word 'Mary'"
    assert vnodes["resid.0/1/0"]["explanation_score"] == 0.42
    assert vnodes["resid.2/3/12"]["explanation"] == HOSTILE
    assert data["dashboards"]["resid.0:0"]["explanation"] == "the word 'Mary'"
    assert data["dashboards"]["resid.0:0"]["explanation_score"] == 0.42
    assert data["dashboards"]["resid.1:5"]["explanation"] == "never in the graph"
    assert "explanation" not in vnodes["resid.1/0/11"]


def test_cli_export_and_bad_explanation_files(explained, tmp_path, capsys):
    graph = make_graph(n_layers=2, n_pos=2, per=1)
    graph.save(tmp_path / "g")
    assert main(["export", str(tmp_path / "g"), "--format", "neuronpedia", "--format", "csv",
                 "--explanations", str(explained / "explanations.json"), "--out",
                 str(tmp_path / "ok"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["explained_nodes"] == 2
    clerps = {n["saecircuits_id"]: n["clerp"]
              for n in json.loads((tmp_path / "ok" / "graph.json").read_text())["nodes"]}
    assert clerps["resid.0/0/0"] == "the word 'Mary'" and clerps["resid.1/0/1"] == "tok L1"

    bad = tmp_path / "bad"
    bad.mkdir()
    cases = {"missing.json": (None, "no explanations file"),
             "notjson.json": ("{nope", "not valid JSON"),
             "list.json": ("[1, 2]", "must map"),
             "number.json": ('{"resid.0:0": 5}', "must map"),
             "key.json": ('{"resid.0": "x"}', "bad key 'resid.0'"),
             "score.json": ('{"resid.0:0": {"explanation": "x", "score": "high"}}', "score")}
    for name, (text, msg) in cases.items():
        if text is not None:
            (bad / name).write_text(text)
        out = tmp_path / f"out-{name}"
        assert main(["export", str(tmp_path / "g"), "--explanations", str(bad / name),
                     "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("saecircuits export: error:") and "\n" not in err, err
        assert name in err and msg in err and not out.exists(), err
    # a corrupt sibling results.json is named too
    explain_dir(bad / "run", {"resid.0:0": "x"})
    (bad / "run" / "results.json").write_text("[{")
    assert main(["export", str(tmp_path / "g"), "--explanations", str(bad / "run"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "results.json" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["dashboards", "trace"])
def test_cli_checks_explanations_before_loading_a_model(command, tmp_path, capsys):
    """The explanations file is read before the model: a bad one is reported even though the
    model path does not exist either."""
    extra = ["--features", "resid.0:1"] if command == "dashboards" else ["--task", "ioi"]
    assert main([command, "--model", str(tmp_path / "no-model"), "--saes", str(tmp_path / "s"),
                 "--explanations", str(tmp_path / "nope.json"), "--out", str(tmp_path / "o")]
                + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"saecircuits {command}: error: no explanations file") and "nope.json" in err


def test_dashboards_show_explanations(tiny, tiny_dir, tmp_path, capsys):
    model, tok = tiny
    d = unwrap(model).config.hidden_size
    saes = SAESet({"resid.0": SAE.random(SAEConfig("relu", d, 32, hook="resid.0"), seed=1)})
    run = explain_dir(tmp_path / "explain", {"resid.0:5": HOSTILE, "resid.0:6": "tabs"},
                      [{"key": "resid.0:5", "basis": "sae", "score": 0.25, "score_top": 0.3}])
    write_dashboards(model, tok, saes, [("resid.0", 5), ("resid.0", 7)], TEXTS, tmp_path / "d",
                     context=32, max_windows=6, n_contexts=3, progress=False, explanations=run)
    dash = load_dashboards(tmp_path / "d")
    assert dash["resid.0:5"]["explanation"] == HOSTILE
    assert dash["resid.0:5"]["explanation_score"] == 0.25
    assert "explanation" not in dash["resid.0:7"] and "resid.0:6" not in dash
    html = (tmp_path / "d" / "dashboards.html").read_text()
    assert html.count("<script") == 2 and "<img" not in html
    assert data_block(html)["dashboards"]["resid.0:5"]["explanation"] == HOSTILE
    # the CLI passes --explanations on; a graph exported with those dashboards shows them
    saes.save(tmp_path / "saes")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(TEXTS))
    assert main(["dashboards", "--model", str(tiny_dir("llama")), "--device", "cpu", "--saes",
                 str(tmp_path / "saes"), "--features", "resid.0:6", "--corpus", str(corpus),
                 "--windows", "4", "--context", "32", "--explanations", str(run),
                 "--out", str(tmp_path / "d2"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["explained"] == ["resid.0:6"]
    assert load_dashboards(tmp_path / "d2")["resid.0:6"]["explanation"] == "tabs"


def test_trace_cli_labels_the_graph_and_export_keeps_them(tiny_dir, tmp_path, capsys):
    from test_attribution import HOOKS, random_saes

    saes = random_saes(HOOKS, 64, 48)
    saes.save(tmp_path / "saes")
    texts = {f"{h}:{i}": f"explained {h} #{i}" for h in HOOKS for i in range(48)}
    run = explain_dir(tmp_path / "explain", texts)
    out = tmp_path / "trace"
    assert main(["trace", "--model", str(tiny_dir("llama")), "--device", "cpu", "--saes",
                 str(tmp_path / "saes"), "--task", "sva", "--n", "4", "--ablation", "mean",
                 "--top-k", "6", "--edge-influence", "1.0", "--no-edge-eval", "--explanations", str(run),
                 "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    graph = load_graph(out)
    feats = {n: d for n, d in graph.nodes(data=True) if d["kind"] == "feature"}
    assert feats and summary["explained_nodes"] == len(feats)
    for d in feats.values():
        assert d["explanation"] == texts[f"{d['hook']}:{d['feature']}"]
        assert d["label"] and d["label"] != d["explanation"]  # the logit-lens label is kept
    with open(out / "nodes.csv", newline="", encoding="utf-8") as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    assert all(rows[n]["explanation"] == d["explanation"] for n, d in feats.items())
    assert main(["export", str(out), "--format", "neuronpedia", "--out", str(tmp_path / "e")]) == 0
    nodes = json.loads((tmp_path / "e" / "graph.json").read_text())["nodes"]
    assert {n["clerp"] for n in nodes if n["feature_type"] == "cross layer transcoder"} == \
        {d["explanation"] for d in feats.values()}


def test_with_explanations_returns_the_graph_when_nothing_matches():
    graph = make_graph(n_layers=1, n_pos=1, per=1)
    assert with_explanations(graph, {"mlp.9:1": "x"}) is graph
    with pytest.raises(ExportError, match="expected text"):
        with_explanations(graph, {"resid.0:0": 3})
