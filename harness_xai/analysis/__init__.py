"""Per-case analysis of an attributed case: metrics over its arrays and an automatic triage.

``analyse(case, explanation)`` returns the explanation with ``analysis`` (a flat dict) filled
when it has token relevance; otherwise it is returned unchanged. Steps:
1. ``relevance``: the paper's normalisation, segment totals / shares, concentration, position
   profile, sink share, conservation.
2. ``layers``: the layer profile (last-position share per layer, formation layer).
3. ``evidence``: rank of the evidence among the tokens, with the random baseline (only for
   cases with ``evidence_positions``); ``reasoning``: the reasoning step of a thinking model's
   output with the most relevance toward the wrong token (only for cases with reasoning tokens).
4. ``triage``: the rule flags and the primary label.
Result: ``{metric name: float, …, "triage": label, "flags": [flag, …]}``; the store writes the
numbers to ``case_metrics`` and the labels to ``case_labels``. Every function is pure (arrays in,
numbers out), so each definition is tested on constructed cases (tests/test_analysis.py).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from harness_xai.analysis.evidence import evidence_recovery
from harness_xai.analysis.layers import layer_profile
from harness_xai.analysis.reasoning import reasoning_metrics
from harness_xai.analysis.relevance import (concentration, conservation, position_profile,
                                            segment_relevance)
from harness_xai.analysis.triage import FLAGS, LABELS, classify
from harness_xai.records import Case, Explanation

__all__ = ["FLAGS", "LABELS", "analyse", "case_metrics", "classify"]


def case_metrics(case: Case, ex: Explanation) -> dict[str, float]:
    """Steps 1–3: every metric that applies to the explained ``case`` (finite floats only)."""
    rel = np.asarray(ex.token_relevance, dtype=np.float64)  # (n,)
    segments = list(case.segments or [])
    out: dict[str, float] = {}
    out.update(segment_relevance(rel, segments))
    out.update(concentration(rel, segments))
    out.update(position_profile(rel, segments))
    out.update(conservation(rel, ex.delta))
    graph = ex.graph
    out.update(layer_profile(ex.layer_relevance, graph.metrics if graph else None,
                             len(graph.node_layers) if graph else None))
    out.update(evidence_recovery(rel, list(case.evidence_positions or []), segments))
    out.update(reasoning_metrics(rel, segments, list(case.segment_index or [])))
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}


def analyse(case: Case, ex: Explanation | None) -> Explanation | None:
    """``ex`` with its analysis filled (module docstring)."""
    if ex is None or ex.token_relevance is None or np.size(ex.token_relevance) == 0:
        return ex
    metrics = case_metrics(case, ex)
    label, flags = classify(metrics, ex.faithfulness)
    return replace(ex, analysis={**metrics, "triage": label, "flags": flags})
