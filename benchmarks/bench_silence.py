"""Longest silent intervals of a command: how long its terminal shows no change.

    python benchmarks/bench_silence.py [--log FILE] [--top 5] -- saecircuits trace --saes ...

Runs the command (stdout and stderr merged, Python unbuffered), timestamps every output
segment (split at '\\r' and '\\n': one tqdm redraw or one printed line) and prints
  - the longest gaps between any two segments (what a user watches: redraws included), and
  - the longest gaps between *progress* segments: a new printed line, or a bar whose count
    changed (a redraw that only moves the elapsed time, e.g. the 5 s heartbeat, does not count),
each with the segment that ended the gap (the phase that was silent). `--log` keeps the
timestamped segments. The issue-24 target: no gap of either kind over 15 s in a trace/demo run
on SmolLM2 on the 2-core CPU.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

# a tqdm line: "desc:  40%|████  | 4/10 [00:03<00:05, 1.2it/s]" or "desc: 12it [00:03, ...]":
# the part before " [elapsed" (description, percentage, n/total) is what changes with progress
_BAR = re.compile(r"^(?P<key>.*?) \[\d\d:\d\d")
_STATUS = re.compile(r"^(?P<key>.*): \d\d:\d\d(?::\d\d)?$")  # progress.status: "desc: 00:12"


def progress_key(segment: str) -> str:
    """What a progress segment says apart from time: the bar's count, or the whole line."""
    m = _BAR.match(segment) or _STATUS.match(segment)
    return m.group("key") if m else segment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log", default=None, help="write 'seconds<TAB>segment' lines here")
    ap.add_argument("--top", type=int, default=5, help="gaps to list of each kind")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("give the command after --")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    segments: list[tuple[float, str]] = []
    pending = b""
    while True:
        data = os.read(proc.stdout.fileno(), 65536)
        now = time.monotonic() - start
        if not data:
            break
        pending += data
        parts = re.split(rb"[\r\n]", pending)
        pending = parts.pop()
        for p in parts:
            text = p.decode("utf-8", "replace").strip()
            if text:
                segments.append((now, text))
    rc = proc.wait()
    end = time.monotonic() - start
    if pending.strip():
        segments.append((end, pending.decode("utf-8", "replace").strip()))
    if args.log:
        with open(args.log, "w", encoding="utf-8") as fh:
            fh.writelines(f"{t:.2f}\t{s}\n" for t, s in segments)

    def gaps(points: list[tuple[float, str]]) -> list[tuple[float, float, str]]:
        marks = [(0.0, "(start)")] + points + [(end, "(exit)")]
        return sorted(((b[0] - a[0], a[0], b[1]) for a, b in zip(marks, marks[1:])),
                      reverse=True)

    progress, last = [], None
    for t, s in segments:
        key = progress_key(s)
        if key != last:
            progress.append((t, s))
            last = key
    print(f"command: {' '.join(cmd)}\nexit code {rc}, {end:.1f} s, {len(segments)} output "
          f"segments, {len(progress)} progress updates")
    for name, pts in (("any output", segments), ("progress (count or line changed)", progress)):
        print(f"longest gaps without {name}:")
        for gap, at, seg in gaps(pts)[:args.top]:
            print(f"  {gap:6.1f} s  from t={at:7.1f} s, ended by: {seg[:110]}")


if __name__ == "__main__":
    main()
