"""The data a failure page's script draws from: one JSON object per page (pure, no I/O).

The page ships its numbers as ``<script type="application/json" id="case-data">`` and
``report.js`` builds the token heatmap, the matrix grids and the interactive graph from it with
DOM calls that only ever set text (``textContent``) and attributes — benchmark text is never
parsed as HTML. Steps:

1. ``case_payload`` — CaseArrays → plain dict: token texts, ids, exact relevance (full float
   precision, so the page shows the stored values), segments and evidence flags, the display
   label and byte-piece group of each token (``tokens.display_tokens``); the layer grid
   (row 0 the embeddings), one grid per state kind, the head grid (summed over positions), and
   the pruned graph's nodes and edges.
2. ``embed`` — ``json.dumps`` with NaN → null and ``<``, ``>``, ``&``, U+2028/9 escaped as
   ``\\uXXXX``, so no string inside can close the ``<script>`` element or open a comment.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from markupsafe import Markup

from harness_xai.report.arrays import CaseArrays
from harness_xai.report.text import is_special
from harness_xai.report.tokens import display_tokens

_STATE_TITLES = {"mid": "mid-block residual (between attention and MLP)",
                 "attn": "attention branch output", "mlp": "MLP branch output"}
_STATE_ORDER = ("mid", "attn", "mlp")


def _values(matrix: np.ndarray) -> list:
    """Nested lists with NaN → None (JSON null)."""
    out = matrix.tolist()
    if np.isnan(matrix).any():
        out = [[None if isinstance(v, float) and math.isnan(v) else v for v in row] for row in out]
    return out


def _num(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def _grid(rows: list[str], matrix: np.ndarray) -> dict[str, Any]:
    return {"rows": rows, "values": _values(matrix)}


def case_payload(a: CaseArrays, display: tuple[list[str], list[int]] | None = None
                 ) -> dict[str, Any]:
    """Step 1 (module docstring); ``display`` = (label, group) per token, from
    ``tokens.display_tokens`` (default: each token on its own, made visible)."""
    positions = [int(p) for p in a.positions]
    rel = [_num(v) for v in a.relevance.tolist()]
    first_special = bool(positions) and positions[0] == 0 and is_special(a.tokens[0])
    labels, group = display or display_tokens(a.tokens, [])
    data: dict[str, Any] = {
        "positions": positions,
        "tokens": {"text": a.tokens, "id": a.token_ids, "relevance": rel,
                   "segment": a.segments, "segment_index": a.segment_index,
                   "evidence": a.evidence, "first_special": first_special,
                   "display": labels, "group": group},
    }
    if a.layers is not None and a.layers.size:
        data["layers"] = _grid(["emb (0)" if l == 0 else f"layer {l}" for l in a.layer_ids],
                               a.layers)
    data["states"] = [
        {"kind": kind, "title": _STATE_TITLES.get(kind, kind),
         **_grid([f"block {l}" for l in a.states[kind][0]], a.states[kind][1])}
        for kind in sorted(a.states, key=lambda k: (_STATE_ORDER + (k,)).index(k))]
    if a.heads is not None:
        blocks, heads, matrix = a.heads
        data["heads"] = {"rows": [f"block {l}" for l in blocks], "cols": [str(h) for h in heads],
                         "values": _values(matrix)}
    if a.graph is not None:
        g = a.graph
        data["graph"] = {
            "layers": g["node_layers"], "n_edges": g["n_edges"], "mass_kept": g["mass_kept"],
            "formation_layer": g["formation_layer"],
            "nodes": [[int(l), int(p), _num(r)] for l, p, r in g["nodes"].tolist()],
            "edges": [[int(sl), int(sp), int(tl), int(tp), _num(w)]
                      for sl, sp, tl, tp, w in g["edges"].tolist()],
        }
    return data


_ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026",
            0x2028: "\\u2028", 0x2029: "\\u2029"}


def embed(data: Any) -> Markup:
    """Step 2: JSON safe to place verbatim inside ``<script type="application/json">``."""
    return Markup(json.dumps(data, separators=(",", ":"), allow_nan=False,
                             ensure_ascii=False).translate(_ESCAPES))
