"""every evaluated document's outcome per run: doc_outcomes

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

Hand-written and additive. ``cases`` holds only the incorrect responses, so a document answered
correctly could not be told apart from one a run never evaluated (runs use different --limit).
``doc_outcomes(run_id, task, doc_id, doc_hash, filter, metric, value, correct)`` holds one row per
logged lm-eval sample (document × filter): ``metric`` = the decision metric (acc, acc_norm,
exact_match), ``value`` = its per-sample value, ``correct`` = 1/0 (0 exactly for the samples that
became cases), NULL where the task has no notion of correct (perplexity). PK (run_id, task,
doc_id, doc_hash, filter): the unit key of ``cases``, so a case joins its outcome row.
The foreign key to ``runs.id`` is declared at CREATE time (DuckDB cannot ADD FOREIGN KEY later;
``runs`` is already referenced by ``task_results`` and ``cases``, so no ALTER of ``runs`` that
DuckDB would refuse is added by this revision). No extra index: DuckDB maintains every ART index
on insert, and the key's run_id prefix serves the per-run reads. Downgrade drops the table on
every backend (nothing references it).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "doc_outcomes",
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("task", sa.Text, nullable=False),
        sa.Column("doc_id", sa.Integer, nullable=False),
        sa.Column("doc_hash", sa.Text, nullable=False),
        sa.Column("filter", sa.Text, nullable=False),
        sa.Column("metric", sa.Text),  # decision metric, e.g. 'acc', 'exact_match'
        sa.Column("value", sa.Double),  # its per-sample value
        sa.Column("correct", sa.Integer),  # 1 / 0 / NULL (no notion of correct)
        sa.PrimaryKeyConstraint("run_id", "task", "doc_id", "doc_hash", "filter",
                                name="pk_doc_outcomes"),
    )


def downgrade() -> None:
    op.drop_table("doc_outcomes")
