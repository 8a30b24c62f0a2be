"""DuckDB: relevance tables keyed by the writer's checked insert instead of ART indexes

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04

DuckDB maintains a PRIMARY KEY / FOREIGN KEY through ART indexes probed row by row: bulk
inserts into the per-position relevance tables ran at 0.36M rows/s with the keys, 5.5M/s without
(bench/README.md, issue #15). On DuckDB only, this revision rebuilds the seven per-position
tables (``token_relevance``, ``layer_relevance``, ``state_relevance``, ``head_relevance``,
``expert_relevance``, ``graph_nodes``, ``graph_edges``) with the same columns, key columns NOT
NULL, but without PRIMARY KEY and FOREIGN KEY. The same duplicate protection is kept by the
writer: every insert into them (``store.bulk``) is one checked insert — the staged rows' keys are
unique, none is stored already (anti-join on the key, restricted to the staged case ids), every
case id exists in ``cases`` — else ``IntegrityError`` and the transaction rolls back, as the
keys did. DuckDB has one writer per file (its file lock), so check and insert cannot race.
SQLite and PostgreSQL keep their keys (untouched by this revision).
Rebuild: copy into a temporary table, drop, create, copy back (no ALTER TABLE RENAME, which
DuckDB refuses for tables with foreign keys; views re-bind by name). Downgrade rebuilds them with
their keys (fails, rolling back, if rows broke a key meanwhile). down_revision is 0008 on this
branch; the lead re-chains it at merge.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

#: table → (key columns, other columns), each (name, DuckDB type), frozen with the revision
TABLES = {
    "token_relevance": ((("case_id", "INTEGER"), ("position", "INTEGER")),
                        (("token_id", "INTEGER"), ("token", "VARCHAR"), ("relevance", "DOUBLE"),
                         ("segment", "VARCHAR"), ("segment_index", "INTEGER"),
                         ("evidence", "INTEGER"))),
    "layer_relevance": ((("case_id", "INTEGER"), ("layer", "INTEGER"), ("position", "INTEGER")),
                        (("relevance", "DOUBLE"),)),
    "state_relevance": ((("case_id", "INTEGER"), ("kind", "VARCHAR"), ("layer", "INTEGER"),
                         ("position", "INTEGER")), (("relevance", "DOUBLE"),)),
    "head_relevance": ((("case_id", "INTEGER"), ("layer", "INTEGER"), ("head", "INTEGER"),
                        ("position", "INTEGER")), (("relevance", "DOUBLE"),)),
    "expert_relevance": ((("case_id", "INTEGER"), ("layer", "INTEGER"), ("expert", "INTEGER"),
                          ("position", "INTEGER")), (("relevance", "DOUBLE"),)),
    "graph_nodes": ((("case_id", "INTEGER"), ("layer", "INTEGER"), ("position", "INTEGER")),
                    (("relevance", "DOUBLE"),)),
    "graph_edges": ((("case_id", "INTEGER"), ("source_layer", "INTEGER"),
                     ("source_position", "INTEGER"), ("target_layer", "INTEGER"),
                     ("target_position", "INTEGER")), (("weight", "DOUBLE"),)),
}


def _q(name: str) -> str:
    return f'"{name}"'


def _rebuild(table: str, keyed: bool) -> None:
    keys, others = TABLES[table]
    columns = [f"{_q(n)} {t} NOT NULL" for n, t in keys] + [f"{_q(n)} {t}" for n, t in others]
    if keyed:
        columns += [f"PRIMARY KEY ({', '.join(_q(n) for n, _ in keys)})",
                    "FOREIGN KEY (case_id) REFERENCES cases(id)"]
    names = ", ".join(_q(n) for n, _ in (*keys, *others))
    copy = f"__hxai_0009_{table}"
    op.execute(f"CREATE TEMPORARY TABLE {copy} AS SELECT {names} FROM {table}")
    op.execute(f"DROP TABLE {table}")
    op.execute(f"CREATE TABLE {table} ({', '.join(columns)})")
    op.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {copy}")
    op.execute(f"DROP TABLE {copy}")


def upgrade() -> None:
    if op.get_bind().dialect.name != "duckdb":
        return
    for table in TABLES:
        _rebuild(table, keyed=False)


def downgrade() -> None:
    if op.get_bind().dialect.name != "duckdb":
        return
    for table in TABLES:
        _rebuild(table, keyed=True)
