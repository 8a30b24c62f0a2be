"""Eleven example queries that answer real questions about a store, and the README section on them.

Each ``Example`` is one read-only statement in the SQL that DuckDB, SQLite and PostgreSQL all
accept (views from migration 0003, bound ``:name`` parameters, no ``::`` casts, CAST(… AS DOUBLE
PRECISION) where an integer average would be NUMERIC on PostgreSQL). tests/test_store_sql.py runs
every one on all three backends against a populated store and checks they agree, and checks that
README.md documents exactly these queries.

``python -m harness_xai.store.examples`` prints the README section: the table of tables, the
views, and the eleven queries with the `harness-xai sql` command line for each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    name: str
    question: str
    sql: str
    params: dict[str, Any] = field(default_factory=dict)


EXAMPLES: tuple[Example, ...] = (
    Example("worst_failures", "Which failures are the most confident (largest Δℓ = logit[wrong] − logit[gold])?", """
SELECT task, doc_id, model_name, revision, wrong_token, gold_token, delta
FROM case_overview
WHERE status = 'attributed'
ORDER BY delta DESC, case_id
LIMIT :n""", {"n": 10}),
    Example("top_tokens_per_task", "Which tokens are most often the single most relevant input token, per task?", """
SELECT task, token, COUNT(*) AS n_cases
FROM token_ranks
WHERE relevance_rank = 1
GROUP BY task, token
ORDER BY task, n_cases DESC, token"""),
    Example("segment_shares_by_size", "How much relevance does each prompt segment get, by model size?", """
SELECT r.n_params, s.segment, AVG(s.share) AS mean_share, COUNT(*) AS n_cases
FROM segment_shares AS s JOIN runs AS r ON r.id = s.run_id
GROUP BY r.n_params, s.segment
ORDER BY r.n_params NULLS LAST, s.segment"""),
    Example("doc_trajectory", "How does one document fare across models and checkpoints?", """
SELECT r.model_name, r.step, r.revision, o.filter,
       CASE o.correct WHEN 1 THEN 'correct' WHEN 0 THEN 'wrong' ELSE 'unscored' END AS outcome,
       c.status, c.pred_text, c.gold_text, c.delta
FROM doc_outcomes AS o
JOIN runs AS r ON r.id = o.run_id
LEFT JOIN cases AS c ON c.run_id = o.run_id AND c.task = o.task AND c.doc_id = o.doc_id
     AND c.doc_hash = o.doc_hash AND c.filter = o.filter
WHERE o.task = :task AND o.doc_id = :doc_id
ORDER BY r.model_name, r.step NULLS LAST, r.id, o.filter""", {"task": "xai_kv", "doc_id": 1}),
    Example("faithfulness_by_task", "Do the explanations beat random token orders (AOPC), per task?", """
SELECT r.model_name, r.step, f.task, f.method, f.n_cases, f.mean_aopc, f.mean_aopc_random,
       f.frac_beats_random
FROM faithfulness_summary AS f JOIN runs AS r ON r.id = f.run_id
ORDER BY f.task, r.model_name, r.step NULLS LAST"""),
    Example("accuracy_and_failures", "Per run and task: the metric, and how many failures were attributed or skipped?", """
SELECT r.model_name, r.step, t.task, t.metric, t.value, t.n_samples, t.n_incorrect,
       SUM(CASE WHEN c.status = 'attributed' THEN 1 ELSE 0 END) AS n_attributed,
       SUM(CASE WHEN c.status = 'skipped' THEN 1 ELSE 0 END) AS n_skipped
FROM task_results AS t
JOIN runs AS r ON r.id = t.run_id
LEFT JOIN cases AS c ON c.run_id = t.run_id AND c.task = t.task
GROUP BY r.model_name, r.step, t.task, t.metric, t.value, t.n_samples, t.n_incorrect
ORDER BY r.model_name, r.step NULLS LAST, t.task"""),
    Example("skip_reasons", "Why were failures not attributed?", """
SELECT task, skip_reason, COUNT(*) AS n_cases
FROM cases
WHERE status = 'skipped'
GROUP BY task, skip_reason
ORDER BY n_cases DESC, task, skip_reason"""),
    Example("top_heads", "Which attention heads carry the most relevance, per task?", """
SELECT c.task, h.layer, h.head, SUM(ABS(h.relevance)) AS abs_relevance,
       COUNT(DISTINCT h.case_id) AS n_cases
FROM head_relevance AS h JOIN cases AS c ON c.id = h.case_id
GROUP BY c.task, h.layer, h.head
ORDER BY abs_relevance DESC, c.task, h.layer, h.head
LIMIT :n""", {"n": 10}),
    Example("graph_formation", "At which layer does the decision form, and how much relevance do pruned graphs keep?", """
SELECT c.task, r.n_params, COUNT(*) AS n_graphs,
       AVG(CAST(g.formation_layer AS DOUBLE PRECISION)) AS mean_formation_layer,
       AVG(g.mass_kept) AS mean_mass_kept, AVG(CAST(g.n_edges AS DOUBLE PRECISION)) AS mean_edges
FROM graphs AS g
JOIN cases AS c ON c.id = g.case_id
JOIN runs AS r ON r.id = c.run_id
GROUP BY c.task, r.n_params
ORDER BY c.task, r.n_params NULLS LAST"""),
    Example("hard_docs", "Which documents does every run that evaluated the task get wrong?", """
SELECT c.task, c.doc_id, COUNT(DISTINCT c.run_id) AS n_runs_failed, AVG(c.delta) AS mean_delta
FROM cases AS c
GROUP BY c.task, c.doc_id
HAVING COUNT(DISTINCT c.run_id) = (SELECT COUNT(*) FROM task_results AS t WHERE t.task = c.task)
ORDER BY mean_delta DESC NULLS LAST, c.task, c.doc_id"""),
    Example("checkpoint_flips", "Which documents flipped from wrong to right between consecutive checkpoints of one model?", """
SELECT DISTINCT r2.model_name AS model_name, r2.pretrained AS pretrained, o2.task AS task, o2.doc_id AS doc_id,
       o2.filter AS answer_filter, r1.step AS wrong_at_step, r2.step AS right_at_step
FROM doc_outcomes AS o2
JOIN runs AS r2 ON r2.id = o2.run_id
JOIN doc_outcomes AS o1 ON o1.task = o2.task AND o1.doc_id = o2.doc_id
     AND o1.doc_hash = o2.doc_hash AND o1.filter = o2.filter
JOIN runs AS r1 ON r1.id = o1.run_id AND r1.pretrained = r2.pretrained AND r1.step < r2.step
WHERE o1.correct = 0 AND o2.correct = 1
  AND NOT EXISTS (SELECT 1 FROM doc_outcomes AS o3 JOIN runs AS r3 ON r3.id = o3.run_id
                  WHERE r3.pretrained = r2.pretrained AND r3.step > r1.step AND r3.step < r2.step
                    AND o3.task = o2.task AND o3.doc_id = o2.doc_id
                    AND o3.doc_hash = o2.doc_hash AND o3.filter = o2.filter)
ORDER BY model_name, pretrained, task, doc_id, answer_filter, wrong_at_step"""),
)

TABLES = (
    ("runs", "id", "one `harness-xai run`: run_key, model, pretrained (hub id or path), model_name "
                   "(short: hub id or directory name), revision, step, model_type, n_params, tasks, "
                   "method, versions, config"),
    ("task_results", "run_id, task", "lm-eval's metric per task, n_samples, n_incorrect, output_type"),
    ("doc_outcomes", "run_id, task, doc_id, doc_hash, filter",
     "every evaluated document (× filter): decision metric, its per-sample value, correct (1/0 = "
     "not a case / a case; NULL when the task has no notion of correct, e.g. perplexity)"),
    ("cases", "id; unique (run_id, task, doc_id, doc_hash, filter)",
     "one wrong answer: status/skip_reason, hashes, prompt, predicted vs gold, contrast tokens, delta (Δℓ), "
     "ll_pred/ll_gold/ll_error, method + method_params (JSON), n_tokens, aopc/aopc_random"),
    ("token_relevance", "case_id, position", "token id and text, relevance, segment label and index, "
                                             "evidence (1/0; NULL when the doc records no evidence)"),
    ("layer_relevance", "case_id, layer, position", "residual-stream relevance; layer 0 = embeddings"),
    ("state_relevance", "case_id, kind, layer, position", "kind mid/attn/mlp; layer 1..L = block"),
    ("head_relevance", "case_id, layer, head, position", "relevance of each attention head's output"),
    ("faithfulness", "case_id, step", "deletion curve: fraction, n_removed, Δℓ after removing top vs random tokens"),
    ("graphs", "case_id", "pruned attribution graph: node_layers (JSON), n_nodes, n_edges, mass_kept, "
                          "formation_layer, params/metrics (JSON)"),
    ("graph_nodes", "case_id, layer, position", "kept nodes (layer indexes graphs.node_layers) and relevance"),
    ("graph_edges", "case_id, source_layer, source_position, target_layer, target_position", "edge weights"),
    ("case_metrics", "case_id, name", "per-case analysis metrics (segment totals, concentration, position "
                                      "and layer profile, evidence rank; see harness_xai.analysis)"),
    ("case_labels", "case_id, kind, label", "triage: kind 'triage' = primary label, kind 'flag' = each rule that fired"),
)

VIEWS = (
    ("case_overview", "every case with its run's model identity (pretrained, model_name, revision, step, n_params)"),
    ("token_ranks", "token relevance with relevance_rank (1 = most relevant in the case) and share of Σ abs(relevance)"),
    ("segment_shares", "per case and segment: n_tokens, Σ relevance, Σ abs(relevance) and its share"),
    ("faithfulness_summary", "per run, task and method: mean AOPC vs random orders, fraction beating random"),
)


def sql_block(example: Example) -> str:
    """The fenced SQL block README.md shows for ``example`` (first line names it)."""
    return f"```sql\n-- {example.name}: {example.question}\n{example.sql.strip()}\n```"


def markdown() -> str:
    """The README section: tables, views, and the example queries."""
    out = ["## The result store", "",
           "Every `harness-xai run --attribute` writes into one database (DuckDB file by default; "
           "SQLite file or PostgreSQL by URL). `harness-xai db upgrade|current|history --db URL` manages "
           "the schema; `harness-xai sql --db URL \"SELECT …\"` queries it read-only (`--format "
           "table|csv|json|parquet`, `-p name=value` binds `:name`); `harness-xai export --format parquet "
           "--db URL --out DIR` dumps every table;\n`--format eee` writes per run an "
           "[Every Eval Ever](https://github.com/evaleval/every_eval_ever)\naggregate record "
           "(`run-<id>.json`) and one instance record per evaluated document and filter\n"
           "(`run-<id>_samples.jsonl`; schema 0.3.0; the explanation — Δℓ, wrong → gold token, top "
           "token — in\neach failure's `metadata`; correctly answered documents carry no text, the "
           "store keeps the text of\nfailures only); `--format graph-json [--case ID]` writes each "
           "case's attribution graph as the JSON\ncircuit-tracer writes and Neuronpedia's graph viewer "
           "reads (`case-<id>.graph.json`: residual-state\nnodes, the embedding layer as `E`, one logit "
           "node for Δℓ). Both are validated in the tests against\nthe schemas the two projects "
           "publish.", "",
           "| table | key | holds |", "|---|---|---|"]
    out += [f"| `{name}` | {key} | {holds} |" for name, key, holds in TABLES]
    out += ["", "Every table below `cases` references `cases.id`; a case and all its rows are written in one "
            "transaction. Compare one document across models and checkpoints by (task, doc_id, doc_hash); "
            "`doc_outcomes` says whether a run evaluated it at all and got it right.",
            "", "| view | answers |", "|---|---|"]
    out += [f"| `{name}` | {what} |" for name, what in VIEWS]
    out += ["", "#### Example queries", "",
            "Each runs on DuckDB, SQLite and PostgreSQL alike (a test runs them all on all three). Save one "
            "to `q.sql` and run `harness-xai sql --db demo/xai.duckdb -p n=10 - < q.sql` (`-` reads the "
            "query from stdin; `-p` binds the `:name` parameters listed under it).", ""]
    for i, ex in enumerate(EXAMPLES, 1):
        out += [f"{i}. {ex.question}", "", sql_block(ex), ""]
        if ex.params:
            out += [f"   Parameters: {', '.join(f'`-p {k}={v}`' for k, v in ex.params.items())}", ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
