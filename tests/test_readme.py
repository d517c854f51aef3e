"""The README's quickstart runs as printed (with a smaller token budget and prompt count)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_has_two_commands_and_a_short_quickstart():
    text = README.read_text()
    bash = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert [b.strip() for b in bash] == ["bash scripts/install.sh && saecircuits demo",
                                         "bash scripts/install.sh --tests && python3 -m pytest -q tests"]
    ci = (README.parent / ".ci" / "run").read_text()
    assert bash[1].strip() in ci
    quick = re.search(r"## Quickstart.*?```python\n(.*?)```", text, re.S).group(1)
    assert len(quick.strip().splitlines()) <= 10


@pytest.mark.slow
def test_quickstart_runs(tmp_path, monkeypatch):
    text = README.read_text()
    code = re.search(r"## Quickstart.*?```python\n(.*?)```", text, re.S).group(1)
    small = code.replace("tokens=100_000", "tokens=8_160, eval_tokens=1_024").replace("n=32", "n=4") \
                .replace('method="ig"', 'method="attrib"')
    assert small != code
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(small, "README-quickstart", "exec"), scope)   # noqa: S102 - our own README
    assert (tmp_path / "saes" / "resid.23" / "sae.safetensors").is_file()
    assert (tmp_path / "ioi-circuit" / "graph.json").is_file()
    res, graph, top = scope["res"], scope["graph"], scope["top"]
    assert res.baseline[0] and res.steered[0]
    effects = [abs(d["effect"]) for _, d in graph.nodes(data=True) if d["kind"] == "feature"]
    assert top.kind == "feature" and abs(top.effect) == max(effects)  # the circuit's own top feature
    assert res.interventions[0].startswith(f"{top.hook}:{int(top.feature)} set=8.0")
    assert -10 < scope["summary"]["faithfulness"] < 10
