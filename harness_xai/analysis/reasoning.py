"""Relevance per reasoning step of a thinking model's case (issue #14, item 4).

Tokens labelled ``reasoning`` carry their step in ``segment_index`` (``contrast.reasoning``).
For a case's token relevance r (n,):

- ``step_totals``: per step i present in the input, ``total_i = Σ_{t∈i} r_t`` and
  ``abs_i = Σ_{t∈i} |r_t|`` (the input may hold only the first steps: a contrast inside the
  reasoning sees the steps before it);
- the top step is the one with the largest ``total_i`` (relevance toward the wrong token);
  ``reasoning.top_step`` is its 0-based index, ``reasoning.top_step.total`` its Σ r,
  ``reasoning.top_step.share = abs_i / Σ_t |r_t|`` (all tokens), ``reasoning.n_steps`` the
  number of steps in the input. No metric when the case has no reasoning tokens.
"""

from __future__ import annotations

import numpy as np

REASONING = "reasoning"


def step_totals(relevance, segments: list, segment_index: list) -> dict[int, tuple[float, float]]:
    """{step: (Σ r, Σ |r|)} over the tokens labelled reasoning with that step, in step order."""
    rel = np.asarray(relevance, dtype=np.float64)  # (n,)
    if len(segments) != rel.size or len(segment_index) != rel.size:
        return {}
    out: dict[int, list[float]] = {}
    for r, seg, step in zip(rel.tolist(), segments, segment_index):
        if seg == REASONING and step is not None and np.isfinite(r):
            row = out.setdefault(int(step), [0.0, 0.0])
            row[0] += r
            row[1] += abs(r)
    return {k: (v[0], v[1]) for k, v in sorted(out.items())}


def top_step(relevance, segments: list, segment_index: list) -> tuple[int, float, float] | None:
    """(step, Σ r, share of Σ|r|) of the step with the largest Σ r; None without reasoning."""
    totals = step_totals(relevance, segments, segment_index)
    if not totals:
        return None
    rel = np.abs(np.asarray(relevance, dtype=np.float64))
    abs_all = float(rel[np.isfinite(rel)].sum())
    step = max(totals, key=lambda k: totals[k][0])
    total, absolute = totals[step]
    return step, total, (absolute / abs_all if abs_all > 0 else 0.0)


def reasoning_metrics(relevance, segments: list, segment_index: list) -> dict[str, float]:
    """The ``reasoning.*`` case metrics (module docstring)."""
    top = top_step(relevance, segments, segment_index)
    if top is None:
        return {}
    step, total, share = top
    return {"reasoning.n_steps": float(len(step_totals(relevance, segments, segment_index))),
            "reasoning.top_step": float(step), "reasoning.top_step.total": total,
            "reasoning.top_step.share": share}
