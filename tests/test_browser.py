"""End to end: serve a real export, open it in headless Chromium, click a node (a real mouse
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
import torch

from saecircuits.attribution.graph import FeatureGraph, node_id
from saecircuits.export import export_graph
from saecircuits.export.dashboards import write_dashboards
from saecircuits.export.serve import serve
from saecircuits.models import unwrap
from saecircuits.sae import SAE, SAEConfig, SAESet
from saecircuits.splice import splice

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

    def call(self, method: str, **params):
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

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


def real_graph(model, tok, saes: SAESet, prompt: str) -> FeatureGraph:
    """A small graph from a real spliced run: at every hook the 3 most active features at
    the last 3 positions, effect = activation × (decoder row · logit gradient direction)."""
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad(), model.trace(ids):
        acts = splice(model, saes)
    tokens = tok.batch_decode([[int(i)] for i in ids["input_ids"][0]])
    n = len(tokens)
    w_u = unwrap(model).lm_head.weight.detach()
    target = int(ids["input_ids"][0, -1])
    g = FeatureGraph(meta={"task": "demo", "method": "activation x direct logit", "model": "tiny",
                           "prompt": prompt, "prompt_tokens": tokens, "metric_clean": 1.0,
                           "faithfulness": 0.9})
    g.add_node("metric", kind="metric", layer=99, effect=1.0, label=tokens[-1])
    prev: list[str] = []
    for p in range(n - 3, n):
        prev.append(g.add_node(node_id("embed", p), kind="embed", hook="embed", layer=-1, pos=p,
                               label=tokens[p]))
    for hook in saes:
        layer = int(hook.split(".")[1])
        f = acts[hook].features[0]
        cur = []
        for p in range(n - 3, n):
            vals, idx = f[p].topk(3)
            for v, i in zip(vals.tolist(), idx.tolist()):
                effect = v * float(saes[hook].W_dec[i] @ w_u[target])
                cur.append(g.add_node(node_id(hook, p, i), kind="feature", hook=hook, layer=layer,
                                      pos=p, feature=i, activation=v, effect=effect))
        for k, v in enumerate(cur):
            g.add_edge(prev[k % len(prev)], v, 0.1 + 0.05 * k)
        prev = cur
    for k, u in enumerate(prev):
        g.add_edge(u, "metric", g.nodes[u]["effect"])
    return g


def test_click_node_shows_its_dashboard(tiny, tmp_path):
    model, tok = tiny
    d = unwrap(model).config.hidden_size
    saes = SAESet({"resid.0": SAE.random(SAEConfig("relu", d, 32, hook="resid.0"), seed=1),
                   "resid.2": SAE.random(SAEConfig("topk", d, 48, k=6, hook="resid.2"), seed=2)})
    graph = real_graph(model, tok, saes, "The assert statement raises <AssertionError> when")
    features = sorted({(a["hook"], a["feature"]) for _, a in graph.nodes(data=True)
                       if a["kind"] == "feature"})
    write_dashboards(model, tok, saes, features, TEXTS, tmp_path / "dash", context=32,
                     max_windows=24, n_contexts=6, progress=False)
    export_graph(graph, tmp_path / "export", dashboards=tmp_path / "dash")
    dashboards = json.loads((tmp_path / "dash" / "dashboards.json").read_text())["dashboards"]
    # the most active feature node that has contexts
    target = max((n for n, a in graph.nodes(data=True) if a["kind"] == "feature"
                  and dashboards[f"{a['hook']}:{a['feature']}"]["contexts"]),
                 key=lambda n: graph.nodes[n]["activation"])
    attrs = graph.nodes[target]
    expected = dashboards[f"{attrs['hook']}:{attrs['feature']}"]["contexts"]

    browser = Browser(tmp_path / "profile")
    try:
        with serve(tmp_path / "export") as server:
            browser.call("Page.enable")
            browser.call("Page.navigate", url=server.url)
            browser.wait_for("document.body && document.body.dataset.ready === '1'")
            assert browser.js("document.querySelectorAll('g.node').length") == len(graph)
            assert browser.js("document.querySelectorAll('path.edge').length") == \
                graph.graph.number_of_edges()
            assert "demo" in browser.js("document.getElementById('summary').textContent")
            # a real mouse click at the node's centre on screen
            box = browser.js(f"""(() => {{
                const g = document.querySelector('g.node[data-id={json.dumps(target)}]');
                g.scrollIntoView({{block: 'center', inline: 'center'}});
                const r = g.getBoundingClientRect();
                return {{x: r.left + r.width / 2, y: r.top + r.height / 2}};
            }})()""")
            browser.click(box["x"], box["y"])
            browser.wait_for("document.querySelector('#panel .dashboard') !== null")
            title = browser.js("document.getElementById('node-title').textContent")
            shown = browser.js("document.querySelector('#panel .dashboard').dataset.feature")
            rows = browser.js("[...document.querySelectorAll('#panel .dashboard .ctx')]"
                              ".map(r => [...r.querySelectorAll('.tok')].map(t => t.textContent).join(''))")
            selected = browser.js("document.querySelector('g.node.selected').dataset.id")
            png = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    finally:
        browser.close()
    assert selected == target
    assert title == f"{attrs['hook']} #{attrs['feature']} @{attrs['pos']}"
    assert shown == f"{attrs['hook']}:{attrs['feature']}"
    vis = lambda s: s.replace("\n", "\u23ce").replace("\t", "\u21e5")  # noqa: E731
    assert rows == ["".join(vis(t) for t in c["tokens"]) for c in expected]
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    shot = Path(os.environ.get("SAECIRCUITS_SCREENSHOT_DIR", tmp_path)) / "viewer-click.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.write_bytes(png)
