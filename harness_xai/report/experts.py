"""Mixture of experts in the report: which experts carry a failure, and which carry a run's.

Reads ``expert_relevance`` (one row per selected expert × token; see ``store.models``):
1. ``run_experts(conn, run_id)``: per attributed case of the run, the (layer, expert) totals
   (Σ over positions) and, for the ``TOP`` experts with the largest |total| over all layers, their
   ``TOKENS`` most relevant positions — what the case page's experts section shows.
2. ``cohort_experts(conn, run_ids)``: per run, each (layer, expert) over the run's attributed
   failures: mean relevance per failure (Σ / n failures, 0 where not selected), the share of
   failures where it is the most relevant expert of its layer, and its share of the run's Σ|R|
   over experts — the study page's "which experts carry wrong answers", top ``TOP`` per run.
Dense models have no rows: both return empty results and the sections are not drawn.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import Connection, text

TOP = 6  # experts listed per case / per run
TOKENS = 5  # positions listed per top expert of a case


def run_experts(conn: Connection, run_id: int) -> dict[int, dict[str, Any]]:
    """case id → {"totals": [(layer, expert, Σ)], "top": [{layer, expert, total, tokens}]}."""
    rows = conn.execute(text(
        "SELECT t.case_id, t.layer, t.expert, t.position, t.relevance FROM expert_relevance AS t "
        "JOIN cases AS c ON c.id = t.case_id WHERE c.run_id = :r AND c.status = 'attributed' "
        "ORDER BY t.case_id, t.layer, t.expert, t.position"), {"r": int(run_id)}).all()
    per_case: dict[int, dict[tuple[int, int], list[tuple[int, float]]]] = defaultdict(
        lambda: defaultdict(list))
    for case_id, layer, expert, position, rel in rows:
        per_case[int(case_id)][(int(layer), int(expert))].append((int(position), float(rel or 0.0)))
    out = {}
    for case_id, cells in per_case.items():
        totals = [(layer, expert, sum(r for _, r in cell))
                  for (layer, expert), cell in cells.items()]
        top = sorted(totals, key=lambda t: (-abs(t[2]), t[0], t[1]))[:TOP]
        out[case_id] = {
            "totals": totals,
            "top": [{"layer": layer, "expert": expert, "total": total,
                     "tokens": sorted(cells[(layer, expert)], key=lambda pr: -abs(pr[1]))[:TOKENS]}
                    for layer, expert, total in top]}
    return out


def cohort_experts(conn: Connection, run_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """run id → the run's top (layer, expert) rows over its failures (empty: dense model)."""
    out: dict[int, list[dict[str, Any]]] = {}
    for run_id in run_ids:
        n_cases = conn.execute(text(
            "SELECT count(DISTINCT t.case_id) FROM expert_relevance AS t JOIN cases AS c "
            "ON c.id = t.case_id WHERE c.run_id = :r AND c.status = 'attributed'"),
            {"r": int(run_id)}).scalar() or 0
        if not n_cases:
            continue
        sums = conn.execute(text(
            "SELECT t.case_id, t.layer, t.expert, SUM(t.relevance) FROM expert_relevance AS t "
            "JOIN cases AS c ON c.id = t.case_id WHERE c.run_id = :r AND c.status = 'attributed' "
            "GROUP BY t.case_id, t.layer, t.expert"), {"r": int(run_id)}).all()
        total: dict[tuple[int, int], float] = defaultdict(float)
        best: dict[tuple[int, int], tuple[int, float]] = {}  # (case, layer) → (expert, |Σ|)
        for case_id, layer, expert, rel in sums:
            key, value = (int(layer), int(expert)), float(rel or 0.0)
            total[key] += value
            slot = (int(case_id), int(layer))
            if slot not in best or abs(value) > best[slot][1]:
                best[slot] = (int(expert), abs(value))
        wins: dict[tuple[int, int], int] = defaultdict(int)
        for (_, layer), (expert, _) in best.items():
            wins[(layer, expert)] += 1
        mass = sum(abs(v) for v in total.values()) or 1.0
        ranked = sorted(total, key=lambda k: (-abs(total[k]), k))[:TOP]
        out[int(run_id)] = [{"layer": layer, "expert": expert,
                             "mean": total[(layer, expert)] / n_cases,
                             "top_share": wins[(layer, expert)] / n_cases,
                             "mass_share": abs(total[(layer, expert)]) / mass, "n_cases": n_cases}
                            for layer, expert in ranked]
    return out


def with_tokens(view: dict[str, Any] | None, positions, tokens) -> dict[str, Any] | None:
    """The case view with each listed position's token text: (position, text, relevance)."""
    if view is None:
        return None
    text_of = dict(zip((int(p) for p in positions), tokens))
    top = [{**e, "tokens": [(p, text_of.get(p), r) for p, r in e["tokens"]]} for e in view["top"]]
    return {**view, "top": top}
