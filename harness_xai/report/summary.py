"""The "why did it fail" summary at the top of a failure page (pure Python, no I/O).

1. ``ranks`` — every token's relevance rank exactly as the store's ``token_ranks`` view orders
   it: relevance descending, NULL/NaN last, ties by position (rank 1 = most toward the wrong
   answer).
2. ``top_tokens`` — the k tokens pushing most toward the wrong answer (relevance > 0, in rank
   order) and the k pushing most toward the gold answer (relevance < 0, most negative first),
   each with its stored rank, position, segment, share of Σ|R| and display label. A special
   token at position 0 (attention sink) is left out of both lists and reported on its own, as
   the heatmap leaves it out of its colour scale.
3. ``segment_line`` — Σ relevance and share of Σ|R| per segment label, largest |Σ| first.
4. ``layer_line`` — Σ relevance of the residual stream per layer (row 0 the embeddings) and the
   block where it changes most (where Δℓ forms, in relevance terms).
5. ``reasoning_line`` — a thinking model's case: the reasoning step with the largest Σ relevance
   toward the wrong token (``analysis.reasoning.top_step``), its text (from the case's
   ``thinking`` notes), its share of Σ|R|, and whether the model closed its reasoning.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from harness_xai.analysis.reasoning import top_step
from harness_xai.report.text import segment_label

#: characters of a reasoning step's text shown in the one-liner
STEP_CHARS = 160


def ranks(relevance: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Step 1: rank (1-based) of each token, as ``token_ranks.relevance_rank``."""
    rel = np.asarray(relevance, dtype=np.float64)  # (n,)
    missing = ~np.isfinite(rel)
    order = np.lexsort((np.asarray(positions), -np.where(missing, 0.0, rel), missing))
    out = np.empty(rel.size, dtype=np.int64)
    out[order] = np.arange(1, rel.size + 1)
    return out


def _entry(i: int, rank: np.ndarray, a: Any, labels: list[str], group: list[int],
           abs_total: float) -> dict[str, Any]:
    g = group[i]
    members = [k for k in range(len(group)) if group[k] == g]
    label = labels[g]
    if len(members) > 1:
        label = f"{label} (byte piece {members.index(i) + 1} of {len(members)})"
    r = float(a.relevance[i])
    return {"rank": int(rank[i]), "position": int(a.positions[i]), "label": label,
            "anchor": int(a.positions[g]),
            "token": a.tokens[i], "token_id": int(a.token_ids[i]), "relevance": r,
            "share": abs(r) / abs_total if abs_total > 0 else None,
            "segment": segment_label(a.segments[i], a.segment_index[i]) or "—",
            "segment_kind": a.segments[i] or ""}


def top_tokens(a: Any, labels: list[str], group: list[int], first_special: bool,
               k: int = 5) -> dict[str, Any]:
    """Step 2: {"wrong": [...], "gold": [...], "sink": entry or None, "n": n_tokens}."""
    rel = np.asarray(a.relevance, dtype=np.float64)  # (n,)
    rank = ranks(rel, a.positions)
    abs_total = float(np.nansum(np.abs(rel)))
    skip = {0} if first_special and rel.size else set()
    by_rank = [int(i) for i in np.argsort(rank, kind="stable") if int(i) not in skip]
    wrong = [i for i in by_rank if math.isfinite(rel[i]) and rel[i] > 0][:k]
    gold = [i for i in reversed(by_rank) if math.isfinite(rel[i]) and rel[i] < 0][:k]
    return {"wrong": [_entry(i, rank, a, labels, group, abs_total) for i in wrong],
            "gold": [_entry(i, rank, a, labels, group, abs_total) for i in gold],
            "sink": _entry(0, rank, a, labels, group, abs_total) if skip else None,
            "n": int(rel.size)}


def segment_line(a: Any) -> list[dict[str, Any]]:
    """Step 3: [{"label", "segment", "relevance", "share", "n_tokens"}], largest |Σ| first."""
    totals: dict[str, dict[str, Any]] = {}
    abs_total = 0.0
    for seg, idx, r in zip(a.segments, a.segment_index, np.asarray(a.relevance).tolist()):
        r = r if math.isfinite(r) else 0.0
        abs_total += abs(r)
        label = segment_label(seg, idx) or "unlabelled"
        row = totals.setdefault(label, {"label": label, "segment": seg or "", "relevance": 0.0,
                                        "abs": 0.0, "n_tokens": 0})
        row["relevance"] += r
        row["abs"] += abs(r)
        row["n_tokens"] += 1
    for row in totals.values():
        row["share"] = row["abs"] / abs_total if abs_total > 0 else None
    return sorted(totals.values(), key=lambda row: -abs(row["relevance"]))


def layer_line(layer_ids: list[int], layers: np.ndarray | None) -> dict[str, Any] | None:
    """Step 4: {"layers": [{"name", "total"}], "forms_at": name of the block with the largest
    |change| of Σ relevance from the layer below}; None without layer relevance."""
    if layers is None or not layers.size:
        return None
    totals = np.nansum(layers, axis=1)  # (n_layers + 1,)
    names = ["emb" if l == 0 else f"L{l}" for l in layer_ids]
    forms_at = None
    if totals.size > 1:
        jumps = np.abs(np.diff(totals))  # (n_layers,)
        forms_at = names[int(np.argmax(jumps)) + 1]
    return {"layers": [{"name": n, "total": float(t)} for n, t in zip(names, totals)],
            "forms_at": forms_at}


def reasoning_line(a: Any, notes: dict[str, Any]) -> dict[str, Any] | None:
    """Step 5: {"step" (1-based, None when the input holds no reasoning token), "of", "text",
    "share", "total", "closed"}; None for a case without thinking notes."""
    thinking = notes.get("thinking")
    if not isinstance(thinking, dict):
        return None
    steps = thinking.get("steps") if isinstance(thinking.get("steps"), list) else []
    out: dict[str, Any] = {"step": None, "of": len(steps), "closed": bool(thinking.get("closed")),
                           "text": "", "share": None, "total": None}
    top = top_step(np.asarray(a.relevance), list(a.segments), list(a.segment_index))
    if top is not None:
        step, total, share = top
        text = str(steps[step]) if step < len(steps) else ""
        if len(text) > STEP_CHARS:
            text = text[: STEP_CHARS - 1] + "…"
        out.update(step=step + 1, text=text, share=share, total=total)
    return out
