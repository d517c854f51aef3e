"""Progress bars and status lines for every long phase, through one helper.

    with progress.bar(len(chunks), "node scores", unit="chunk", enabled=show) as bar:
        for chunk in chunks:
            ...
            bar.update(1)
    for row in progress.track(rows, "explain", unit="unit", enabled=show): ...
    with progress.status("loading the model", enabled=show): ...   # no total: elapsed time

Every bar is a tqdm bar (ETA from its total) on stderr. A bar or status line whose display has
not changed for `HEARTBEAT` seconds is redrawn (its elapsed time and ETA move on), so a slow step
never leaves the terminal silent. Bars close on exit from their `with` block.

Inside `with progress.quiet():` nothing is drawn (the CLI's `--quiet`), nor anywhere when the
environment sets `SAECIRCUITS_PROGRESS=0` (logs, CI; the test suite sets it).

Tests intercept every bar: `with progress.record() as bars:` collects one `Record(desc, total,
n, peak, shown)` per bar as it closes; inside it, disabled bars count too (drawn to nowhere), so
a test sees every phase's final count, and `peak > total` exposes a bar that overran.
"""
from __future__ import annotations

import contextlib
import io
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from tqdm.auto import tqdm

HEARTBEAT = 5.0  # seconds without a redraw before a bar or status line is redrawn
T = TypeVar("T")


@dataclass(frozen=True)
class Record:
    """One closed bar: its description, total (None for a status line), final count, the largest
    count it ever showed, and whether it was shown to the user."""

    desc: str
    total: float | None
    n: float
    peak: float
    shown: bool


_recorders: list[list[Record]] = []
_quiet = [False]  # inside `quiet()`: no bar is drawn
_open: "weakref.WeakSet[Bar]" = weakref.WeakSet()  # weak: a bar dropped unclosed is not kept
_lock = threading.Lock()
_beat: threading.Thread | None = None


class Bar(tqdm):
    """A tqdm bar that records itself when closed (see `record`) and takes part in the heartbeat."""

    def __init__(self, *args, shown: bool = True, **kwargs):
        self.shown, self.peak, self._recorded = shown, 0, False
        super().__init__(*args, **kwargs)
        self.peak = self.n
        if not self.disable:
            _watch(self)

    def update(self, n: float = 1):
        out = super().update(n)
        self.peak = max(self.peak, self.n)
        return out

    def close(self):
        with _lock:
            _open.discard(self)
            if not self._recorded and hasattr(self, "n"):
                self._recorded = True
                self.peak = max(self.peak, self.n)
                for rec in _recorders:
                    rec.append(Record(self.desc.rstrip(": "), self.total, self.n, self.peak,
                                      self.shown))
        super().close()


def _watch(b: Bar) -> None:
    global _beat
    with _lock:
        _open.add(b)
        if _beat is None or not _beat.is_alive():
            _beat = threading.Thread(target=_heartbeat, name="saecircuits-progress", daemon=True)
            _beat.start()


def _heartbeat() -> None:
    """Redraw stale bars every half beat; ends when no bar is open."""
    while True:
        time.sleep(min(1.0, HEARTBEAT / 2))
        if not redraw_stale():
            return


def redraw_stale(now: float | None = None) -> int:
    """Redraw every open bar not drawn for HEARTBEAT s (at time `now`); returns how many bars
    are open."""
    with _lock:
        bars = list(_open)
    now = time.time() if now is None else now
    for b in bars:
        try:
            if not b.disable and now - b.last_print_t >= HEARTBEAT:
                b.refresh()
                b.last_print_t = now
        except Exception:  # noqa: BLE001 - a closing bar; a redraw is never worth a crash
            pass
    return len(bars)


def bar(total: float | None, desc: str, *, unit: str = "it", enabled: bool = True,
        leave: bool = False, **kwargs) -> Bar:
    """A progress bar of `total` steps (None: a counter without ETA). `enabled=False` draws
    nothing (but is still recorded inside `record`). Use as a context manager or close it."""
    enabled = enabled and not _quiet[0] and os.environ.get("SAECIRCUITS_PROGRESS", "1") != "0"
    sink = bool(_recorders) and not enabled
    if sink:
        kwargs["file"] = io.StringIO()
    return Bar(total=total, desc=desc, unit=unit, leave=leave, shown=enabled,
               disable=not (enabled or sink), dynamic_ncols=True, **kwargs)


def track(items: Iterable[T], desc: str, *, total: int | None = None, unit: str = "it",
          enabled: bool = True, leave: bool = False) -> Iterator[T]:
    """Yield `items` under a bar (total: `len(items)` unless given); each item counts once the
    loop body that received it is done."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(total, desc, unit=unit, enabled=enabled, leave=leave) as b:
        for item in items:
            yield item
            b.update(1)


@contextlib.contextmanager
def status(desc: str, *, enabled: bool = True, leave: bool = False) -> Iterator[Bar]:
    """A one-line status `desc: elapsed` for work without a known total, redrawn every
    HEARTBEAT s until the block ends."""
    with bar(None, desc, enabled=enabled, leave=leave,
             bar_format="{desc}: {elapsed}{postfix}") as b:
        b.refresh()
        yield b


@contextlib.contextmanager
def quiet(on: bool = True) -> Iterator[None]:
    """Inside the block (when `on`), no bar or status line is drawn (`--quiet`)."""
    before = _quiet[0]
    _quiet[0] = before or on
    try:
        yield
    finally:
        _quiet[0] = before


@contextlib.contextmanager
def record() -> Iterator[list[Record]]:
    """Collect a `Record` of every bar closed inside the block (for tests)."""
    rec: list[Record] = []
    _recorders.append(rec)
    try:
        yield rec
    finally:
        _recorders.remove(rec)
