"""Inline-SVG figures of a failure page beyond the token heatmap (pure Python, no I/O).

Every function returns a plain dict of SVG primitives that a template draws; numbers are
formatted here, text is escaped by Jinja's autoescape in the template.

1. ``matrix_grid`` — any labelled matrix (``layer_grid``: the layer × position one) (rows × columns) as coloured rectangles with the
   red/blue relevance scale; used for internal states (kind × layer × position, positions binned)
   and for heads (layer × head, summed over positions).
2. ``curve_chart`` — the faithfulness deletion curve: Δℓ after removing the top-k relevant
   tokens vs k random tokens, as two polylines over the fraction removed.
3. ``graph_figure`` — a pruned attribution graph: node layers as rows, positions as columns,
   edges as lines whose opacity follows |weight| (red positive, blue negative).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from harness_xai.report.heatmap import colour, fmt


def _bin(matrix: np.ndarray, max_cols: int) -> tuple[np.ndarray, int]:
    """Sum neighbouring columns so at most ``max_cols`` remain; NaN where a block is all NaN."""
    n_rows, n_cols = matrix.shape
    size = max(1, math.ceil(n_cols / max_cols))
    out = np.full((n_rows, math.ceil(n_cols / size)), np.nan)  # (n_rows, n_binned)
    for c in range(out.shape[1]):
        block = matrix[:, c * size:(c + 1) * size]
        ok = ~np.isnan(block)
        out[:, c] = np.where(ok.any(axis=1), np.where(ok, block, 0.0).sum(axis=1), np.nan)
    return out, size


def matrix_grid(matrix: np.ndarray, row_labels: list[str], col_labels: list[str],
                what: str, max_cols: int = 160, skip_first: bool = False) -> dict[str, Any]:
    """Coloured grid of ``matrix`` (n_rows, n_cols); columns binned to ``max_cols``.

    ``skip_first``: leave column 0 (a BOS / attention-sink token) out of the colour scale.
    """
    binned, size = _bin(np.asarray(matrix, dtype=float), max_cols)
    n_rows, n_cols = binned.shape
    scaled = binned[:, 1:] if (skip_first and size == 1 and n_cols > 1) else binned
    finite = np.abs(scaled[np.isfinite(scaled)])
    scale = float(finite.max()) if finite.size else 0.0
    cell_w = max(3, min(22, 900 // max(n_cols, 1)))
    cell_h, label_w, top = 16, 84, 4
    rects = []
    for r in range(n_rows):
        for c in range(n_cols):
            v = binned[r, c]
            v = float(v) if np.isfinite(v) else None
            lo, hi = col_labels[c * size], col_labels[min((c + 1) * size, len(col_labels)) - 1]
            span = lo if lo == hi else f"{lo}–{hi}"
            (cr, cg, cb), _ = colour(v, scale)
            rects.append({"x": label_w + c * cell_w, "y": top + r * cell_h, "w": cell_w,
                          "h": cell_h, "fill": f"rgb({cr},{cg},{cb})",
                          "title": f"{row_labels[r]}, {what} {span}: {fmt(v, 6, signed=True)}"})
    labels = [{"y": top + r * cell_h + cell_h - 4, "text": row_labels[r]} for r in range(n_rows)]
    step = max(1, math.ceil(n_cols / 12))
    axis_y = top + n_rows * cell_h + 14
    ticks = [{"x": label_w + c * cell_w, "y": axis_y, "text": col_labels[c * size]}
             for c in range(0, n_cols, step)]
    return {"rects": rects, "labels": labels, "ticks": ticks, "bin_size": size, "scale": scale,
            "width": label_w + n_cols * cell_w + 24, "height": axis_y + 6}


def layer_grid(layers: np.ndarray, layer_ids: list[int], positions: list[int],
               skip_first: bool, max_cols: int = 160) -> dict[str, Any]:
    """The layer × position heatmap (n_layers + 1, n_positions): row 0 the embeddings."""
    labels = ["emb (0)" if layer == 0 else f"layer {layer}" for layer in layer_ids]
    return matrix_grid(layers, labels, [str(p) for p in positions], "position", max_cols,
                       skip_first)


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
    x_max = max(xs, default=1.0) or 1.0
    left, right, top, bottom = 56, 30, 10, 34

    def px(x: float) -> float:
        return round(left + (width - left - right) * x / x_max, 2)

    def py(y: float) -> float:
        return round(top + (height - top - bottom) * (hi - y) / (hi - lo), 2)

    def line(ys: list[float]) -> str:
        return " ".join(f"{px(x)},{py(y)}" for x, y in zip(xs, ys)
                        if y is not None and math.isfinite(y))

    y_ticks = [{"y": py(v), "text": fmt(v, 3)} for v in np.linspace(lo, hi, 5)]
    x_ticks: list[dict[str, Any]] = []
    for x in xs:  # leave out labels that would overlap the previous one
        if not x_ticks or px(x) - x_ticks[-1]["x"] >= 30:
            x_ticks.append({"x": px(x), "text": f"{100 * x:.0f}%"})
    return {"width": width, "height": height, "relevance": line(ys_rel), "random": line(ys_rand),
            "zero_y": py(0.0), "left": left, "right": width - right, "bottom": height - bottom,
            "y_ticks": y_ticks, "x_ticks": x_ticks,
            "points": [{"x": px(x), "y": py(y), "title": f"{100 * x:.0f}% removed: Δℓ {fmt(y, 5)}"}
                       for x, y in zip(xs, ys_rel) if y is not None and math.isfinite(y)]}


def graph_figure(node_layers: list[str], nodes: list[tuple[int, int, float]],
                 edges: list[tuple[int, int, int, int, float]], n_tokens: int,
                 max_edges: int = 600, width: int = 900) -> dict[str, Any]:
    """Layered drawing of a pruned graph: rows = node layers (embeddings at the bottom).

    ``nodes``: (layer, position, relevance); ``edges``: (source layer, source position, target
    layer, target position, weight). Only the ``max_edges`` strongest edges are drawn.
    """
    n_layers = max(len(node_layers), 1)
    row_h, left, top = 44, 64, 12
    height = top * 2 + (n_layers - 1) * row_h + 20
    span = max(n_tokens - 1, 1)

    def x_of(pos: int) -> float:
        return round(left + (width - left - 16) * pos / span, 2)

    def y_of(layer: int) -> float:
        return round(top + (n_layers - 1 - layer) * row_h, 2)

    strongest = sorted(edges, key=lambda e: -abs(e[4]))[:max_edges]
    w_max = max((abs(e[4]) for e in strongest), default=0.0) or 1.0
    lines = [{"x1": x_of(sp), "y1": y_of(sl), "x2": x_of(tp), "y2": y_of(tl),
              "stroke": "rgb(200,30,30)" if w > 0 else "rgb(25,95,200)",
              "opacity": round(0.15 + 0.85 * abs(w) / w_max, 3),
              "title": f"{node_layers[sl]}@{sp} → {node_layers[tl]}@{tp}: {fmt(w, 5, signed=True)}"}
             for sl, sp, tl, tp, w in strongest]
    used = {(e[0], e[1]) for e in strongest} | {(e[2], e[3]) for e in strongest}
    r_max = max((abs(r) for l, p, r in nodes if (l, p) in used), default=0.0) or 1.0
    circles = []
    for layer, pos, rel in nodes:
        if (layer, pos) not in used:
            continue
        (cr, cg, cb), _ = colour(rel, r_max)
        circles.append({"cx": x_of(pos), "cy": y_of(layer),
                        "r": round(2.5 + 4.5 * min(abs(rel) / r_max, 1.0), 2),
                        "fill": f"rgb({cr},{cg},{cb})",
                        "title": f"{node_layers[layer]} @ position {pos}: "
                                 f"{fmt(rel, 5, signed=True)}"})
    labels = [{"y": y_of(i) + 4, "text": name} for i, name in enumerate(node_layers)]
    return {"width": width, "height": height, "lines": lines, "circles": circles,
            "labels": labels, "n_drawn": len(strongest), "n_edges": len(edges)}
