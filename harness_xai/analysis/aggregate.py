"""Aggregates of the stored per-case analysis across runs: evidence recovery and triage counts.

Both read a store through ``harness_xai.store.run_sql`` with one portable SELECT (DuckDB,
SQLite, PostgreSQL), grouped by model identity (pretrained, revision, step, n_params), method
and task:

1. ``evidence_rates``: over the cases with known evidence — ``n_cases``; ``top1`` = share whose
   best evidence token is ranked first by |R| (the headline recovery rate), ``top1_pos`` /
   ``top1_neg`` the same in the signed orders; ``random_top1`` = the mean chance of a random
   order ranking evidence first (Σ m/N / n_cases); ``mean_rank`` and ``mean_random_rank``.
2. ``triage_counts``: number of cases per primary triage label (``case_labels`` kind 'triage').
"""

from __future__ import annotations

from typing import Any

GROUP = "r.pretrained, r.revision, r.step, r.n_params, c.method, c.task"

EVIDENCE_SQL = f"""
SELECT {GROUP}, COUNT(DISTINCT c.id) AS n_cases,
       AVG(CASE WHEN m.name = 'evidence.top1' THEN m.value END) AS top1,
       AVG(CASE WHEN m.name = 'evidence.rank_pos'
                THEN CASE WHEN m.value = 1 THEN 1.0 ELSE 0.0 END END) AS top1_pos,
       AVG(CASE WHEN m.name = 'evidence.rank_neg'
                THEN CASE WHEN m.value = 1 THEN 1.0 ELSE 0.0 END END) AS top1_neg,
       AVG(CASE WHEN m.name = 'evidence.random_top1' THEN m.value END) AS random_top1,
       AVG(CASE WHEN m.name = 'evidence.rank_abs' THEN m.value END) AS mean_rank,
       AVG(CASE WHEN m.name = 'evidence.random_rank' THEN m.value END) AS mean_random_rank
FROM case_metrics AS m
JOIN cases AS c ON c.id = m.case_id
JOIN runs AS r ON r.id = c.run_id
WHERE m.name IN ('evidence.top1', 'evidence.rank_pos', 'evidence.rank_neg',
                 'evidence.random_top1', 'evidence.rank_abs', 'evidence.random_rank')
GROUP BY {GROUP}
ORDER BY c.task, r.pretrained, r.step, c.method"""

TRIAGE_SQL = f"""
SELECT {GROUP}, l.label, COUNT(*) AS n_cases
FROM case_labels AS l
JOIN cases AS c ON c.id = l.case_id
JOIN runs AS r ON r.id = c.run_id
WHERE l.kind = 'triage'
GROUP BY {GROUP}, l.label
ORDER BY c.task, r.pretrained, r.step, c.method, l.label"""


def _rows(db: str, sql: str) -> list[dict[str, Any]]:
    from harness_xai.store import run_sql

    columns, rows = run_sql(db, sql)
    return [dict(zip(columns, row)) for row in rows]


def evidence_rates(db: str) -> list[dict[str, Any]]:
    """Step 1: one dict per (model, checkpoint, method, task) with evidence cases."""
    return _rows(db, EVIDENCE_SQL)


def triage_counts(db: str) -> list[dict[str, Any]]:
    """Step 2: one dict per (model, checkpoint, method, task, label)."""
    return _rows(db, TRIAGE_SQL)
