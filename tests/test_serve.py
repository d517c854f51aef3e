"""`saecircuits serve` hardening: files only inside the root (symlinks resolved), no listings,
Host must name this machine, security headers on every answer."""
from __future__ import annotations

import http.client
import os

import pytest

from saecircuits.errors import ConfigError
from saecircuits.export.serve import CSP, serve


def _get(server, path: str, host: str | None = None, method: str = "GET"):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", host if host is not None else f"127.0.0.1:{server.port}")
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), body


@pytest.fixture()
def site(tmp_path):
    root = tmp_path / "site"
    (root / "sub" / "empty").mkdir(parents=True)
    (root / "index.html").write_text("<html>viewer</html>")
    (root / "graph.json").write_text('{"nodes": []}')
    (root / "sub" / "page.txt").write_text("inside")
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the root")
    (root / "sub" / "link").symlink_to(secret)
    (root / "sub" / "dirlink").symlink_to(tmp_path)
    (root / "inner").symlink_to(root / "graph.json")  # a symlink that stays inside is fine
    with serve(root) as server:
        yield server, root


def test_regular_files_inside_the_root_are_served_with_security_headers(site):
    server, root = site
    status, headers, body = _get(server, "/index.html")
    assert status == 200 and body == (root / "index.html").read_bytes()
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == CSP and "script-src 'unsafe-inline'" in CSP
    assert _get(server, "/sub/page.txt")[2] == b"inside"
    assert _get(server, "/inner")[2] == (root / "graph.json").read_bytes()
    assert _get(server, "/")[2] == (root / "index.html").read_bytes()  # the root's page, no listing
    head = _get(server, "/graph.json", method="HEAD")
    assert head[0] == 200 and head[2] == b"" and head[1]["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("path", ["/sub/link", "/sub/dirlink/secret.txt", "/sub/", "/sub/empty/",
                                  "/../secret.txt", "/%2e%2e/secret.txt", "/sub/%2e%2e/%2e%2e/secret.txt",
                                  "/..%2fsecret.txt", "/nothing", "/%00", "/sub/page.txt%00.html",
                                  "/%ff"])
def test_escapes_listings_and_missing_files_are_404(site, path):
    server, _ = site
    status, headers, body = _get(server, path)
    assert status == 404, path
    assert b"outside the root" not in body and b"page.txt" not in body
    assert headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1:1", "",
                                  "localhost.evil.example:{port}", "127.0.0.1.nip.io:{port}"])
def test_foreign_host_header_is_refused(site, host):
    server, _ = site
    status, _, body = _get(server, "/index.html", host=host.format(port=server.port))
    assert status == 403 and b"viewer" not in body


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}",
                                  "[::1]:{port}"])
def test_local_host_headers_are_accepted(site, host):
    server, _ = site
    assert _get(server, "/index.html", host=host.format(port=server.port))[0] == 200


def test_serve_refuses_non_local_binding_and_bad_ports(site):
    _, root = site
    with pytest.raises(ConfigError, match="0.0.0.0"):
        serve(root, host="0.0.0.0")
    with pytest.raises(ConfigError, match="70000"):
        serve(root, port=70000)
    assert os.path.exists(root / "index.html")
