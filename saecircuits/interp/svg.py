"""Small hand-written SVG charts (no plotting library needed)."""
from __future__ import annotations

from collections.abc import Sequence
from html import escape

_W, _H, _L, _R, _T, _B = 640, 360, 60, 20, 40, 50


def _frame(title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
            f'viewBox="0 0 {_W} {_H}" font-family="sans-serif" font-size="12">'
            f'<rect width="100%" height="100%" fill="white"/>'
            f'<text x="{_W / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>'
            + "".join(body) + "</svg>\n")


def _yaxis(lo: float, hi: float, label: str) -> tuple[list[str], callable]:
    span = (hi - lo) or 1.0

    def y(v: float) -> float:
        return _T + (_H - _T - _B) * (1 - (v - lo) / span)

    out = [f'<line x1="{_L}" y1="{_T}" x2="{_L}" y2="{_H - _B}" stroke="black"/>']
    for i in range(6):
        v = lo + span * i / 5
        out.append(f'<line x1="{_L - 4}" y1="{y(v):.1f}" x2="{_W - _R}" y2="{y(v):.1f}" '
                   f'stroke="#ddd"/><text x="{_L - 6}" y="{y(v) + 4:.1f}" text-anchor="end">'
                   f'{v:.2f}</text>')
    out.append(f'<text x="14" y="{(_T + _H - _B) / 2}" transform="rotate(-90 14 '
               f'{(_T + _H - _B) / 2})" text-anchor="middle">{escape(label)}</text>')
    return out, y


def bars_with_ci(names: Sequence[str], means: Sequence[float], lows: Sequence[float],
                 highs: Sequence[float], points: Sequence[Sequence[float]], title: str,
                 ylabel: str) -> str:
    """One bar per group (mean) with a CI whisker and the individual values as dots."""
    values = [v for p in points for v in p] + list(lows) + list(highs) + [0.0]
    lo, hi = min(min(values), 0.0), max(max(values), 0.1)
    body, y = _yaxis(lo, hi, ylabel)
    slot = (_W - _L - _R) / max(1, len(names))
    for i, (name, m, a, b, pts) in enumerate(zip(names, means, lows, highs, points)):
        cx = _L + slot * (i + 0.5)
        top, base = y(max(m, 0)), y(min(m, 0))
        body.append(f'<rect x="{cx - slot * 0.3:.1f}" y="{top:.1f}" width="{slot * 0.6:.1f}" '
                    f'height="{max(base - top, 0.5):.1f}" fill="#8fb3d9"/>')
        for j, v in enumerate(pts):
            dx = (j % 11 - 5) * slot * 0.04
            body.append(f'<circle cx="{cx + dx:.1f}" cy="{y(v):.1f}" r="2" fill="#333" '
                        f'fill-opacity="0.5"/>')
        body.append(f'<line x1="{cx:.1f}" y1="{y(a):.1f}" x2="{cx:.1f}" y2="{y(b):.1f}" '
                    f'stroke="#c00" stroke-width="2"/>')
        for v in (a, b):
            body.append(f'<line x1="{cx - 8:.1f}" y1="{y(v):.1f}" x2="{cx + 8:.1f}" '
                        f'y2="{y(v):.1f}" stroke="#c00" stroke-width="2"/>')
        body.append(f'<text x="{cx:.1f}" y="{_H - _B + 18}" text-anchor="middle">'
                    f'{escape(name)} (n={len(pts)})</text>'
                    f'<text x="{cx:.1f}" y="{_H - _B + 34}" text-anchor="middle">'
                    f'{m:.3f} [{a:.3f}, {b:.3f}]</text>')
    return _frame(title, body)


def histogram(edges: Sequence[float], counts: Sequence[int], title: str, xlabel: str,
              marks: Sequence[float] = ()) -> str:
    """Bars over `edges` (len(counts) + 1 values); dashed vertical lines at `marks`."""
    top = max(max(counts, default=0), 1)
    body, y = _yaxis(0, top, "count")
    x0, x1 = edges[0], edges[-1]
    span = (x1 - x0) or 1.0

    def x(v: float) -> float:
        return _L + (_W - _L - _R) * (v - x0) / span

    for a, b, c in zip(edges[:-1], edges[1:], counts):
        body.append(f'<rect x="{x(a):.1f}" y="{y(c):.1f}" width="{max(x(b) - x(a) - 1, 0.5):.1f}" '
                    f'height="{y(0) - y(c):.1f}" fill="#8fb3d9"/>')
    for m in marks:
        body.append(f'<line x1="{x(m):.1f}" y1="{_T}" x2="{x(m):.1f}" y2="{_H - _B}" '
                    f'stroke="#c00" stroke-dasharray="4 3"/>')
    for i in range(6):
        v = x0 + span * i / 5
        body.append(f'<text x="{x(v):.1f}" y="{_H - _B + 16}" text-anchor="middle">{v:.2f}</text>')
    body.append(f'<text x="{(_L + _W - _R) / 2}" y="{_H - 10}" text-anchor="middle">'
                f'{escape(xlabel)}</text>')
    return _frame(title, body)
