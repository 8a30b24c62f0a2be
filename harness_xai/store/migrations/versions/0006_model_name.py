"""short model name beside the full path: runs.model_name, also in case_overview

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

Hand-written and additive. ``runs.pretrained`` is what lm-eval was given, often an absolute
path; tables and legends could not tell ``llama-s`` from ``neox-l`` once it was cut short.
1. ``runs.model_name`` (TEXT, nullable): a hub id is kept whole, a local path gives its directory
   name (a checkpoint directory such as ``step200`` its parent's). New runs get it from the
   writer (``harness_xai.store.names``); existing rows are backfilled here from ``pretrained``
   (else ``model``) with a frozen copy of that rule (``_short``; no filesystem check here, so a
   relative ``dir/name`` reads as a hub id), one bound UPDATE per run.
2. ``case_overview`` is re-created with ``r.model_name`` after ``r.pretrained`` (DROP VIEW +
   CREATE VIEW; the 0003 body is restored on downgrade).
Downgrade restores the view and drops the column on SQLite and PostgreSQL. DuckDB cannot alter a
table other tables reference by foreign key (see 0002), so there the column stays, nullable and
unused by 0005; a later upgrade reuses it (ADD COLUMN skips an existing column on DuckDB) and
backfills it again.
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_COLUMNS = """c.id AS case_id, c.run_id, r.run_key, r.pretrained, {name}r.revision, r.step, r.model_type,
       r.n_params, c.task, c.doc_id, c.doc_hash, c.prompt_hash, c.filter, c.metric, c.status,
       c.skip_reason, c.output_type, c.contrast, c.method, c.pred_index, c.gold_index,
       c.pred_text, c.gold_text, c.wrong_token, c.gold_token, c.delta, c.ll_pred, c.ll_gold,
       c.ll_error, c.n_tokens, c.aopc, c.aopc_random"""
_FROM = "FROM cases AS c JOIN runs AS r ON r.id = c.run_id"
CASE_OVERVIEW_0006 = f"SELECT {_COLUMNS.format(name='r.model_name, ')}\n{_FROM}"
CASE_OVERVIEW_0003 = f"SELECT {_COLUMNS.format(name='')}\n{_FROM}"
_CHECKPOINT_DIR = re.compile(r"^(step[-_]?\d+|checkpoint[-_]\d+|global[-_]?step[-_]?\d+|main)$",
                             re.IGNORECASE)


def _short(pretrained: str | None) -> str | None:
    """Frozen copy of ``harness_xai.store.names.short_model_name`` without the directory check."""
    name = (pretrained or "").strip()
    parts = [p for p in re.split(r"[\\/]+", name) if p]
    if not parts:
        return name or None
    if not (name.startswith(("/", ".", "~", "\\")) or len(parts) != 2
            or re.match(r"^[A-Za-z]:", name)):
        return "/".join(parts)
    while len(parts) > 1 and _CHECKPOINT_DIR.match(parts[-1]):
        parts.pop()
    return parts[-1]


def _has_column(table: str, column: str) -> bool:
    bind = op.get_bind()
    if bind.dialect.name != "duckdb":
        return False
    return bool(bind.execute(
        sa.text("SELECT count(*) FROM information_schema.columns "
                "WHERE table_schema = 'main' AND table_name = :t AND column_name = :c"),
        {"t": table, "c": column}).scalar())


def upgrade() -> None:
    if not _has_column("runs", "model_name"):
        op.add_column("runs", sa.Column("model_name", sa.Text))
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, pretrained, model FROM runs")).all()
    update = sa.text("UPDATE runs SET model_name = :name WHERE id = :id")
    for run_id, pretrained, model in rows:
        bind.execute(update, {"name": _short(pretrained or model), "id": run_id})
    op.execute("DROP VIEW case_overview")
    op.execute(f"CREATE VIEW case_overview AS {CASE_OVERVIEW_0006}")


def downgrade() -> None:
    op.execute("DROP VIEW case_overview")
    op.execute(f"CREATE VIEW case_overview AS {CASE_OVERVIEW_0003}")
    if op.get_bind().dialect.name != "duckdb":
        op.drop_column("runs", "model_name")
