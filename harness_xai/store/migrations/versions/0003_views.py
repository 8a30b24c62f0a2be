"""views for common questions: case_overview, token_ranks, segment_shares, faithfulness_summary

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

Plain SQL views (no data), written once in the SQL that DuckDB, SQLite (>= 3.30: window functions,
NULLS LAST) and PostgreSQL all accept: CAST-free arithmetic on DOUBLE columns, no ``::``, no
ROUND(double, n) (PostgreSQL lacks it). The SQL lives here, frozen with the revision; a later
change to a view is a new revision (DROP VIEW + CREATE VIEW).

- ``case_overview``: every case with its run's model identity (pretrained, revision, step,
  n_params): compare one doc (task, doc_id, doc_hash) across models and checkpoints.
- ``token_ranks``: token relevance with ``relevance_rank`` (1 = most relevant, per case) and
  ``share`` = relevance / Σ|relevance| of the case.
- ``segment_shares``: per case and segment label: token count, Σ relevance, Σ|relevance| and
  its ``share`` of the case's Σ|relevance| (unlabelled tokens under 'unlabelled').
- ``faithfulness_summary``: per run, task and method: mean AOPC of the relevance order vs random
  orders and the fraction of cases where the explanation beats random.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

VIEWS = {
    "case_overview": """
SELECT c.id AS case_id, c.run_id, r.run_key, r.pretrained, r.revision, r.step, r.model_type,
       r.n_params, c.task, c.doc_id, c.doc_hash, c.prompt_hash, c.filter, c.metric, c.status,
       c.skip_reason, c.output_type, c.contrast, c.method, c.pred_index, c.gold_index,
       c.pred_text, c.gold_text, c.wrong_token, c.gold_token, c.delta, c.ll_pred, c.ll_gold,
       c.ll_error, c.n_tokens, c.aopc, c.aopc_random
FROM cases AS c JOIN runs AS r ON r.id = c.run_id""",
    "token_ranks": """
SELECT t.case_id, c.run_id, c.task, t.position, t.token_id, t.token, t.segment, t.segment_index,
       t.relevance,
       ROW_NUMBER() OVER (PARTITION BY t.case_id
                          ORDER BY t.relevance DESC NULLS LAST, t.position) AS relevance_rank,
       t.relevance / NULLIF(SUM(ABS(t.relevance)) OVER (PARTITION BY t.case_id), 0) AS share
FROM token_relevance AS t JOIN cases AS c ON c.id = t.case_id""",
    "segment_shares": """
SELECT t.case_id, c.run_id, c.task, COALESCE(t.segment, 'unlabelled') AS segment,
       COUNT(*) AS n_tokens, SUM(t.relevance) AS relevance, SUM(ABS(t.relevance)) AS abs_relevance,
       SUM(ABS(t.relevance)) / NULLIF(MAX(tot.abs_total), 0) AS share
FROM token_relevance AS t
JOIN cases AS c ON c.id = t.case_id
JOIN (SELECT case_id, SUM(ABS(relevance)) AS abs_total FROM token_relevance GROUP BY case_id)
     AS tot ON tot.case_id = t.case_id
GROUP BY t.case_id, c.run_id, c.task, COALESCE(t.segment, 'unlabelled')""",
    "faithfulness_summary": """
SELECT c.run_id, c.task, c.method, COUNT(*) AS n_cases, AVG(c.aopc) AS mean_aopc,
       AVG(c.aopc_random) AS mean_aopc_random, AVG(c.aopc - c.aopc_random) AS mean_gap,
       AVG(CASE WHEN c.aopc > c.aopc_random THEN 1.0 ELSE 0.0 END) AS frac_beats_random
FROM cases AS c
WHERE c.aopc IS NOT NULL
GROUP BY c.run_id, c.task, c.method""",
}


def upgrade() -> None:
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body.strip()}")


def downgrade() -> None:
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW {name}")
