"""Colours and display helpers for relevance heatmaps (pure Python, no I/O).

Colour scheme: positive relevance (pushes toward the wrong answer) is red, negative (toward the
gold answer) is blue, zero is white.

Steps:
  1. ``scale_of`` — the normalizer max|r| over a case, leaving out position 0 when it holds a
     special/BOS token (attention sinks soak up relevance and would wash everything else out).
  2. ``colour`` — intensity a = min(|r| / scale, 1); the background blends linearly from white to
     the sign's colour by a; text turns white on dark backgrounds.
  3. ``token_cells`` — one dict per input token: visible-but-faithful display text (newlines shown
     as "↵" followed by the real newline, tabs as "⇥" + tab, empty tokens as "∅"), exact value,
     inline style.
  (The layer × position grid and the other SVG figures live in ``figures``.)
"""

from __future__ import annotations

import math
import re
from typing import Any

RED = (200, 30, 30)
BLUE = (25, 95, 200)
_SPECIAL = re.compile(r"^(<\|?[A-Za-z_][A-Za-z0-9_.:-]*\|?>|\[[A-Z]+\])$")


def is_special(token: str | None) -> bool:
    """True for tokens that look like tokenizer specials: ``<s>``, ``<|endoftext|>``, ``[CLS]``."""
    return bool(token) and bool(_SPECIAL.match(token or ""))


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def scale_of(values: list[float | None], skip_first: bool) -> float:
    """max |r| over finite values (index 0 left out when ``skip_first``); 0.0 when none."""
    vals = [abs(v) for i, v in enumerate(values) if v is not None and not (skip_first and i == 0)]
    vals = [v for v in vals if math.isfinite(v)]
    return max(vals, default=0.0)


def colour(r: float | None, scale: float) -> tuple[tuple[int, int, int], float]:
    """Background rgb for relevance ``r`` and the intensity a in [0, 1] used for it."""
    r = _finite(r)
    if r is None or r == 0.0 or scale <= 0.0:
        return (255, 255, 255), 0.0
    a = min(abs(r) / scale, 1.0)
    target = RED if r > 0 else BLUE
    rgb = tuple(int(round(255 + a * (t - 255))) for t in target)
    return (rgb[0], rgb[1], rgb[2]), a


def style_for(r: float | None, scale: float) -> str:
    """Inline CSS for a heatmap cell (background, and white text when dark)."""
    (cr, cg, cb), a = colour(r, scale)
    style = f"background-color: rgb({cr}, {cg}, {cb})"
    if a > 0.55:
        style += "; color: #fff"
    return style


def display_token(token: str | None) -> str:
    """Token text made visible but kept faithful: whitespace survives under pre-wrap."""
    if token is None or token == "":
        return "∅"
    return token.replace("\r\n", "↵\r\n").replace("\n", "↵\n").replace("\t", "⇥\t")


def fmt(x: Any, digits: int = 4, signed: bool = False) -> str:
    """Compact number for tables; '—' for missing."""
    x = _finite(x)
    if x is None:
        return "—"
    return f"{x:+.{digits}g}" if signed else f"{x:.{digits}g}"


def segment_label(segment: str | None, index: int | None) -> str:
    """``fewshot 2`` / ``option 1`` / ``question``; empty when the token has no segment."""
    if not segment:
        return ""
    return segment if index is None else f"{segment} {index}"


def segment_totals(tokens: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Σ relevance and token count per segment label, in order of first appearance."""
    totals: dict[str, dict[str, Any]] = {}
    for t in tokens:
        label = segment_label(t.get("segment"), t.get("segment_index"))
        if not label:
            continue
        row = totals.setdefault(label, {"label": label, "segment": t.get("segment"),
                                        "n_tokens": 0, "relevance": 0.0})
        row["n_tokens"] += 1
        row["relevance"] += _finite(t["relevance"]) or 0.0
    return list(totals.values())


def token_cells(tokens: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float, bool]:
    """Heatmap cells for token_relevance rows (ordered by position).

    Returns (cells, scale, first_is_special).
    """
    first_special = bool(tokens) and tokens[0]["position"] == 0 and is_special(tokens[0]["token"])
    rels = [_finite(t["relevance"]) for t in tokens]
    scale = scale_of(rels, skip_first=first_special)
    cells = []
    previous: tuple[Any, Any] | None = None
    for i, t in enumerate(tokens):
        r = rels[i]
        raw = t["token"] if t["token"] is not None else ""
        segment = (t.get("segment"), t.get("segment_index"))
        seg_name = segment_label(*segment)
        starts = segment[0] is not None and segment != previous
        previous = segment
        cells.append(
            {
                "segment": segment[0] or "",
                "segment_label": seg_name,
                "segment_start": starts,
                "position": int(t["position"]),
                "token_id": t["token_id"],
                "text": display_token(t["token"]),
                "empty": raw == "",
                "special": first_special and i == 0,
                "relevance": "nan" if r is None else repr(r),
                "title": f"pos {t['position']} · token {raw!r} · id {t['token_id']} · "
                f"relevance {fmt(r, 6, signed=True)}" + (f" · {seg_name}" if seg_name else ""),
                "style": style_for(r, scale),
            }
        )
    return cells, scale, first_special
