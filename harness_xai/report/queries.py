"""Read-only SQL queries behind the HTML report.

Every query is a SQLAlchemy Core ``text()`` statement with bound parameters; no benchmark text or
user input is ever formatted into SQL. Rows come back as plain dicts / numpy arrays so the renderer
never touches SQLAlchemy.

Steps used by the renderer:
  1. ``check_schema`` — fail with a UserError when the database is not a harness-xai store.
  2. ``list_runs`` — one dict per run, oldest first.
  3. ``task_rows`` — per run, task results merged with case counts (attributed / skipped by reason).
  4. ``task_cases`` — per (run, task), the failure rows, sorted by delta descending (NULLs last).
  5. ``case_detail`` — one case with its token relevance (ordered by position) and its
     layer × position relevance matrix.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sqlalchemy import Connection, text

from harness_xai.errors import UserError

_REQUIRED_TABLES = ("runs", "task_results", "cases", "token_relevance", "layer_relevance")

_CASE_COLUMNS = (
    "id, run_id, task, doc_id, doc_hash, filter, metric, status, skip_reason, prompt, pred_index, "
    "gold_index, pred_text, gold_text, position, wrong_token_id, gold_token_id, wrong_token, "
    "gold_token, delta, ll_pred, ll_gold, method, n_tokens, output_type, contrast, ll_error, "
    "aopc, aopc_random"
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
            "n_params, tasks, method, lm_eval_version, harness_xai_version, step FROM runs ORDER BY id"
        )
    ).mappings()
    return [dict(r) for r in rows]


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


def task_cases(conn: Connection, run_id: int, task: str) -> list[dict[str, Any]]:
    """The cases of one (run, task), delta descending (skipped cases, without delta, last)."""
    rows = conn.execute(
        text(f"SELECT {_CASE_COLUMNS} FROM cases WHERE run_id = :run_id AND task = :task"),
        {"run_id": run_id, "task": task},
    ).mappings()
    return sorted((dict(r) for r in rows), key=_delta_key)


def case_detail(conn: Connection, case_id: int) -> dict[str, Any]:
    """One case row plus ``tokens`` (list of dicts ordered by position) and ``layers``.

    ``layers`` is a float64 array of shape (n_layers + 1, n_positions) indexed by layer and by the
    rank of the position among the case's token positions, or None when no layer rows exist.
    Missing (layer, position) cells are NaN.
    """
    row = conn.execute(
        text(f"SELECT {_CASE_COLUMNS} FROM cases WHERE id = :case_id"), {"case_id": case_id}
    ).mappings().one()
    case = dict(row)
    tokens = [
        dict(r)
        for r in conn.execute(
            text(
                "SELECT position, token_id, token, relevance, segment, segment_index "
                "FROM token_relevance "
                "WHERE case_id = :case_id ORDER BY position"
            ),
            {"case_id": case_id},
        ).mappings()
    ]
    case["tokens"] = tokens

    cells = conn.execute(
        text(
            "SELECT layer, position, relevance FROM layer_relevance "
            "WHERE case_id = :case_id ORDER BY layer, position"
        ),
        {"case_id": case_id},
    ).fetchall()
    if not cells:
        case["layers"] = None
        case["layer_ids"] = []
        return case
    layer_ids = sorted({int(c[0]) for c in cells})
    positions = sorted({int(c[1]) for c in cells} | {int(t["position"]) for t in tokens})
    col = {p: i for i, p in enumerate(positions)}
    li = {l: i for i, l in enumerate(layer_ids)}
    layers = np.full((len(layer_ids), len(positions)), np.nan)  # (n_layers + 1, n_positions)
    for layer, pos, rel in cells:
        layers[li[int(layer)], col[int(pos)]] = np.nan if rel is None else float(rel)
    case["layers"] = layers
    case["layer_ids"] = layer_ids
    case["layer_positions"] = positions
    return case


def _matrix(cells: list[tuple], rows: list[int], cols: list[int]) -> np.ndarray:
    """Dense (len(rows), len(cols)) float matrix from (row, col, value) cells; NaN where absent."""
    ri = {r: i for i, r in enumerate(rows)}
    ci = {c: i for i, c in enumerate(cols)}
    out = np.full((len(rows), len(cols)), np.nan)  # (n_rows, n_cols)
    for r, c, v in cells:
        out[ri[int(r)], ci[int(c)]] = np.nan if v is None else float(v)
    return out


def case_internals(conn: Connection, case_id: int) -> dict[str, Any]:
    """Internal states, heads, faithfulness curve and graph of one case (each may be empty).

    - ``states``: list of {"kind", "layers", "positions", "matrix" (n_layers, n_positions)}
    - ``heads``: {"layers", "heads", "matrix" (n_layers, n_heads)} summed over positions, or None
    - ``faithfulness``: {"fractions", "n_removed", "relevance", "random"} or None
    - ``graph``: {"node_layers", "nodes", "edges", "metrics", "params", ...} or None
    """
    import json

    params = {"case_id": case_id}
    states = []
    rows = conn.execute(text(
        "SELECT kind, layer, position, relevance FROM state_relevance WHERE case_id = :case_id "
        "ORDER BY kind, layer, position"), params).fetchall()
    for kind in sorted({r[0] for r in rows}, key=lambda k: ("mid", "attn", "mlp").index(k)
                       if k in ("mid", "attn", "mlp") else 9):
        cells = [(r[1], r[2], r[3]) for r in rows if r[0] == kind]
        layers = sorted({int(c[0]) for c in cells})
        positions = sorted({int(c[1]) for c in cells})
        states.append({"kind": kind, "layers": layers, "positions": positions,
                       "matrix": _matrix(cells, layers, positions)})
    head_cells = conn.execute(text(
        "SELECT layer, head, SUM(relevance) FROM head_relevance WHERE case_id = :case_id "
        "GROUP BY layer, head ORDER BY layer, head"), params).fetchall()
    heads = None
    if head_cells:
        layers = sorted({int(c[0]) for c in head_cells})
        head_ids = sorted({int(c[1]) for c in head_cells})
        heads = {"layers": layers, "heads": head_ids,
                 "matrix": _matrix(head_cells, layers, head_ids)}
    curve = conn.execute(text(
        "SELECT fraction, n_removed, delta_relevance, delta_random FROM faithfulness "
        "WHERE case_id = :case_id ORDER BY step"), params).fetchall()
    faith = None
    if curve:
        faith = {"fractions": [float(r[0]) for r in curve], "n_removed": [int(r[1]) for r in curve],
                 "relevance": [None if r[2] is None else float(r[2]) for r in curve],
                 "random": [None if r[3] is None else float(r[3]) for r in curve]}
    graph = None
    head = conn.execute(text(
        "SELECT node_layers, n_nodes, n_edges, mass_kept, formation_layer, params, metrics "
        "FROM graphs WHERE case_id = :case_id"), params).mappings().first()
    if head is not None:
        nodes = [(int(r[0]), int(r[1]), float(r[2] or 0.0)) for r in conn.execute(text(
            "SELECT layer, position, relevance FROM graph_nodes WHERE case_id = :case_id"),
            params)]
        edges = [(int(r[0]), int(r[1]), int(r[2]), int(r[3]), float(r[4] or 0.0))
                 for r in conn.execute(text(
                     "SELECT source_layer, source_position, target_layer, target_position, weight "
                     "FROM graph_edges WHERE case_id = :case_id"), params)]
        graph = {"node_layers": json.loads(head["node_layers"] or "[]"), "nodes": nodes,
                 "edges": edges, "n_nodes": head["n_nodes"], "n_edges": head["n_edges"],
                 "mass_kept": head["mass_kept"], "formation_layer": head["formation_layer"],
                 "params": json.loads(head["params"] or "{}"),
                 "metrics": json.loads(head["metrics"] or "{}")}
    return {"states": states, "heads": heads, "faithfulness": faith, "graph": graph}
