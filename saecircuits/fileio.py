"""Safe file writing: every file is written to a temporary sibling and moved into place.

A crash at any moment leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file

from .errors import ConfigError, ExportError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publish(tmp: Path, directory: bool = False) -> None:
    """Give a finished temporary file/dir the permissions a plain open()/mkdir() would."""
    os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())


def read_text(path: str | os.PathLike, what: str = "file", error: type[Exception] = ConfigError) -> str:
    """UTF-8 text of `path`; undecodable bytes or an unreadable file raise `error` naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{what} {str(path)!r} is not UTF-8 text (bad byte at offset {err.start})") from None
    except OSError as err:
        raise error(f"cannot read {what} {str(path)!r}: {err.strerror or err}") from None


def file_in(path: str | os.PathLike, name: str, missing: str,
            error: type[Exception] = ExportError) -> Path:
    """`path` itself, or `path/name` when `path` is a directory; `error(missing)` (with
    `{path}` filled in) when that file does not exist."""
    path = Path(path)
    if path.is_dir():
        path = path / name
    if not path.is_file():
        raise error(missing.format(path=repr(str(path))))
    return path


def parse_json(text: str, where: str, error: type[Exception] = ConfigError) -> Any:
    """`json.loads` whose failures (syntax, nesting too deep) raise `error` naming `where`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{where} is not valid JSON: {err.msg} (line {err.lineno} column {err.colno})") from None
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply") from None


def _temp_prefix(path: Path) -> str:
    """`.NAME.pPID.`: the writer's pid lets `remove_stale_temps` tell live writes from debris."""
    return f".{path.name}.p{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


# names of our own temporaries: atomic_path/atomic_dir (`.NAME.[pPID.]XXXXXXXX.tmp`, mkstemp's
# 8-character suffix) and atomic_dir's displaced old copy (`.NAME.old-PID`)
_TEMP_NAME = re.compile(r"^\..+?\.(?:p(?P<pid>\d+)\.)?[a-z0-9_]{8}\.tmp$|^\..+\.old-(?P<old>\d+)$")


def remove_stale_temps(directory: str | os.PathLike, depth: int = 3) -> list[Path]:
    """Delete the temporaries a killed or failed write left in `directory` (and its
    subdirectories down to `depth` levels); a temporary of a still-running writer (its pid is
    alive) is kept, and files not named like ours are never touched. Returns the removed paths."""
    root = Path(directory)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for level in range(depth, -1, -1):  # deepest first
        for entry in sorted(root.glob("/".join(["*"] * level + [".*"]))):
            found = _TEMP_NAME.match(entry.name)
            if found is None or entry.is_symlink() and entry.is_dir():
                continue
            pid = found.group("pid") or found.group("old")
            if pid is not None and _pid_alive(int(pid)):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def check_output_dir(path: str | os.PathLike, overwrite: bool = True, what: str = "--out") -> Path:
    """Validate an output directory before any work: refuse a path that is a file, lies under a
    file, cannot be created or written, or (with `overwrite=False`) is a non-empty directory.
    Creates nothing. Returns the path."""
    out = Path(path)
    if str(path) == "":
        raise ConfigError(f"{what} is empty; name an output directory")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{what} {str(out)!r} is a file, not a directory")
    ancestor = out
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise ConfigError(f"{what} {str(out)!r} lies under {str(ancestor)!r}, which is a file")
    probe = out if out.exists() else ancestor
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {str(out)!r} is not writable ({str(probe)!r} refuses writes)")
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"{what} {str(out)!r} exists and is not empty; "
                          "pass --overwrite (overwrite=True) to replace it")
    return out


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success move it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _publish(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write UTF-8 text."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Atomically write JSON (NaN/inf are refused: JSON has no such values)."""
    write_text(path, json.dumps(obj, indent=indent, allow_nan=False, ensure_ascii=False) + "\n")


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> None:
    """Atomically write a safetensors file (tensors are made contiguous first)."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                  metadata=metadata)


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory in a temporary sibling and move it onto `path` when done.

    With `overwrite=False` an existing non-empty `path` is refused (ExportError).
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise ExportError(f"output directory {str(path)!r} exists and is not empty; "
                          "pass --overwrite (overwrite=True) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _publish(tmp, directory=True)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")  # see remove_stale_temps
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
