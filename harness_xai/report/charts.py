"""Inline-SVG charts of the study and task pages (pure Python, no I/O).

Each function returns plain dicts of SVG primitives (numbers formatted here; text escaped by
Jinja's autoescape in the template that draws them):

1. ``palette`` — one colour and dash per line: the line's ``hue`` rank (size or checkpoint)
   picks a distinct categorical colour, the architecture the dash pattern.
2. ``line_chart`` — lines of (x, y) points on a linear or log x axis, with markers whose
   ``<title>`` holds the exact value, optional dashed reference lines (random baselines), axes,
   ticks and a legend.
3. ``histogram`` — counts of values in equal-width bins (the Δℓ distribution of a task).
4. ``bars`` — horizontal stacked shares (triage labels per run), one row per label set.
"""

from __future__ import annotations

import math
from typing import Any

from harness_xai.report.text import fmt

#: categorical hues (Tableau 10): a line's ``hue`` index picks one, so sizes/checkpoints differ
#: in hue, not only in shade
_HUES = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
         "#17becf", "#bcbd22", "#7f7f7f"]
#: one dash pattern per architecture (first solid)
_DASHES = ["", "7 3", "2 2", "9 3 2 3"]
#: triage label colours (labels from harness_xai.analysis.triage)
TRIAGE_COLOURS = {"uninformative": "#8c959f", "special-dominated": "#8250df",
                  "fewshot-dominated": "#1a7f37", "irrelevant-overweighted": "#cf222e",
                  "evidence-underweighted": "#bf8700", "unflagged": "#d0d7de"}


def palette(lines: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Step 1: (colour, dash) per line, in order: ``hue`` (index, default: order of the line)
    picks a categorical colour, the architecture (``arch``, in order of appearance) the dash."""
    archs: list[str] = []
    out = []
    for i, line in enumerate(lines):
        arch = line.get("arch") or "?"
        if arch not in archs:
            archs.append(arch)
        hue = line.get("hue", i)
        out.append((_HUES[int(hue) % len(_HUES)], _DASHES[archs.index(arch) % len(_DASHES)]))
    return out


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi - lo <= 0:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks, v = [], start
    while v <= hi + 1e-9 * step:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _x_label(v: float, log: bool) -> str:
    if log:
        for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if v >= div:
                return f"{v / div:.3g}{unit}"
    return f"{v:g}"


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks of a log axis spanning 10**lo … 10**hi: every decade; with fewer than three, the
    1-2-5 steps of each decade; with still fewer than three, every 1…9 step."""
    decades = range(math.floor(lo) - 1, math.ceil(hi) + 1)
    for mantissas in ((1,), (1, 2, 5), tuple(range(1, 10))):
        ticks = [m * 10.0 ** d for d in decades for m in mantissas
                 if lo - 1e-9 <= math.log10(m * 10.0 ** d) <= hi + 1e-9]
        if len(ticks) >= 3:
            return ticks
    return ticks


def line_chart(lines: list[dict[str, Any]], *, x_log: bool = False, x_title: str = "",
               y_range: tuple[float, float] | None = None, references: list[dict] | None = None,
               width: int = 440, height: int = 200) -> dict[str, Any]:
    """Step 2. ``lines``: {"name", "arch", "points": [(x, y), …]}; ``references``: dashed lines
    {"name", "points"} drawn in grey (e.g. the random baseline)."""
    references = references or []
    xs = [x for l in lines + references for x, _ in l["points"] if not x_log or x > 0]
    ys = [y for l in lines + references for _, y in l["points"]]
    left, right, top, bottom = 44, 10, 8, 30
    if not xs:
        return {"empty": True, "width": width, "height": 40}
    fx = (lambda v: math.log10(v)) if x_log else (lambda v: v)
    x_lo, x_hi = fx(min(xs)), fx(max(xs))
    if x_hi - x_lo < 1e-12:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_lo, y_hi = y_range if y_range else (min(ys + [0.0]), max(ys + [0.0]))
    y_lo, y_hi = min(y_lo, min(ys)), max(y_hi, max(ys))
    if y_hi - y_lo < 1e-12:
        y_lo, y_hi = y_lo - 1, y_hi + 1

    def px(v: float) -> float:
        return round(left + (width - left - right) * (fx(v) - x_lo) / (x_hi - x_lo), 2)

    def py(v: float) -> float:
        return round(top + (height - top - bottom) * (y_hi - v) / (y_hi - y_lo), 2)

    styles = palette(lines)
    drawn = []
    for line, (colour, dash) in zip(lines, styles):
        pts = [(x, y) for x, y in line["points"] if not x_log or x > 0]
        drawn.append({"name": line["name"], "stroke": colour, "dash": dash,
                      "points": " ".join(f"{px(x)},{py(y)}" for x, y in pts),
                      "markers": [{"x": px(x), "y": py(y),
                                   "title": f"{line['name']}: {_x_label(x, x_log)} → {fmt(y, 4)}"}
                                  for x, y in pts]})
    for ref in references:
        pts = [(x, y) for x, y in ref["points"] if not x_log or x > 0]
        drawn.append({"name": ref["name"], "stroke": "#8c959f", "dash": "1 3",
                      "points": " ".join(f"{px(x)},{py(y)}" for x, y in pts),
                      "markers": [{"x": px(x), "y": py(y),
                                   "title": f"{ref['name']}: {_x_label(x, x_log)} → {fmt(y, 4)}"}
                                  for x, y in pts]})
    if x_log:
        x_ticks = log_ticks(x_lo, x_hi) or sorted(set(xs))
    else:
        x_ticks = nice_ticks(x_lo, x_hi, 6)
    return {"empty": False, "width": width, "height": height, "lines": drawn,
            "left": left, "right": width - right, "top": top, "bottom": height - bottom,
            "x_ticks": [{"x": px(v), "text": _x_label(v, x_log)} for v in x_ticks],
            "y_ticks": [{"y": py(v), "text": f"{v:g}"} for v in nice_ticks(y_lo, y_hi)],
            "x_title": x_title,
            "legend": [{"name": d["name"], "stroke": d["stroke"], "dash": d["dash"]}
                       for d in drawn]}


def histogram(values: list[float], bins: int = 20, width: int = 360,
              height: int = 150) -> dict[str, Any]:
    """Step 3: bars of the counts of ``values`` (finite ones) in ``bins`` equal-width bins."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return {"empty": True, "width": width, "height": 40}
    lo, hi = min(vals), max(vals)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    counts = [0] * bins
    for v in vals:
        counts[min(int((v - lo) / (hi - lo) * bins), bins - 1)] += 1
    left, bottom, top, right = 36, 26, 6, 24
    bw = (width - left - right) / bins
    c_max = max(counts)
    rects = []
    for i, c in enumerate(counts):
        h = (height - top - bottom) * c / c_max
        a, b = lo + (hi - lo) * i / bins, lo + (hi - lo) * (i + 1) / bins
        rects.append({"x": round(left + i * bw, 2), "y": round(height - bottom - h, 2),
                      "w": round(max(bw - 1, 1), 2), "h": round(h, 2),
                      "title": f"{fmt(a, 3)} … {fmt(b, 3)}: {c}"})
    return {"empty": False, "width": width, "height": height, "rects": rects,
            "left": left, "bottom": height - bottom, "n": len(vals), "max": c_max,
            "x_ticks": [{"x": round(left + (width - left - right) * f, 2),
                         "text": fmt(lo + (hi - lo) * f, 3)}
                        for f in (0.0, 0.5, 1.0)]}


def bars(rows: list[dict[str, Any]], width: int = 360) -> list[dict[str, Any]]:
    """Step 4: ``rows`` {"label", "shares": {label: share}} → segments with x offsets (px)."""
    out = []
    for row in rows:
        x, segs = 0.0, []
        for label, share in row["shares"].items():
            w = round(width * share, 2)
            segs.append({"x": round(x, 2), "w": w, "fill": TRIAGE_COLOURS.get(label, "#6e7781"),
                         "title": f"{label}: {100 * share:.1f}%"})
            x += w
        out.append({"label": row["label"], "segments": segs, "width": width,
                    "n": row.get("n")})
    return out
