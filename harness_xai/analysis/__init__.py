"""Per-case analysis of an attributed case: metrics over its arrays and an automatic triage.

``analyse_case(case)`` fills ``case.analysis`` (a flat dict) for an attributed case with token
relevance; other cases are left untouched. Steps:
1. ``relevance``: the paper's normalisation, segment totals / shares, concentration, position
   profile, sink share, conservation.
2. ``layers``: the layer profile (last-position share per layer, formation layer).
3. ``evidence``: rank of the evidence among the tokens, with the random baseline (only for
   cases with ``evidence_positions``).
4. ``triage``: the rule flags and the primary label.
Result: ``{metric name: float, …, "triage": label, "flags": [flag, …]}``; the store writes the
numbers to ``case_metrics`` and the labels to ``case_labels``. Every function is pure (arrays in,
numbers out), so each definition is tested on constructed cases (tests/test_analysis.py).
"""

from __future__ import annotations

import math

import numpy as np

from harness_xai.analysis.evidence import evidence_recovery
from harness_xai.analysis.layers import layer_profile
from harness_xai.analysis.relevance import (concentration, conservation, position_profile,
                                            segment_relevance)
from harness_xai.analysis.triage import FLAGS, LABELS, classify
from harness_xai.records import ATTRIBUTED, CaseRecord

__all__ = ["FLAGS", "LABELS", "analyse_case", "case_metrics", "classify"]


def case_metrics(case: CaseRecord) -> dict[str, float]:
    """Steps 1–3: every metric that applies to ``case`` (finite floats only)."""
    rel = np.asarray(case.token_relevance, dtype=np.float64)  # (n,)
    segments = list(case.segments or [])
    out: dict[str, float] = {}
    out.update(segment_relevance(rel, segments))
    out.update(concentration(rel, segments))
    out.update(position_profile(rel, segments))
    out.update(conservation(rel, case.delta))
    graph = case.graph
    out.update(layer_profile(case.layer_relevance, graph.metrics if graph else None,
                             len(graph.node_layers) if graph else None))
    out.update(evidence_recovery(rel, list(case.evidence_positions or []), segments))
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}


def analyse_case(case: CaseRecord) -> CaseRecord:
    """Fill ``case.analysis`` (module docstring); returns the case."""
    if case.status != ATTRIBUTED or case.token_relevance is None \
            or np.size(case.token_relevance) == 0:
        return case
    metrics = case_metrics(case)
    label, flags = classify(metrics, case.faithfulness)
    case.analysis = {**metrics, "triage": label, "flags": flags}
    return case
