"""Every Eval Ever (EvalEval coalition) export: per run one aggregate record and its samples.

``harness-xai export --format eee --db URL --out DIR`` writes, per run, ``run-<id>.json`` (the
aggregate, ``eval.schema.json`` 0.3.0) and ``run-<id>_samples.jsonl`` (one instance record per
evaluated document and answer filter, ``instance_level_eval.schema.json`` 0.3.0). Steps:

1. ``_runs``, ``_results``, ``_outcomes`` — bound SELECTs of the runs, their task results, and
   every ``doc_outcomes`` row joined to its case (the wrong answers) and the case's most
   relevant token (``token_ranks`` rank 1).
2. ``aggregate`` — model (``model_name`` as id, the full path kept as a detail), lm-eval as the
   library, one evaluation result per task (its decision metric and value).
3. ``instance`` — one record per outcome row: ``sample_id`` = doc id, ``sample_hash`` = lm-eval's
   doc hash, ``evaluation.score``/``is_correct`` from the row. The store keeps the prompt and the
   answers of the wrong answers only: for those, ``input.raw`` is the prompt, ``reference`` the
   gold answer, ``output.raw`` the model's answer (the whole generation when recorded) and the
   explanation goes into ``metadata`` (Δℓ, wrong → gold token, top token, case id); a correctly
   answered document has empty input/output text and ``metadata.text_stored = "false"``. Rows
   without a notion of correct (perplexity: ``correct`` NULL) have no instance score and are
   left out, counted in the summary.
Values under ``metadata`` / ``additional_details`` are strings, as the schema requires.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from harness_xai import __version__

SCHEMA_VERSION = "0.3.0"


def _runs(conn: sa.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(sa.text(
        "SELECT id, run_key, created_at, model, pretrained, model_name, revision, step, n_params, "
        "method, lm_eval_version, config FROM runs ORDER BY id")).mappings()]


def _results(conn: sa.Connection, run_id: int) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(sa.text(
        "SELECT task, metric, value, n_samples, n_incorrect, output_type FROM task_results "
        "WHERE run_id = :r ORDER BY task"), {"r": run_id}).mappings()]


_OUTCOMES = """
SELECT o.task, o.doc_id, o.doc_hash, o.filter, o.metric, o.value, o.correct,
       c.id AS case_id, c.status, c.skip_reason, c.prompt, c.pred_text, c.gold_text, c.delta,
       c.wrong_token, c.gold_token, c.method_params, c.output_type, t.token AS top_token,
       t.position AS top_position
FROM doc_outcomes AS o
LEFT JOIN cases AS c ON c.run_id = o.run_id AND c.task = o.task AND c.doc_id = o.doc_id
     AND c.doc_hash = o.doc_hash AND c.filter = o.filter
LEFT JOIN token_ranks AS t ON t.case_id = c.id AND t.relevance_rank = 1
WHERE o.run_id = :r
ORDER BY o.task, o.doc_id, o.filter"""


def _outcomes(conn: sa.Connection, run_id: int) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(sa.text(_OUTCOMES), {"r": run_id}).mappings()]


def evaluation_id(run: dict[str, Any]) -> str:
    return f"harness-xai/{run['model_name'] or run['pretrained'] or run['model']}/run-{run['id']}"


def _epoch(value: Any) -> str:
    import datetime as dt

    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return "0"
    if value is None:
        return "0"
    return str(int(value.replace(tzinfo=dt.timezone.utc).timestamp()))


def aggregate(run: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Step 2: the run as an ``eval.schema.json`` record."""
    details = {k: str(run[k]) for k in ("pretrained", "revision", "step", "n_params", "method")
               if run.get(k) is not None}
    evals = []
    for r in results:
        if r["value"] is None:
            continue
        evals.append({
            "evaluation_result_id": f"{r['task']}/{r['metric']}",
            "evaluation_name": r["task"],
            "source_data": {"dataset_name": r["task"], "source_type": "other",
                            "additional_details": {"harness": "lm-evaluation-harness task"}},
            "metric_config": {"metric_id": str(r["metric"]), "metric_name": str(r["metric"]),
                              "lower_is_better": False, "score_type": "continuous",
                              "min_score": 0.0, "max_score": 1.0},
            "score_details": {"score": float(r["value"]), "details": {
                k: str(r[k]) for k in ("n_samples", "n_incorrect", "output_type")
                if r[k] is not None}},
        })
    return {
        "schema_version": SCHEMA_VERSION,
        "evaluation_id": evaluation_id(run),
        "retrieved_timestamp": _epoch(run["created_at"]),
        "source_metadata": {"source_name": "harness-xai", "source_type": "evaluation_run",
                            "source_organization_name": "local harness-xai run",
                            "evaluator_relationship": "other"},
        "model_info": {"name": str(run["model_name"] or run["pretrained"] or run["model"]),
                       "id": str(run["model_name"] or run["pretrained"] or run["model"]),
                       "inference_platform": str(run["model"]),
                       "additional_details": {"deployment_type": "self_deployed",
                                              "model_availability": "unknown", **details}},
        "eval_library": {"name": "lm_eval", "version": str(run["lm_eval_version"] or "unknown"),
                         "additional_details": {"explainer": f"harness-xai {__version__}"}},
        "evaluation_results": evals,
    }


def _generation(method_params: str | None) -> str | None:
    try:
        notes = (json.loads(method_params) if method_params else {}).get("contrast", {})
    except (TypeError, ValueError, AttributeError):
        return None
    value = notes.get("generation") if isinstance(notes, dict) else None
    return value if isinstance(value, str) else None


def instance(run: dict[str, Any], row: dict[str, Any]) -> dict[str, Any] | None:
    """Step 3: one ``instance_level_eval.schema.json`` record, or None without a score."""
    if row["correct"] is None:
        return None
    score = float(row["value"]) if row["value"] is not None else float(row["correct"])
    stored = row["case_id"] is not None
    meta = {"filter": str(row["filter"]), "metric": str(row["metric"]),
            "harness_xai_run_id": str(run["id"]), "text_stored": "true" if stored else "false"}
    answer = []
    output = []
    if stored:
        generation = _generation(row["method_params"])
        output = [generation if generation is not None else (row["pred_text"] or "")]
        answer = [{"turn_idx": 0, "source": "output.raw", "extracted_value": row["pred_text"] or "",
                   "extraction_method": f"lm-eval filter {row['filter']}"
                   if row["output_type"] == "generate_until" else "argmax log-likelihood",
                   "is_terminal": True}]
        meta.update({"harness_xai_case_id": str(row["case_id"]),
                     "harness_xai_status": str(row["status"])})
        for key, col in (("delta", "delta"), ("wrong_token", "wrong_token"),
                         ("gold_token", "gold_token"), ("skip_reason", "skip_reason"),
                         ("top_token", "top_token"), ("top_token_position", "top_position")):
            if row[col] is not None:
                meta[f"harness_xai_{key}"] = str(row[col])
    return {
        "schema_version": SCHEMA_VERSION,
        "evaluation_id": evaluation_id(run),
        "model_id": str(run["model_name"] or run["pretrained"] or run["model"]),
        "evaluation_name": row["task"],
        "evaluation_result_id": f"{row['task']}/{row['metric']}",
        "sample_id": str(row["doc_id"]),
        "sample_hash": row["doc_hash"],
        "interaction_type": "single_turn",
        "input": {"raw": (row["prompt"] or "") if stored else "",
                  "reference": [row["gold_text"]] if stored and row["gold_text"] is not None else []},
        "output": {"raw": output},
        "messages": None,
        "answer_attribution": answer,
        "evaluation": {"score": score, "is_correct": bool(row["correct"])},
        "metadata": meta,
    }


def export_eee(conn: sa.Connection, out: Path) -> dict[str, int]:
    """Write ``run-<id>.json`` and ``run-<id>_samples.jsonl`` per run into ``out`` (each written
    under a temporary name, then renamed); {"runs", "instances", "unscored"}."""
    counts = {"runs": 0, "instances": 0, "unscored": 0}
    out.mkdir(parents=True, exist_ok=True)
    for run in _runs(conn):
        rid = int(run["id"])
        lines = []
        for row in _outcomes(conn, rid):
            record = instance(run, row)
            if record is None:
                counts["unscored"] += 1
                continue
            lines.append(json.dumps(record, ensure_ascii=False, sort_keys=True))
        for name, text in ((f"run-{rid}_samples.jsonl", "".join(f"{l}\n" for l in lines)),
                           (f"run-{rid}.json", json.dumps(aggregate(run, _results(conn, rid)),
                                                          ensure_ascii=False, indent=1) + "\n")):
            tmp = out / f".{name}.part-{os.getpid()}"
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(out / name)
        counts["runs"] += 1
        counts["instances"] += len(lines)
    return counts
