"""The faithfulness deletion curve of a failure page as inline SVG (pure Python, no I/O).

``curve_chart`` returns a plain dict of SVG primitives that the template draws (numbers formatted
here, text escaped by Jinja's autoescape): Δℓ after removing the top-k relevant tokens vs k random
tokens, as two polylines over the fraction removed, with axis titles and round ticks (the y axis
extended to the enclosing multiples of the tick step). The matrix grids and the interactive graph
are drawn in the browser by ``static/report.js`` from the page's JSON (``payload``).
"""

from __future__ import annotations

import math
from typing import Any

from harness_xai.report.charts import nice_ticks
from harness_xai.report.text import fmt


def curve_chart(fractions: list[float], relevance: list[float], random: list[float],
                delta0: float | None, width: int = 520, height: int = 220) -> dict[str, Any]:
    """Two polylines (relevance order, random order) of Δℓ over the fraction of tokens removed.

    The x axis starts at 0 with the unperturbed ``delta0`` when it is known.
    """
    xs = list(fractions)
    ys_rel, ys_rand = list(relevance), list(random)
    if delta0 is not None and math.isfinite(delta0):
        xs, ys_rel, ys_rand = [0.0, *xs], [delta0, *ys_rel], [delta0, *ys_rand]
    values = [v for v in ys_rel + ys_rand if v is not None and math.isfinite(v)]
    lo, hi = (min(values + [0.0]), max(values + [0.0])) if values else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 1.0, hi + 1.0
    ticks = nice_ticks(lo, hi, 5)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    lo, hi = min(lo, math.floor(lo / step + 1e-9) * step), max(hi, math.ceil(hi / step - 1e-9) * step)
    ticks = nice_ticks(lo, hi, 5)  # round numbers, the axis ends on ticks
    x_max = max(xs, default=1.0) or 1.0
    left, right, top, bottom = 62, 30, 10, 46

    def px(x: float) -> float:
        return round(left + (width - left - right) * x / x_max, 2)

    def py(y: float) -> float:
        return round(top + (height - top - bottom) * (hi - y) / (hi - lo), 2)

    def line(ys: list[float]) -> str:
        return " ".join(f"{px(x)},{py(y)}" for x, y in zip(xs, ys)
                        if y is not None and math.isfinite(y))

    y_ticks = [{"y": py(v), "text": f"{v:g}"} for v in ticks]
    x_ticks = [{"x": px(x), "text": f"{100 * x:.0f}%"}
               for x in nice_ticks(0.0, x_max, 6) if x <= x_max + 1e-9]
    return {"width": width, "height": height, "relevance": line(ys_rel), "random": line(ys_rand),
            "zero_y": py(0.0), "left": left, "right": width - right, "bottom": height - bottom,
            "y_ticks": y_ticks, "x_ticks": x_ticks, "mid_y": round((top + height - bottom) / 2, 2),
            "x_title": "share of input tokens removed", "y_title": "Δℓ = logit[wrong] − logit[gold]",
            "points": [{"x": px(x), "y": py(y), "title": f"{100 * x:.0f}% removed: Δℓ {fmt(y, 5)}"}
                       for x, y in zip(xs, ys_rel) if y is not None and math.isfinite(y)]}
