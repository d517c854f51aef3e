"""End to end: serve the export of a real traced circuit (trace_circuit on the tiny model), open it in headless Chromium, click a node (a real mouse
event through the DevTools protocol), check the dashboard shows that feature's contexts,
and save a screenshot."""
from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pydoc_data.topics
import pytest

from saecircuits.attribution import trace_circuit
from saecircuits.export import export_graph
from saecircuits.export.dashboards import write_dashboards
from saecircuits.export.serve import serve
from saecircuits.models import unwrap
from saecircuits.sae import SAE, SAEConfig, SAESet

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                                 "(Debian: apt-get install chromium; scripts/install.sh --tests)")]
TEXTS = [pydoc_data.topics.topics[k] for k in ("assert", "if", "while", "for", "try", "with",
                                               "lambda", "return")]


class Browser:
    """Minimal Chrome DevTools protocol client over a websocket (websocket-client)."""

    def __init__(self, profile: Path):
        import websocket

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
             "--remote-debugging-port=0", "--remote-allow-origins=*", "--window-size=1400,900",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("Chromium did not start its DevTools server")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list",
                                                    timeout=10).read())
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30,
                                              suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    def call(self, method: str, **params):
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}")

    def click(self, x: float, y: float) -> None:
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                      clickCount=1)

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def test_click_node_shows_its_dashboard(tiny, tmp_path):
    model, tok = tiny
    d = unwrap(model).config.hidden_size
    saes = SAESet({"resid.0": SAE.random(SAEConfig("relu", d, 32, hook="resid.0"), seed=1),
                   "mlp.1": SAE.random(SAEConfig("topk", d, 48, k=6, hook="mlp.1"), seed=3),
                   "resid.2": SAE.random(SAEConfig("topk", d, 48, k=6, hook="resid.2"), seed=2)})
    graph, _ = trace_circuit(model, tok, saes, "ioi", n=8, top_k=24, positional=True, length="common",
                             batch_size=8, progress=False)
    features = sorted({(a["hook"], a["feature"]) for _, a in graph.nodes(data=True)
                       if a["kind"] == "feature"})
    write_dashboards(model, tok, saes, features, TEXTS, tmp_path / "dash", context=32,
                     max_windows=24, n_contexts=6, progress=False)
    export_graph(graph, tmp_path / "export", dashboards=tmp_path / "dash", tokenizer=tok)
    dashboards = json.loads((tmp_path / "dash" / "dashboards.json").read_text())["dashboards"]
    # the feature node with the largest |effect| that has contexts
    target = max((n for n, a in graph.nodes(data=True) if a["kind"] == "feature"
                  and dashboards[f"{a['hook']}:{a['feature']}"]["contexts"]),
                 key=lambda n: abs(graph.nodes[n]["effect"]))
    attrs = graph.nodes[target]
    expected = dashboards[f"{attrs['hook']}:{attrs['feature']}"]["contexts"]

    browser = Browser(tmp_path / "profile")
    try:
        with serve(tmp_path / "export") as server:
            browser.call("Page.enable")
            browser.call("Network.enable")
            browser.call("Runtime.enable")
            browser.call("Page.navigate", url=server.url)
            browser.wait_for("document.body && document.body.dataset.ready === '1'")
            assert browser.js("document.querySelectorAll('g.node').length") == len(graph)
            assert browser.js("document.querySelectorAll('path.edge').length") == \
                graph.graph.number_of_edges()
            summary = browser.js("document.getElementById('summary').textContent")
            assert "ioi" in summary and "faithfulness" in summary
            # a real mouse click at the node's centre on screen
            box = browser.js(f"""(() => {{
                const g = document.querySelector('g.node[data-id={json.dumps(target)}]');
                g.scrollIntoView({{block: 'center', inline: 'center'}});
                const r = g.getBoundingClientRect();
                return {{x: r.left + r.width / 2, y: r.top + r.height / 2}};
            }})()""")
            browser.click(box["x"], box["y"])
            tip = browser.js("document.getElementById('tip').textContent")  # from the hover
            browser.wait_for("document.querySelector('#panel .dashboard') !== null")
            title = browser.js("document.getElementById('node-title').textContent")
            shown = browser.js("document.querySelector('#panel .dashboard').dataset.feature")
            rows = browser.js("[...document.querySelectorAll('#panel .dashboard .ctx')]"
                              ".map(r => [...r.querySelectorAll('.tok')].map(t => t.textContent).join(''))")
            selected = browser.js("document.querySelector('g.node.selected').dataset.id")
            png = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
            # the threshold filter hides low-|effect| nodes (not pinned ones) and their edges
            browser.js("(() => { const s = document.getElementById('nodeThr'); s.value = '0.5';"
                       " s.dispatchEvent(new Event('input')); })()")
            visible = browser.js("[...document.querySelectorAll('g.node')]"
                                 ".filter(g => g.style.display !== 'none').length")
    finally:
        browser.close()
    max_eff = max(abs(a["effect"]) for _, a in graph.nodes(data=True) if a["kind"] != "metric")
    assert visible == sum(1 for n, a in graph.nodes(data=True)  # the pinned node stays
                          if a["kind"] == "metric" or abs(a["effect"]) >= 0.5 * max_eff
                          or n == target)
    assert visible < len(graph)
    requests = [e["params"]["request"]["url"] for e in browser.events
                if e["method"] == "Network.requestWillBeSent"]
    assert requests == [server.url]  # self-contained: the page fetches nothing else
    errors = [e for e in browser.events if e["method"] in ("Runtime.exceptionThrown",)]
    assert not errors, errors
    assert selected == target
    assert tip.startswith(f"{attrs['hook']} #{attrs['feature']}") and "click for dashboard" in tip
    assert title == f"{attrs['hook']} #{attrs['feature']} @{attrs['pos']}"
    assert shown == f"{attrs['hook']}:{attrs['feature']}"
    vis = lambda s: s.replace("\n", "\u23ce").replace("\t", "\u21e5")  # noqa: E731
    assert rows == ["".join(vis(t) for t in c["tokens"]) for c in expected]
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    shot = Path(os.environ.get("SAECIRCUITS_SCREENSHOT_DIR", tmp_path)) / "viewer-click.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.write_bytes(png)


def _box(browser: Browser, selector: str) -> dict:
    return browser.js(f"""(() => {{ const r = document.querySelector({json.dumps(selector)})
        .getBoundingClientRect(); return {{x: r.left + r.width / 2, y: r.top + r.height / 2}}; }})()""")


def test_viewer_fits_labels_top_nodes_and_saves_pins(tmp_path):
    """A 150-node layered graph: everything fits the window, the largest-|effect| nodes carry
    non-overlapping visible labels, the legend is there, hovering shows the explanation,
    clicking pins nodes and highlights paths, and the downloaded graph.json carries the pins."""
    from test_export import make_graph

    graph = make_graph(n_layers=4, n_pos=8, per=3)
    graph.add_node("resid.1/*/99", kind="feature", hook="resid.1", layer=1, pos=None,
                   feature=99, effect=0.05, activation=2.0, label="summed node",
                   explanation="fires on the second name")
    graph.add_edge("resid.1/*/99", "metric", 0.2)
    export_graph(graph, tmp_path / "e", formats=["html", "neuronpedia"])
    np_id = {n["saecircuits_id"]: n["node_id"]
             for n in json.loads((tmp_path / "e" / "graph.json").read_text())["nodes"]}
    browser = Browser(tmp_path / "profile")
    try:
        with serve(tmp_path / "e") as server:
            browser.call("Runtime.enable")
            browser.call("Network.enable")
            browser.call("Page.navigate", url=server.url)
            browser.wait_for("document.body && document.body.dataset.ready === '1'")
            fit = browser.js("""(() => {
                const c = document.getElementById('canvas').getBoundingClientRect();
                const out = [...document.querySelectorAll('g.node')].filter(g => {
                    const r = g.getBoundingClientRect();
                    return r.left < c.left || r.right > c.right || r.top < c.top || r.bottom > c.bottom; });
                return {page: document.documentElement.scrollWidth - window.innerWidth,
                        canvas: document.getElementById('canvas').scrollWidth - document.getElementById('canvas').clientWidth,
                        outside: out.length, nodes: document.querySelectorAll('g.node').length}; })()""")
            n_labels = browser.js("+document.getElementById('nLabels').value")
            labels = browser.js("""(() => {
                const c = document.getElementById('canvas').getBoundingClientRect();
                return [...document.querySelectorAll('text.nlabel')].map(t => {
                    const r = t.getBoundingClientRect();
                    return {id: t.dataset.id, text: t.textContent, l: r.left, r: r.right, t: r.top, b: r.bottom,
                            inside: r.width > 0 && r.left >= c.left && r.right <= c.right && r.top >= c.top && r.bottom <= c.bottom,
                            shown: getComputedStyle(t).visibility !== 'hidden' && +getComputedStyle(t).opacity > 0.5}; }); })()""")
            legend = browser.js("document.getElementById('legend').textContent")
            # hover an unlabelled node: the tooltip shows its label, effect, explanation
            hover = _box(browser, 'g.node[data-id="resid.1/*/99"]')
            browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=hover["x"], y=hover["y"])
            tip = browser.js("document.getElementById('tip').textContent")
            # pin two nodes with real clicks, then unpin the second by clicking it again
            first, second = "resid.3/7/3", "resid.0/0/0"
            for nid in (first, second):
                box = _box(browser, f'g.node[data-id="{nid}"]')
                browser.click(box["x"], box["y"])
            focus = browser.js("""({focus: document.getElementById('graph').classList.contains('focus'),
                path: [...document.querySelectorAll('g.node.path')].map(g => g.dataset.id)})""")
            pinned_two = browser.js("window.saecircuitsGraphJson().qParams")
            browser.js("document.getElementById('superName').value = 'names'")
            box = _box(browser, "#group")
            browser.click(box["x"], box["y"])
            box = _box(browser, f'g.node[data-id="{second}"]')
            browser.click(box["x"], box["y"])
            # the download button hands over the same JSON
            browser.js("window._blobs = []; const o = URL.createObjectURL;"
                       "URL.createObjectURL = b => { window._blobs.push(b); return o(b); }; 1")
            box = _box(browser, "#download")
            browser.click(box["x"], box["y"])
            browser.wait_for("window._blobs.length === 1")
            downloaded = json.loads(browser.js("window._blobs[0].text()"))
            # the wheel zooms, 'fit' restores the fitted view
            browser.call("Input.dispatchMouseEvent", type="mouseWheel", x=300, y=300, deltaX=0,
                         deltaY=-400)
            zoomed = browser.js("document.getElementById('viewport').getAttribute('transform')")
            box = _box(browser, "#fit")
            browser.click(box["x"], box["y"])
            fitted = browser.js("document.getElementById('viewport').getAttribute('transform')")
    finally:
        browser.close()
    assert fit == {"page": 0, "canvas": 0, "outside": 0, "nodes": len(graph)}
    effects = {n: abs(a["effect"]) for n, a in graph.nodes(data=True) if a["kind"] != "metric"}
    top = sorted(effects, key=effects.get, reverse=True)[:n_labels]
    by_id = {lab["id"]: lab for lab in labels}
    assert n_labels >= 10 and set(top) | {"metric"} <= set(by_id)
    for nid in top:
        lab = by_id[nid]
        assert lab["inside"] and lab["shown"], lab
        assert graph.nodes[nid]["label"] in lab["text"]
    for a, b in itertools.combinations(labels, 2):  # no label covers another
        assert a["r"] <= b["l"] or b["r"] <= a["l"] or a["b"] <= b["t"] or b["b"] <= a["t"], (a, b)
    assert "SAE error" in legend and "lowering" in legend and "raising" in legend
    assert tip.startswith("resid.1 #99 @*") and "summed node" in tip
    assert "fires on the second name" in tip and "effect 0.050" in tip
    assert focus["focus"] and second in focus["path"] and "metric" in focus["path"]
    assert pinned_two["pinnedIds"] == [np_id[first], np_id[second]]
    assert pinned_two["clickedId"] == np_id[second]
    assert downloaded["qParams"]["pinnedIds"] == [np_id[first]]
    assert downloaded["qParams"]["supernodes"] == [["names", np_id[first], np_id[second]]]
    assert len(downloaded["nodes"]) == len(graph) and downloaded["metadata"]["prompt_tokens"]
    assert zoomed != fitted and fitted == "translate(0,0) scale(1)"
    requests = [e["params"]["request"]["url"] for e in browser.events
                if e["method"] == "Network.requestWillBeSent"]
    assert all(u == server.url or u.startswith("blob:") for u in requests), requests
    assert not [e for e in browser.events if e["method"] == "Runtime.exceptionThrown"]



def test_viewer_shows_explanations_on_hover_and_in_the_panel(tmp_path):
    """Explanations from an explain run reach the hover text, the on-graph label and the side
    panel, with their score; hostile explanation text runs nothing."""
    from test_export import make_graph

    graph = make_graph(n_layers=2, n_pos=2, per=1)
    hostile = '<img src=x onerror="window.pwned=1"><script>window.pwned=1</script>'
    run = tmp_path / "explain"
    run.mkdir()
    (run / "explanations.json").write_text(json.dumps({"resid.1:1": "fires on " + hostile,
                                                       "resid.0:0": "the word 'Mary'"}))
    (run / "results.json").write_text(json.dumps([{"key": "resid.1:1", "basis": "sae",
                                                   "score": 0.375, "score_top": 0.5}]))
    export_graph(graph, tmp_path / "e", formats=["html"], explanations=run)
    target = "resid.1/1/1"
    browser = Browser(tmp_path / "profile")
    try:
        with serve(tmp_path / "e") as server:
            browser.call("Runtime.enable")
            browser.call("Page.navigate", url=server.url)
            browser.wait_for("document.body && document.body.dataset.ready === '1'")
            box = _box(browser, f'g.node[data-id="{target}"]')
            browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=box["x"], y=box["y"])
            tip = browser.js("document.getElementById('tip').textContent")
            label = browser.js(f"""(() => {{ const t = document.querySelector('text.nlabel[data-id="{target}"]');
                                   return t ? t.textContent : null; }})()""")
            browser.click(box["x"], box["y"])
            panel = browser.js("document.getElementById('node-explanation').textContent")
            pwned = browser.js("window.pwned === undefined && !document.querySelector('#details img')")
    finally:
        browser.close()
    assert "explanation: fires on " + hostile + " (score 0.38)" in tip
    assert "tok L1" in tip  # the logit-lens label is still shown
    assert label.startswith("fires on")  # the on-graph label shows the explanation
    assert panel == "fires on " + hostile + " (score 0.38)"
    assert pwned
    assert not [e for e in browser.events if e["method"] == "Runtime.exceptionThrown"]
