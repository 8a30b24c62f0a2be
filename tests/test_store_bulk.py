"""Duplicate protection of the bulk write path (issue #15) on DuckDB, SQLite and PostgreSQL.

SQLite and PostgreSQL refuse duplicates through the tables' primary and foreign keys; DuckDB
stores (revision 0009) have no keys on the per-position relevance tables and ``bulk`` checks
every insert instead. Either way the same writes must be refused: a key already stored, a key
given twice (rows in key order and shuffled), a case id that does not exist — each an
``IntegrityError`` that leaves the table unchanged — while a new key of a stored case is accepted.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import sqlalchemy as sa

from harness_xai.store import Store, bulk, migrate, run_sql, writer
from harness_xai.store.models import ALL_TABLES
from test_store_support import backend, db, make_case, make_run  # noqa: F401

TABLES = {t.name: t for t in ALL_TABLES}
#: the key column each test moves to make a new key (a position far past the case's tokens)
MOVED = {"graph_edges": "target_position"}


def _stored_case(db: str) -> tuple[int, dict[str, dict]]:
    """A stored case with rows in every checked table; table → its first row (column → value)."""
    case, ex = make_case(n_tokens=12, n_heads=2)
    moe = np.zeros((3, 4, 12))  # (layers, experts, tokens): two selected experts per token
    moe[:, 1, :], moe[:, 3, :] = 0.25, -0.5
    ex = replace(ex, expert_relevance=moe)
    with Store.open(db) as store:
        case_id = store.write_case(store.ensure_run(make_run()), case, ex)
    first = {}
    for name in sorted(bulk.DUCKDB_CHECKED):
        table = TABLES[name]
        cols, rows = run_sql(db, f"SELECT * FROM {name} WHERE case_id = {case_id} "
                                 f"ORDER BY {', '.join(c.name for c in table.primary_key.columns)} LIMIT 1")
        assert rows, name
        first[name] = dict(zip(cols, rows[0]))
    return case_id, first


def _columns(rows: list[dict]) -> dict:
    return {k: [r[k] for r in rows] for k in rows[0]}


def _refused(db: str, table: sa.Table, rows: list[dict]) -> bool:
    """Insert ``rows`` through the bulk path in one transaction: True if refused with an
    IntegrityError (the table unchanged), False if written."""
    before = run_sql(db, f"SELECT count(*) FROM {table.name}")[1]
    refused = False
    with Store.open(db) as store:
        try:
            with store.engine.begin() as conn:
                bulk.insert_columns(conn, table, _columns(rows))
        except sa.exc.IntegrityError:
            refused = True
    if refused:
        assert run_sql(db, f"SELECT count(*) FROM {table.name}")[1] == before
    return refused


@pytest.mark.parametrize("name", sorted(bulk.DUCKDB_CHECKED))
def test_relevance_tables_refuse_duplicates_on_every_backend(db: str, name: str) -> None:
    case_id, first = _stored_case(db)
    table, row = TABLES[name], first[name]
    moved = MOVED.get(name, "position")

    def new(offset: int) -> dict:
        return {**row, moved: 10_000 + offset}

    assert _refused(db, table, [dict(row)])  # a key already stored
    assert _refused(db, table, [new(1), new(2), new(2)])  # twice, in key order
    assert _refused(db, table, [new(5), new(3), new(4), new(3)])  # twice, shuffled
    assert _refused(db, table, [new(7), dict(row)])  # a new key plus a stored one
    assert _refused(db, table, [{**new(8), "case_id": case_id + 999}])  # no such case
    assert not _refused(db, table, [new(12), new(10), new(11)])  # new keys of the stored case
    assert run_sql(db, f"SELECT count(*) FROM {name} WHERE {moved} >= 10000")[1] == [(3,)]


def test_duckdb_relevance_tables_carry_no_index_other_tables_keep_keys(tmp_path) -> None:
    """What the checks replace: DuckDB's relevance tables have no PRIMARY/FOREIGN KEY at head;
    the case-level tables keep theirs (a duplicate unit key is still refused by the database)."""
    db = str(tmp_path / "keys.duckdb")
    Store.open(db).close()
    _, rows = run_sql(db, "SELECT table_name, constraint_type FROM duckdb_constraints() "
                          "WHERE constraint_type IN ('PRIMARY KEY', 'FOREIGN KEY', 'UNIQUE')")
    keyed = {t for t, _ in rows}
    assert keyed.isdisjoint(bulk.DUCKDB_CHECKED)
    assert {"cases", "runs", "faithfulness", "graphs", "doc_outcomes"} <= keyed


def test_0009_rebuilds_duckdb_tables_with_data_and_back(tmp_path) -> None:
    """0008 → 0009 on a DuckDB store holding a case: every row kept, the keys gone; the checked
    insert refuses a duplicate; 0009 → 0008 restores the keys (the database refuses it again)."""
    db = str(tmp_path / "m.duckdb")
    engine = writer.make_engine(f"duckdb:///{db}")
    try:
        with engine.begin() as conn:
            migrate.upgrade(conn, "0008")
    finally:
        engine.dispose()
    case, ex = make_case(n_tokens=9)
    with _at(db, "0008") as store:
        case_id = store.write_case(store.ensure_run(make_run()), case, ex)
        before = _dump(store)
    assert _n_keys(db) > 0
    _migrate(db, "upgrade", "0009")
    assert _n_keys(db) == 0
    with _at(db, "0009") as store:
        assert _dump(store) == before
    assert run_sql(db, "SELECT count(*) FROM token_ranks")[1] == [(9,)]  # views re-bind
    row = {"case_id": case_id, "position": 0, "token_id": 1, "token": "x", "relevance": 0.0}
    assert _refused(db, TABLES["token_relevance"], [row])
    _migrate(db, "downgrade", "0008")
    assert _n_keys(db) > 0
    with _at(db, "0008") as store:
        assert _dump(store) == before
        with pytest.raises(sa.exc.IntegrityError), bulk_unchecked(), store.engine.begin() as conn:
            bulk.insert_columns(conn, TABLES["token_relevance"], _columns([row]))


class _at:
    """The store's engine at a given revision (Store.open refuses a store behind head)."""

    def __init__(self, db: str, revision: str) -> None:
        self.db, self.revision = db, revision

    def __enter__(self):
        engine = writer.make_engine(f"duckdb:///{self.db}")
        with engine.connect() as conn:
            assert migrate.current_revision(conn) == self.revision
        self.store = Store(f"duckdb:///{self.db}", engine)
        return self.store

    def __exit__(self, *exc) -> None:
        self.store.close()


class bulk_unchecked:
    """The plain insert without the DuckDB checks (what the database alone refuses)."""

    def __enter__(self) -> None:
        self.saved = bulk.DUCKDB_CHECKED
        bulk.DUCKDB_CHECKED = frozenset()

    def __exit__(self, *exc) -> None:
        bulk.DUCKDB_CHECKED = self.saved


def _migrate(db: str, action: str, target: str) -> None:
    engine = writer.make_engine(f"duckdb:///{db}")
    try:
        with engine.begin() as conn:
            getattr(migrate, action)(conn, target)
    finally:
        engine.dispose()


def _n_keys(db: str) -> int:
    names = ", ".join(f"'{n}'" for n in sorted(bulk.DUCKDB_CHECKED))
    return run_sql(db, "SELECT count(*) FROM duckdb_constraints() WHERE constraint_type IN "
                       f"('PRIMARY KEY', 'FOREIGN KEY') AND table_name IN ({names})")[1][0][0]


def _dump(store: Store) -> dict:
    with store.engine.connect() as conn:
        return {name: sorted(map(tuple, conn.execute(sa.select(TABLES[name])).all()), key=repr)
                for name in sorted(bulk.DUCKDB_CHECKED)}
