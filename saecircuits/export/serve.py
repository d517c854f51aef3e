"""Serve an export directory on localhost (stdlib http.server in a background thread).

Hardened for a local viewer: only regular files inside the served root (after resolving
symlinks), no directory listings, a `Host` header that names this machine (no DNS rebinding),
and security headers (nosniff, a CSP that lets the self-contained pages run and nothing else).
"""
from __future__ import annotations

import http.server
import os
import posixpath
import threading
import urllib.parse
from pathlib import Path

from ..errors import ConfigError, ExportError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
# the pages' own meta CSP, plus no framing, no <base>, no forms
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": CSP,
           "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
           "Cross-Origin-Resource-Policy": "same-origin", "Cache-Control": "no-store"}


class _Handler(http.server.SimpleHTTPRequestHandler):
    """GET/HEAD of regular files under `root`; 404 for anything else; no request logging."""

    root: Path
    port: int

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        pass

    def end_headers(self) -> None:
        for key, value in HEADERS.items():
            self.send_header(key, value)
        super().end_headers()

    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").strip().lower()
        return host in {f"{h}:{self.port}" for h in LOCAL_HOSTS} | set(
            LOCAL_HOSTS if self.port == 80 else ())

    def _target(self) -> Path | None:
        """The regular file the request names inside the root, or None."""
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path, errors="strict")
        if "\x00" in path:
            return None
        parts = [p for p in posixpath.normpath(path).split("/") if p not in ("", ".")]
        if any(p == ".." or os.sep in p or (os.altsep and os.altsep in p) for p in parts):
            return None
        candidate = self.root.joinpath(*parts) if parts else self.root
        if candidate.is_dir():
            page = next((candidate / n for n in ("index.html", "dashboards.html")
                         if (candidate / n).is_file()), None)
            if page is None:
                return None
            candidate = page
        try:
            real = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not real.is_relative_to(self.root) or not real.is_file():
            return None
        return real

    def send_head(self):
        if not self._host_ok():
            self.send_error(403, "Host header must name this machine (localhost, 127.0.0.1, [::1])")
            return None
        try:
            target = self._target()
        except UnicodeDecodeError:
            target = None
        if target is None:
            self.send_error(404, "File not found")
            return None
        try:
            fh = open(target, "rb")
        except OSError:
            self.send_error(404, "File not found")
            return None
        try:
            size = os.fstat(fh.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Type", self.guess_type(str(target)))
            self.send_header("Content-Length", str(size))
            self.end_headers()
            return fh
        except BaseException:
            fh.close()
            raise

    def list_directory(self, path):  # never list a directory
        self.send_error(404, "File not found")
        return None


class Server:
    """A running local server: `url`, `port`, `close()`; also a context manager."""

    def __init__(self, directory: str | os.PathLike, port: int = 0, host: str = "127.0.0.1"):
        directory = Path(directory)
        if not (directory / "index.html").is_file() and not (directory / "dashboards.html").is_file():
            raise ExportError(f"{str(directory)!r} has no index.html or dashboards.html; "
                              "write it with `saecircuits export` or `saecircuits dashboards`")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"port must be an integer in 0..65535, got {port!r}")
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ConfigError(f"serve binds to this machine only (127.0.0.1, ::1), got host {host!r}")
        handler = type("Handler", (_Handler,), {"root": directory.resolve()})
        server_cls = http.server.ThreadingHTTPServer
        if host == "::1":
            server_cls = type("Server6", (server_cls,), {"address_family": __import__("socket").AF_INET6})
        try:
            self.httpd = server_cls((host, port), handler)
        except OSError as err:
            raise ExportError(f"cannot listen on {host}:{port}: {err}") from err
        self.httpd.daemon_threads = True
        self.host, self.port = host, self.httpd.server_address[1]
        handler.port = self.port
        page = "index.html" if (directory / "index.html").is_file() else "dashboards.html"
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/{page}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="saecircuits-serve",
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(directory: str | os.PathLike, port: int = 0, host: str = "127.0.0.1") -> Server:
    """Start serving `directory` (port 0: any free port); call `.close()` when done."""
    return Server(directory, port, host)
