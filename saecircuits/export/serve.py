"""Serve an export directory on localhost (stdlib http.server in a background thread)."""
from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path

from ..errors import ConfigError, ExportError


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static files from one directory only; no request logging to stderr."""

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        pass


class Server:
    """A running local server: `url`, `port`, `close()`; also a context manager."""

    def __init__(self, directory: str | os.PathLike, port: int = 0, host: str = "127.0.0.1"):
        directory = Path(directory)
        if not (directory / "index.html").is_file() and not (directory / "dashboards.html").is_file():
            raise ExportError(f"{str(directory)!r} has no index.html or dashboards.html; "
                              "write it with `saecircuits export` or `saecircuits dashboards`")
        if not 0 <= int(port) <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {port}")
        handler = functools.partial(_QuietHandler, directory=str(directory.resolve()))
        try:
            self.httpd = http.server.ThreadingHTTPServer((host, int(port)), handler)
        except OSError as err:
            raise ExportError(f"cannot listen on {host}:{port}: {err}") from err
        self.httpd.daemon_threads = True
        self.host, self.port = host, self.httpd.server_address[1]
        page = "index.html" if (directory / "index.html").is_file() else "dashboards.html"
        self.url = f"http://{host}:{self.port}/{page}"
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
