"""circuit-tracer's own frontend draws a saecircuits graph, offline.

circuit-tracer 0.5.0's page (`circuit_tracer/frontend/assets/index.html`) loads its libraries from
CDNs at run time (d3, d3-jetpack and npy from transformer-circuits.pub, dagre and pako from unpkg,
plus the authors' live-reload client), so without a network it draws a blank page
(`ReferenceError: d3 is not defined`). Here the libraries come from the npm registry instead,
installed (pinned) into a temporary folder; the page is served unmodified by circuit-tracer's own
`circuit-tracer start-server` (its venv: tests/ct_env.py) together with a saecircuits `graph.json`
(`export --format neuronpedia` of a real trace on the tiny model); headless Chromium answers the
page's CDN requests from the npm files (DevTools `Fetch` interception: "pointing the page at them"
without editing circuit-tracer's files) and the test checks that the graph is drawn — one
`text.node` per node the page keeps at its pruning threshold — with no console error, no
uncaught exception and no request leaving the machine.

npm packages (the CDN file each replaces):
    d3@7.9.2 dist/d3.min.js                     <- static_js/lib/d3.js
    d3-jetpack@2.3.0 build/d3-jetpack.cjs       <- static_js/lib/jetpack_2024-07-20.js, run as CommonJS
        with `require` answering d3 v7 (and d3-collection / d3-queue / d3-request, its other npm
        dependencies, for d3.nestBy & co.), its exports added to the global `d3`. (Its UMD global
        branch resets `d3` to {} before extending it, and its build/d3v7+jetpack.js bundle patches a
        second copy of d3-selection, not the one it exports: `appendMany is not a function`.)
        transformer-circuits' jetpack_2024-07-20.js is a fork: its `d3.conventions(c)` also sets
        `c.drawAxis(svg)`, which no npm release has (`c.drawAxis is not a function`); the test adds
        that one method (drawing jetpack's own `d3.drawAxis` into `svg`). Not covered: the fork's
        tooltips — npm jetpack's `attachTooltip` reads d3 v5's `d3.event`, gone in d3 v7, so hovering a
        node offline would throw; the test does not hover.
    npyjs@1.2.0 dist/index.cjs as `window.npyjs` <- static_js/lib/npy_v0.js (only the "addition" page uses it)
    dagre@0.8.5 dist/dagre.min.js, pako@2.1.0 dist/pako.min.js   <- the same versions on unpkg
    (hotserver-client-ws.js, the authors' live-reload client, is answered with an empty script)
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from ct_env import SKIP_REASON, ct_python

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NPM = shutil.which("npm")
CT_PYTHON = ct_python()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                       "(Debian: apt-get install chromium; scripts/install.sh --tests)"),
    pytest.mark.skipif(NPM is None, reason="npm is not installed"),
    pytest.mark.skipif(CT_PYTHON is None, reason=SKIP_REASON),
]
PACKAGES = ["d3@7.9.2", "d3-jetpack@2.3.0", "npyjs@1.2.0", "dagre@0.8.5", "pako@2.1.0"]
CDN = {  # URL suffix on the page -> file under node_modules ("" = an empty script)
    "/static_js/lib/hotserver-client-ws.js": "",
    "/static_js/lib/d3.js": "d3/dist/d3.min.js",
    "/static_js/lib/jetpack_2024-07-20.js": "d3-jetpack/build/d3-jetpack.cjs",
    "/static_js/lib/npy_v0.js": "npyjs/dist/index.cjs",
    "/dagre@0.8.5/dist/dagre.min.js": "dagre/dist/dagre.min.js",
    "/pako@2.1.0/dist/pako.min.js": "pako/dist/pako.min.js",
}


@pytest.fixture(scope="module")
def npm_libs(tmp_path_factory) -> Path:
    """node_modules with the pinned front-end libraries (from the npm registry)."""
    prefix = tmp_path_factory.mktemp("npm")
    out = subprocess.run([NPM, "install", "--no-save", "--no-package-lock", "--ignore-scripts",
                          "--no-audit", "--no-fund", "--prefix", str(prefix), *PACKAGES],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"npm install failed: {out.stderr[-2000:]}"
    modules = prefix / "node_modules"
    for name in PACKAGES:
        pkg = json.loads((modules / name.rsplit("@", 1)[0] / "package.json").read_text())
        assert pkg["version"] == name.rsplit("@", 1)[1]
    return modules


def commonjs(source: str) -> str:
    """A JavaScript expression evaluating a CommonJS file (`require` from the enclosing scope)."""
    return f"(function(){{var module={{exports:{{}}}};var exports=module.exports;\n{source}\nreturn module.exports;}})()"


def jetpack_script(modules: Path) -> str:
    """d3-jetpack's CommonJS build on top of the page's global d3 v7."""
    deps = {name: (modules / name / rel).read_text() for name, rel in (
        ("d3-collection", "dist/d3-collection.js"), ("d3-queue", "build/d3-queue.js"),
        ("d3-request", "build/d3-request.js"))}
    lines = ["(function(){", "var mods = {};", "var require = function(name){ return mods[name] || window.d3; };"]
    lines += [f"mods[{json.dumps(name)}] = {commonjs(src)};" for name, src in deps.items()]
    lines += [f"Object.assign(window.d3, {commonjs((modules / 'd3-jetpack/build/d3-jetpack.cjs').read_text())});",
              # the fork's conventions() also returns c.drawAxis(svg) (see the module docstring)
              "var conventions = d3.conventions;",
              "d3.conventions = function(c){ c = conventions(c); c.drawAxis = function(svg){",
              "  return d3.drawAxis(Object.assign({}, c, {svg: svg || c.svg})); }; return c; };",
              "})();"]
    return "\n".join(lines)


def library_body(modules: Path, url: str) -> bytes | None:
    """The JavaScript answering a CDN URL of the page, or None for a URL the page must not need."""
    path = url.split("?")[0]
    rel = next((v for k, v in CDN.items() if path.endswith(k)), None)
    if rel is None:
        return None
    if rel == "":
        return b""
    if rel.startswith("d3-jetpack/"):
        return jetpack_script(modules).encode()
    if rel.startswith("npyjs/"):  # CommonJS -> the global the page calls (`npyjs.parse`)
        return f"window.npyjs = {{parse: {commonjs((modules / rel).read_text())}.parse}};".encode()
    return (modules / rel).read_bytes()


class Browser:
    """Headless Chromium over the DevTools protocol; answers https requests from `respond`."""

    def __init__(self, profile: Path, respond):
        import websocket

        self.respond = respond
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
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
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)
        self.errors: list[str] = []
        self.external: list[str] = []  # https requests that no npm file answers

    def send(self, method: str, **params) -> int:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        return msg_id

    def _event(self, msg: dict) -> None:
        method, params = msg["method"], msg.get("params", {})
        if method == "Fetch.requestPaused":
            body = self.respond(params["request"]["url"])
            if body is None:
                self.external.append(params["request"]["url"])
                self.send("Fetch.failRequest", requestId=params["requestId"], errorReason="AddressUnreachable")
            else:
                self.send("Fetch.fulfillRequest", requestId=params["requestId"], responseCode=200,
                          responseHeaders=[{"name": "Content-Type", "value": "application/javascript"}],
                          body=base64.b64encode(body).decode())
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.errors.append("console: " + " ".join(str(a.get("value", a.get("description", "")))
                                                      for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append("exception: " + details.get("exception", {}).get("description", details["text"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error" \
                and not params["entry"].get("url", "").endswith("/favicon.ico"):  # Chromium asks; no page error
            self.errors.append(f"log: {params['entry']['text']} {params['entry'].get('url', '')}")

    def call(self, method: str, **params):
        msg_id = self.send(method, **params)
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self._event(msg)

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def settle(self, expression: str, timeout: float = 60.0, steady: float = 1.5):
        """Poll `expression` until it is truthy and unchanged for `steady` seconds."""
        deadline, last, since = time.time() + timeout, None, time.time()
        while time.time() < deadline:
            value = self.js(expression)
            if value != last:
                last, since = value, time.time()
            elif value and time.time() - since >= steady:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expression} (last value {last!r}); errors {self.errors}")

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """`circuit-tracer start-server` from circuit-tracer's venv; returns (process, base URL)."""
    exe = CT_PYTHON.parent / "circuit-tracer"
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([str(exe), "start-server", "--graph_file_dir", str(data), "--port", str(port)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/data/graph-metadata.json", timeout=5).read()
            return proc, url
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise AssertionError(f"circuit-tracer start-server did not serve: {log.read_text()[-2000:]}")
            time.sleep(0.3)


def saecircuits_graph(tiny, out: Path) -> dict:
    """A real saecircuits trace on the tiny model, exported as Neuronpedia / circuit-tracer JSON."""
    from saecircuits.attribution import trace_circuit
    from saecircuits.export import export_graph
    from saecircuits.models import unwrap
    from saecircuits.sae import SAE, SAEConfig, SAESet

    model, tok = tiny
    d = unwrap(model).config.hidden_size
    saes = SAESet({"resid.0": SAE.random(SAEConfig("relu", d, 32, hook="resid.0"), seed=1),
                   "mlp.1": SAE.random(SAEConfig("topk", d, 48, k=6, hook="mlp.1"), seed=3),
                   "resid.2": SAE.random(SAEConfig("topk", d, 48, k=6, hook="resid.2"), seed=2)})
    graph, _ = trace_circuit(model, tok, saes, "ioi", n=8, top_k=24, positional=True, length="common",
                             batch_size=8, progress=False)
    export_graph(graph, out, formats=["neuronpedia"])
    return json.loads((out / "graph.json").read_text())


def test_circuit_tracer_frontend_draws_a_saecircuits_graph(tiny, npm_libs, tmp_path):
    data = saecircuits_graph(tiny, tmp_path / "data")
    listing = json.loads((tmp_path / "data" / "graph-metadata.json").read_text())["graphs"]
    slug, threshold = listing[0]["slug"], listing[0]["node_threshold"]
    # the nodes the page keeps at its default pruning threshold (formatData in util-cg.js)
    expected = sum(1 for n in data["nodes"] if n["feature_type"] in ("embedding", "logit")
                   or n["influence"] <= threshold)
    assert 0 < expected and any(n["feature_type"] == "cross layer transcoder" for n in data["nodes"])

    server, url = start_server(tmp_path / "data", tmp_path / "server.log")
    browser = Browser(tmp_path / "profile", lambda u: library_body(npm_libs, u))
    try:
        browser.call("Fetch.enable", patterns=[{"urlPattern": "https://*"}])
        for domain in ("Page", "Runtime", "Log"):
            browser.call(f"{domain}.enable")
        browser.call("Page.navigate", url=f"{url}/index.html?slug={slug}")
        drawn = browser.settle("document.querySelectorAll('.link-graph text.node').length")
        assert drawn == expected, (drawn, expected)
        # the prompt's tokens label the x axis; the graph picker lists our graph
        ticks = browser.js("[...document.querySelectorAll('.link-graph g.prompt-token')].length")
        assert ticks == len(data["metadata"]["prompt_tokens"])
        assert browser.js("document.querySelector('select.graph-prompt-select').value") == slug
        assert browser.js("typeof d3.conventions + typeof dagre.layout + typeof pako.inflate + "
                          "typeof npyjs.parse") == "function" * 4
        assert browser.errors == [], browser.errors
        assert browser.external == [], browser.external
        shot = browser.call("Page.captureScreenshot", format="png")["data"]
        (tmp_path / "ct-frontend.png").write_bytes(base64.b64decode(shot))
    finally:
        browser.close()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
