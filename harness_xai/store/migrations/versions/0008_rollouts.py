"""first-error rollouts of generations: rollouts

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04

Hand-written and additive. ``rollouts(case_id, rollout, position, model_token_id,
model_token, alternative_token_id, alternative_token, rank, margin, correct, n_tokens, text)``: every rollout
``--xai-rollouts`` tried for a case (``contrast.first_error``), in the order tried; ``correct``
is 1 for the rollout that made the sample correct (the located first error), 0 otherwise; a
skipped case keeps its rollouts too. The foreign key to ``cases.id`` is declared at CREATE time
(DuckDB cannot ADD FOREIGN KEY later). Downgrade drops the table on every backend (nothing
references it).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), nullable=False),
        sa.Column("rollout", sa.Integer, nullable=False),  # 0-based, in the order tried
        sa.Column("position", sa.Integer),  # index into the generated tokens
        sa.Column("model_token_id", sa.Integer),
        sa.Column("model_token", sa.Text),
        sa.Column("alternative_token_id", sa.Integer),
        sa.Column("alternative_token", sa.Text),
        sa.Column("rank", sa.Integer),
        sa.Column("margin", sa.Double),
        sa.Column("correct", sa.Integer),
        sa.Column("n_tokens", sa.Integer),
        sa.Column("text", sa.Text),
        sa.PrimaryKeyConstraint("case_id", "rollout", name="pk_rollouts"),
    )


def downgrade() -> None:
    op.drop_table("rollouts")
