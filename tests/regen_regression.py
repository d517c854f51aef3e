"""Regenerate `tests/fixtures/regression_bound.json` (the pin of tests/test_regression_bound.py).

Run it only when a change of the pinned numbers is intended, and say why in the commit:

    PYTHONPATH=$PWD python3 tests/regen_regression.py

It builds the same tiny random Llama and tokenizer as the test fixtures (`helpers.tiny_tokenizer`,
`helpers.save_tiny_model`), computes what the regression test compares (`compute`) and writes the
fixture. The test itself never writes it: with `REGEN_REGRESSION` set it fails instead of passing.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("SAECIRCUITS_PRECISION", "fp32")  # as in tests/conftest.py
sys.path[:0] = [str(Path(__file__).resolve().parent)]  # tests/: helpers, test_regression_bound


def main() -> None:
    import torch

    from helpers import save_tiny_model, tiny_tokenizer
    from saecircuits import load_model
    from test_regression_bound import FIXTURE, compute

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    with tempfile.TemporaryDirectory() as tmp:
        # named like the test fixture's folder (the graph meta records its base name)
        folder = save_tiny_model(Path(tmp) / "tiny-llama0", "llama", tiny_tokenizer())
        got = compute(*load_model(str(folder), device="cpu"))
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps(got, indent=0, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    main()
