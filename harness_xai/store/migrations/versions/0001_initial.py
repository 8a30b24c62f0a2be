"""initial schema: runs, task_results, cases, token_relevance, layer_relevance

Revision ID: 0001
Revises:
Create Date: 2026-11-24

Hand-written (DuckDB reflection is broken). Surrogate keys of runs/cases come from sequences on
backends that have them (DuckDB, PostgreSQL: ``INTEGER DEFAULT nextval(...)``; ``autoincrement``
is off there, or the PostgreSQL compiler that duckdb-engine uses would emit SERIAL). SQLite has no
sequences: ``INTEGER PRIMARY KEY`` is the rowid alias and numbers rows itself.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SEQUENCES = ("runs_id_seq", "cases_id_seq")


def _id_column(seq_name: str) -> sa.Column:
    """Integer surrogate key fed by ``seq_name`` where the backend has sequences."""
    if op.get_bind().dialect.supports_sequences:
        op.execute(sa.schema.CreateSequence(sa.Sequence(seq_name)))
        return sa.Column(
            "id", sa.Integer, primary_key=True, autoincrement=False,
            server_default=sa.text(f"nextval('{seq_name}')"),
        )
    return sa.Column("id", sa.Integer, primary_key=True)


def upgrade() -> None:
    op.create_table(
        "runs",
        _id_column("runs_id_seq"),
        sa.Column("run_key", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime),
        sa.Column("model", sa.Text),
        sa.Column("model_args", sa.Text),
        sa.Column("pretrained", sa.Text),
        sa.Column("revision", sa.Text),
        sa.Column("model_type", sa.Text),
        sa.Column("n_params", sa.BigInteger),
        sa.Column("tasks", sa.Text),  # JSON list
        sa.Column("method", sa.Text),
        sa.Column("lm_eval_version", sa.Text),
        sa.Column("harness_xai_version", sa.Text),
        sa.Column("config", sa.Text),  # JSON object
        sa.UniqueConstraint("run_key", name="uq_runs_run_key"),
    )
    op.create_table(
        "task_results",
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("task", sa.Text, nullable=False),
        sa.Column("metric", sa.Text),
        sa.Column("value", sa.Double),
        sa.Column("n_samples", sa.Integer),
        sa.Column("n_incorrect", sa.Integer),
        sa.Column("output_type", sa.Text),
        sa.PrimaryKeyConstraint("run_id", "task", name="pk_task_results"),
    )
    op.create_table(
        "cases",
        _id_column("cases_id_seq"),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id")),
        sa.Column("task", sa.Text),
        sa.Column("doc_id", sa.Integer),
        sa.Column("doc_hash", sa.Text),
        sa.Column("prompt_hash", sa.Text),
        sa.Column("target_hash", sa.Text),
        sa.Column("filter", sa.Text),
        sa.Column("metric", sa.Text),
        sa.Column("status", sa.Text),
        sa.Column("skip_reason", sa.Text),
        sa.Column("prompt", sa.Text),
        sa.Column("pred_index", sa.Integer),
        sa.Column("gold_index", sa.Integer),
        sa.Column("pred_text", sa.Text),
        sa.Column("gold_text", sa.Text),
        sa.Column("position", sa.Integer),
        sa.Column("wrong_token_id", sa.Integer),
        sa.Column("gold_token_id", sa.Integer),
        sa.Column("wrong_token", sa.Text),
        sa.Column("gold_token", sa.Text),
        sa.Column("delta", sa.Double),
        sa.Column("ll_pred", sa.Double),
        sa.Column("ll_gold", sa.Double),
        sa.Column("method", sa.Text),
        sa.Column("n_tokens", sa.Integer),
        sa.UniqueConstraint("run_id", "task", "doc_id", "doc_hash", "filter", name="uq_cases_unit"),
    )
    op.create_table(
        "token_relevance",
        sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("token_id", sa.Integer),
        sa.Column("token", sa.Text),
        sa.Column("relevance", sa.Double),
        sa.PrimaryKeyConstraint("case_id", "position", name="pk_token_relevance"),
    )
    op.create_table(
        "layer_relevance",
        sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), nullable=False),
        sa.Column("layer", sa.Integer, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("relevance", sa.Double),
        sa.PrimaryKeyConstraint("case_id", "layer", "position", name="pk_layer_relevance"),
    )


def downgrade() -> None:
    for table in ("layer_relevance", "token_relevance", "cases", "task_results", "runs"):
        op.drop_table(table)
    if op.get_bind().dialect.supports_sequences:
        for seq_name in SEQUENCES:
            op.execute(sa.schema.DropSequence(sa.Sequence(seq_name)))
