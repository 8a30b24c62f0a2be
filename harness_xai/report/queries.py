"""Read-only SQL queries behind the HTML report.

Every query is a SQLAlchemy Core ``text()`` statement with bound parameters; no benchmark text or
user input is ever formatted into SQL. Rows come back as plain dicts / numpy arrays so the renderer
never touches SQLAlchemy.

Steps used by the renderer:
  1. ``check_schema`` — fail with a UserError when the database is not a harness-xai store.
  2. ``list_runs`` — one dict per run, oldest first.
  3. ``task_rows`` — per run, task results merged with case counts (attributed / skipped by reason).
  4. ``run_cases`` — per run and task, the failure rows with their triage label and table
     metrics, sorted by delta descending (NULLs last).
  5. ``case_index``, ``doc_outcomes`` — every case and every evaluated doc's outcome: the same
     doc across runs (``history``).
  6. ``study_metrics``, ``study_triage`` — per run and task aggregates (``study``).
The per-case arrays of the failure pages (and every relevance vector, for the doc histories)
are read in bulk by ``arrays``.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import Connection, text

from harness_xai.errors import UserError

_REQUIRED_TABLES = ("runs", "task_results", "cases", "token_relevance", "layer_relevance",
                    "case_metrics", "case_labels", "doc_outcomes")

_CASE_COLUMNS = (
    "id, run_id, task, doc_id, doc_hash, filter, metric, status, skip_reason, prompt, pred_index, "
    "gold_index, pred_text, gold_text, position, wrong_token_id, gold_token_id, wrong_token, "
    "gold_token, delta, ll_pred, ll_gold, method, n_tokens, output_type, contrast, ll_error, "
    "aopc, aopc_random, method_params"
)


def check_schema(conn: Connection, db: str) -> None:
    """Raise UserError unless every report table is readable in ``conn``."""
    for table in _REQUIRED_TABLES:
        try:
            # table names come from the fixed tuple above, never from input
            conn.execute(text(f"SELECT 1 FROM {table} WHERE 1 = 0")).fetchall()
        except Exception:  # noqa: BLE001 — any driver error means "not our schema"
            conn.rollback()
            raise UserError(
                f"{db} is not a harness-xai store (table {table!r} is missing); "
                "pass the --db of a `harness-xai run`"
            ) from None


def list_runs(conn: Connection) -> list[dict[str, Any]]:
    """All runs, oldest first."""
    rows = conn.execute(
        text(
            "SELECT id, run_key, created_at, model, model_args, pretrained, revision, model_type, "
            "n_params, tasks, method, lm_eval_version, harness_xai_version, step, config, "
            "model_name FROM runs "
            "ORDER BY id"
        )
    ).mappings()
    return [{**dict(r), "created_at": _timestamp(r["created_at"])} for r in rows]


def _timestamp(value: Any) -> str | None:
    """``YYYY-MM-DD HH:MM:SS`` whatever the driver returns (SQLite: text, others: datetime)."""
    import datetime as dt

    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    return value.strftime("%Y-%m-%d %H:%M:%S")


def task_rows(conn: Connection, run_id: int) -> list[dict[str, Any]]:
    """Per task of a run: result columns plus case counts, sorted by task name.

    Tasks that have cases but no task_results row still appear (with value/n_samples None).
    ``skipped_by_reason`` maps reason → count (reason None shown as "unknown").
    """
    tasks: dict[str, dict[str, Any]] = {}

    def blank(task: str) -> dict[str, Any]:
        return {
            "task": task, "metric": None, "value": None, "n_samples": None, "n_incorrect": None,
            "output_type": None, "n_attributed": 0, "n_skipped": 0, "skipped_by_reason": {},
        }

    for r in conn.execute(
        text(
            "SELECT task, metric, value, n_samples, n_incorrect, output_type "
            "FROM task_results WHERE run_id = :run_id"
        ),
        {"run_id": run_id},
    ).mappings():
        row = blank(r["task"])
        row.update({k: r[k] for k in ("metric", "value", "n_samples", "n_incorrect", "output_type")})
        tasks[r["task"]] = row

    for task, status, reason, n in conn.execute(
        text(
            "SELECT task, status, skip_reason, COUNT(*) FROM cases WHERE run_id = :run_id "
            "GROUP BY task, status, skip_reason"
        ),
        {"run_id": run_id},
    ):
        row = tasks.setdefault(task, blank(task))
        if status == "attributed":
            row["n_attributed"] += int(n)
        else:
            row["n_skipped"] += int(n)
            key = reason or "unknown"
            row["skipped_by_reason"][key] = row["skipped_by_reason"].get(key, 0) + int(n)

    for row in tasks.values():
        row["skipped_by_reason"] = dict(sorted(row["skipped_by_reason"].items()))
    return [tasks[t] for t in sorted(tasks)]


def _delta_key(case: dict[str, Any]) -> tuple[int, float, int, int]:
    """Sort key: delta descending, missing/NaN deltas last, then doc_id, then id."""
    d = case["delta"]
    missing = d is None or (isinstance(d, float) and math.isnan(d))
    return (1 if missing else 0, 0.0 if missing else -float(d), case["doc_id"] or 0, case["id"])


#: per-case metrics shown in the failure table (``case_metrics`` names)
TABLE_METRICS = ("evidence.rank_abs", "concentration.gini", "sink.share")


def run_cases(conn: Connection, run_id: int) -> dict[str, list[dict[str, Any]]]:
    """task → the cases of one run, delta descending (skipped cases, without delta, last).

    Each case carries ``triage`` (its primary triage label or None) and the ``TABLE_METRICS``
    (None when not computed).
    """
    rows = conn.execute(
        text(f"SELECT {_CASE_COLUMNS}, l.label AS triage FROM cases LEFT JOIN case_labels AS l "
             "ON l.case_id = cases.id AND l.kind = 'triage' WHERE run_id = :run_id"),
        {"run_id": run_id},
    ).mappings()
    cases = {int(r["id"]): {**dict(r), **{m: None for m in TABLE_METRICS}} for r in rows}
    names = ", ".join(f"'{m}'" for m in TABLE_METRICS)  # constants, never input
    for case_id, name, value in conn.execute(
        text("SELECT m.case_id, m.name, m.value FROM case_metrics AS m JOIN cases AS c "
             f"ON c.id = m.case_id WHERE c.run_id = :run_id AND m.name IN ({names})"),
        {"run_id": run_id},
    ):
        if int(case_id) in cases:
            cases[int(case_id)][name] = value
    by_task: dict[str, list[dict[str, Any]]] = {}
    for case in sorted(cases.values(), key=_delta_key):
        by_task.setdefault(case["task"], []).append(case)
    return by_task


def case_index(conn: Connection) -> list[dict[str, Any]]:
    """Every case of the store, slim: identity, outcome and triage (for the doc histories)."""
    rows = conn.execute(text(
        "SELECT c.id, c.run_id, c.task, c.doc_id, c.doc_hash, c.filter, c.status, c.delta, "
        "c.n_tokens, c.wrong_token, c.gold_token, l.label AS triage FROM cases AS c "
        "LEFT JOIN case_labels AS l ON l.case_id = c.id AND l.kind = 'triage'")).mappings()
    return [dict(r) for r in rows]


def doc_outcomes(conn: Connection) -> list[dict[str, Any]]:
    """Every evaluated doc's outcome per run (``doc_outcomes``: correct 1/0/NULL)."""
    rows = conn.execute(text(
        "SELECT run_id, task, doc_id, doc_hash, filter, correct FROM doc_outcomes")).mappings()
    return [dict(r) for r in rows]


def study_metrics(conn: Connection) -> list[dict[str, Any]]:
    """Per run, task and metric name: mean and count of the per-case metrics (``case_metrics``)."""
    rows = conn.execute(text(
        "SELECT c.run_id, c.task, m.name, AVG(m.value) AS mean, COUNT(*) AS n FROM case_metrics "
        "AS m JOIN cases AS c ON c.id = m.case_id GROUP BY c.run_id, c.task, m.name")).mappings()
    return [dict(r) for r in rows]


def study_triage(conn: Connection) -> list[dict[str, Any]]:
    """Per run, task and primary triage label: number of cases."""
    rows = conn.execute(text(
        "SELECT c.run_id, c.task, l.label, COUNT(*) AS n FROM case_labels AS l JOIN cases AS c "
        "ON c.id = l.case_id WHERE l.kind = 'triage' GROUP BY c.run_id, c.task, l.label"
    )).mappings()
    return [dict(r) for r in rows]
