"""relevance per routed expert (mixture of experts): expert_relevance

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-04

Hand-written and additive. ``expert_relevance(case_id, layer, expert, position, relevance)``:
for mixture-of-experts models, the relevance of each routed expert's weighted output
``w_e · E_e(x)`` at each token, stored only where the expert was selected (non-zero), so
rows = layers × tokens × top-k at most (fewer than ``head_relevance``'s layers × heads × tokens
whenever top-k ≤ heads). Dense models write no rows. The foreign key to ``cases.id`` is declared
at CREATE time (DuckDB cannot ADD FOREIGN KEY later). Downgrade drops the table on every
backend (nothing references it). down_revision is 0005 on this branch; the lead re-chains it
after 0006 at merge.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "expert_relevance",
        sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), nullable=False),
        sa.Column("layer", sa.Integer, nullable=False),  # 1-based block
        sa.Column("expert", sa.Integer, nullable=False),  # 0-based
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("relevance", sa.Double),
        sa.PrimaryKeyConstraint("case_id", "layer", "expert", "position",
                                name="pk_expert_relevance"),
    )


def downgrade() -> None:
    op.drop_table("expert_relevance")
