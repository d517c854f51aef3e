"""Where the tests find circuit-tracer's own virtual environment (made by
`bash benchmarks/peers/setup.sh DIR circuit-tracer`; `scripts/install.sh --tests` makes it in
.peer-venvs/): $SAECIRCUITS_CT_PYTHON, else $PEER_VENVS/circuit-tracer, else .peer-venvs/circuit-tracer."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ct_python() -> Path | None:
    """The circuit-tracer venv's python, or None when it is not installed."""
    if os.environ.get("SAECIRCUITS_CT_PYTHON"):
        candidates = [Path(os.environ["SAECIRCUITS_CT_PYTHON"])]
    else:
        venvs = [Path(os.environ["PEER_VENVS"])] if os.environ.get("PEER_VENVS") else []
        candidates = [v / "circuit-tracer" / "bin" / "python" for v in venvs + [ROOT / ".peer-venvs"]]
    return next((p for p in candidates if p.is_file()), None)


SKIP_REASON = ("circuit-tracer's virtual environment is not installed (bash scripts/install.sh --tests, "
               "or bash benchmarks/peers/setup.sh .peer-venvs circuit-tracer)")
