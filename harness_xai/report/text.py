"""Small display helpers shared by the report's pages and charts (pure Python, no I/O).

1. ``is_special`` — does a token look like a tokenizer special (``<s>``, ``<|endoftext|>``,
   ``[CLS]``)? The first token of a case is left out of colour scales when it is one: attention
   sinks soak up relevance and would wash everything else out.
2. ``fmt`` — a compact number for tables and titles (``'—'`` for missing or non-finite).
3. ``segment_label`` — ``fewshot 2`` / ``option 1`` / ``question`` for a token's segment.
(The token heatmap itself is drawn in the browser by ``static/report.js``, with the same colour
scheme: positive relevance, toward the wrong answer, red; negative, toward gold, blue.)
"""

from __future__ import annotations

import math
import re
from typing import Any

_SPECIAL = re.compile(r"^(<\|?[A-Za-z_][A-Za-z0-9_.:-]*\|?>|\[[A-Z]+\])$")


def is_special(token: str | None) -> bool:
    """True for tokens that look like tokenizer specials: ``<s>``, ``<|endoftext|>``, ``[CLS]``."""
    return bool(token) and bool(_SPECIAL.match(token or ""))


def fmt(x: Any, digits: int = 4, signed: bool = False) -> str:
    """Compact number for tables; '—' for missing."""
    if x is None:
        return "—"
    x = float(x)
    if not math.isfinite(x):
        return "—"
    return f"{x:+.{digits}g}" if signed else f"{x:.{digits}g}"


def segment_label(segment: str | None, index: int | None) -> str:
    """``fewshot 2`` / ``option 1`` / ``question``; empty when the token has no segment."""
    if not segment:
        return ""
    return segment if index is None else f"{segment} {index}"
