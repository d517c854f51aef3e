"""Atomic writes: all or nothing, and ordinary permissions on what lands."""
import os
import stat

import pytest

from saecircuits.errors import ExportError
from saecircuits.fileio import atomic_dir, atomic_path, write_json


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_and_dirs_get_umask_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_dir(tmp_path / "d") as d:
            (d / "f.txt").write_text("hi")
    finally:
        os.umask(mask)
    assert _mode(tmp_path / "a.json") == 0o644
    assert _mode(tmp_path / "d") == 0o755 and (tmp_path / "d" / "f.txt").read_text() == "hi"


def test_a_failure_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out"):
            raise RuntimeError("crash mid-export")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        write_json(tmp_path / "nan.json", {"x": float("nan")})
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("k")
    with pytest.raises(ExportError, match="full"):
        with atomic_dir(tmp_path / "full"):
            pass
