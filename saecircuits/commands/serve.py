"""`saecircuits serve`: serve an export (or dashboards) directory on localhost."""
from __future__ import annotations

import argparse
import time

HELP = "serve an export directory's viewer on http://127.0.0.1:PORT"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import nonnegative_float, port

    parser.add_argument("directory", metavar="DIR", help="export or dashboards directory")
    parser.add_argument("--port", type=port, default=8000, help="port (0: any free port)")
    parser.add_argument("--seconds", type=nonnegative_float, default=None,
                        help="stop after this many seconds (default: until Ctrl-C)")


def run(args: argparse.Namespace) -> dict:
    from ..export.serve import serve

    server = serve(args.directory, args.port)
    print(f"serving {args.directory} at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        if args.seconds is None:
            while True:
                time.sleep(3600)
        time.sleep(max(0.0, args.seconds))
    finally:
        server.close()
    return {"url": server.url, "directory": args.directory}
