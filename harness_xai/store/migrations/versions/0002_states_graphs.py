"""internal states, heads, faithfulness curves, graphs, token segments, checkpoint step

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

Hand-written and additive (DuckDB reflection is broken, no autogenerate):
1. ``runs.step``; ``cases.output_type, contrast, ll_error, method_params (JSON), aopc,
   aopc_random``; ``token_relevance.segment, segment_index`` — plain ADD COLUMN, nullable, no
   defaults, so existing rows read NULL and no table is rewritten.
2. New tables ``state_relevance``, ``head_relevance``, ``faithfulness``, ``graphs``,
   ``graph_nodes``, ``graph_edges``, each keyed by ``cases.id`` (FK declared at CREATE time: DuckDB
   cannot ADD FOREIGN KEY later).
Downgrade drops the new tables (children first) and then the added columns (SQLite >= 3.35 and
PostgreSQL drop them all). DuckDB limit: it cannot alter a table that another table references by
foreign key ("Dependency Error: Cannot alter entry"), so on DuckDB the downgrade drops only
``token_relevance``'s columns and keeps ``runs.step`` and the six ``cases`` columns — nullable,
unused by revision 0001 — and a later upgrade reuses them (ADD COLUMN skips existing columns on
DuckDB). Tested step-wise up/down/up on all three backends in tests/test_store_migrations.py.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

CASE_COLUMNS = (
    ("output_type", sa.Text),
    ("contrast", sa.Text),
    ("ll_error", sa.Double),
    ("method_params", sa.Text),  # JSON object
    ("aopc", sa.Double),
    ("aopc_random", sa.Double),
)
TOKEN_COLUMNS = (("segment", sa.Text), ("segment_index", sa.Integer))
NEW_TABLES = ("state_relevance", "head_relevance", "faithfulness", "graphs", "graph_nodes",
              "graph_edges")


#: tables other tables reference by foreign key: DuckDB cannot ALTER them once referenced
FK_PARENTS = ("runs", "cases")


def _duckdb() -> bool:
    return op.get_bind().dialect.name == "duckdb"


def _add_column(table: str, column: sa.Column) -> None:
    """ADD COLUMN; on DuckDB skip a column a previous downgrade had to keep (see module doc)."""
    if _duckdb():
        present = op.get_bind().execute(
            sa.text("SELECT count(*) FROM information_schema.columns "
                    "WHERE table_schema = 'main' AND table_name = :t AND column_name = :c"),
            {"t": table, "c": column.name},
        ).scalar()
        if present:
            return
    op.add_column(table, column)


def _case_fk() -> sa.Column:
    return sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), nullable=False)


def upgrade() -> None:
    _add_column("runs", sa.Column("step", sa.Integer))
    for name, type_ in CASE_COLUMNS:
        _add_column("cases", sa.Column(name, type_))
    for name, type_ in TOKEN_COLUMNS:
        _add_column("token_relevance", sa.Column(name, type_))
    op.create_table(
        "state_relevance",
        _case_fk(),
        sa.Column("kind", sa.Text, nullable=False),  # 'mid' | 'attn' | 'mlp'
        sa.Column("layer", sa.Integer, nullable=False),  # 1-based block
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("relevance", sa.Double),
        sa.PrimaryKeyConstraint("case_id", "kind", "layer", "position", name="pk_state_relevance"),
    )
    op.create_table(
        "head_relevance",
        _case_fk(),
        sa.Column("layer", sa.Integer, nullable=False),  # 1-based block
        sa.Column("head", sa.Integer, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("relevance", sa.Double),
        sa.PrimaryKeyConstraint("case_id", "layer", "head", "position", name="pk_head_relevance"),
    )
    op.create_table(
        "faithfulness",
        _case_fk(),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("fraction", sa.Double),
        sa.Column("n_removed", sa.Integer),
        sa.Column("delta_relevance", sa.Double),
        sa.Column("delta_random", sa.Double),
        sa.PrimaryKeyConstraint("case_id", "step", name="pk_faithfulness"),
    )
    op.create_table(
        "graphs",
        _case_fk(),
        sa.Column("node_layers", sa.Text),  # JSON list
        sa.Column("n_nodes", sa.Integer),
        sa.Column("n_edges", sa.Integer),
        sa.Column("mass_kept", sa.Double),
        sa.Column("formation_layer", sa.Integer),
        sa.Column("params", sa.Text),  # JSON object
        sa.Column("metrics", sa.Text),  # JSON object
        sa.PrimaryKeyConstraint("case_id", name="pk_graphs"),
    )
    op.create_table(
        "graph_nodes",
        _case_fk(),
        sa.Column("layer", sa.Integer, nullable=False),  # index into graphs.node_layers
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("relevance", sa.Double),
        sa.PrimaryKeyConstraint("case_id", "layer", "position", name="pk_graph_nodes"),
    )
    op.create_table(
        "graph_edges",
        _case_fk(),
        sa.Column("source_layer", sa.Integer, nullable=False),
        sa.Column("source_position", sa.Integer, nullable=False),
        sa.Column("target_layer", sa.Integer, nullable=False),
        sa.Column("target_position", sa.Integer, nullable=False),
        sa.Column("weight", sa.Double),
        sa.PrimaryKeyConstraint("case_id", "source_layer", "source_position", "target_layer",
                                "target_position", name="pk_graph_edges"),
    )


def downgrade() -> None:
    for table in reversed(NEW_TABLES):
        op.drop_table(table)
    for name, _ in reversed(TOKEN_COLUMNS):
        op.drop_column("token_relevance", name)
    if _duckdb():  # FK-referenced tables cannot be altered on DuckDB: keep their columns
        return
    for name, _ in reversed(CASE_COLUMNS):
        op.drop_column("cases", name)
    op.drop_column("runs", "step")
