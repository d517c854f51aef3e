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
    graph, _ = trace_circuit(model, tok, saes, "ioi", n=8, top_k=24, positional=True,
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
            # the threshold filter hides low-|effect| nodes and their edges
            browser.js("(() => { const s = document.getElementById('nodeThr'); s.value = '0.5';"
                       " s.dispatchEvent(new Event('input')); })()")
            visible = browser.js("[...document.querySelectorAll('g.node')]"
                                 ".filter(g => g.style.display !== 'none').length")
    finally:
        browser.close()
    max_eff = max(abs(a["effect"]) for _, a in graph.nodes(data=True) if a["kind"] != "metric")
    assert visible == sum(1 for _, a in graph.nodes(data=True)
                          if a["kind"] == "metric" or abs(a["effect"]) >= 0.5 * max_eff)
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
