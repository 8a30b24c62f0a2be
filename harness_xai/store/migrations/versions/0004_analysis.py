"""per-case analysis: case_metrics, case_labels (triage), token_relevance.evidence

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

Hand-written and additive (``harness_xai.analysis`` computes what these hold):
1. ``case_metrics(case_id, name, value)``: one row per metric of a case (``segment.question.total``,
   ``concentration.gini``, ``evidence.rank_abs``, …), PK (case_id, name). A long table, not one
   column per metric: the set of metrics grows (per segment, per layer) without migrations.
2. ``case_labels(case_id, kind, label)``: ``kind = 'triage'`` holds the primary triage label (one
   row per analysed case), ``kind = 'flag'`` one row per rule that fired; PK (case_id, kind,
   label). A table rather than a ``cases.triage`` column: DuckDB cannot drop a column of a table
   other tables reference (``cases``), so a column could not be downgraded cleanly there.
3. ``token_relevance.evidence INTEGER``: 1 where the token is evidence the answer needs (the
   doc's ``evidence_span``), 0 elsewhere, NULL for cases without known evidence. Plain nullable
   ADD COLUMN (existing rows read NULL); ``token_relevance`` is referenced by no other table, so
   the downgrade drops it on every backend.
Both tables declare their foreign key at CREATE time (DuckDB cannot ADD FOREIGN KEY later).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _add_column(table: str, column: sa.Column) -> None:
    """ADD COLUMN unless present (idempotent on DuckDB like 0002's: a re-upgrade after a partial
    downgrade must not fail)."""
    bind = op.get_bind()
    if bind.dialect.name == "duckdb":
        present = bind.execute(
            sa.text("SELECT count(*) FROM information_schema.columns "
                    "WHERE table_schema = 'main' AND table_name = :t AND column_name = :c"),
            {"t": table, "c": column.name},
        ).scalar()
        if present:
            return
    op.add_column(table, column)


def upgrade() -> None:
    op.create_table(
        "case_metrics",
        sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("value", sa.Double),
        sa.PrimaryKeyConstraint("case_id", "name", name="pk_case_metrics"),
    )
    op.create_table(
        "case_labels",
        sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),  # 'triage' | 'flag'
        sa.Column("label", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("case_id", "kind", "label", name="pk_case_labels"),
    )
    _add_column("token_relevance", sa.Column("evidence", sa.Integer))


def downgrade() -> None:
    op.drop_column("token_relevance", "evidence")
    op.drop_table("case_labels")
    op.drop_table("case_metrics")
