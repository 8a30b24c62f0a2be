"""Schema migrations in the pytest-alembic style, on DuckDB, SQLite and PostgreSQL: one head,
base → head, step-wise up/down/up of every revision, downgrade to base leaves nothing, the models
match the migrated schema, data survives an upgrade, and a store behind head is refused until
`harness-xai db upgrade`.

DuckDB limits (documented in the migrations): no reflection (alembic autogenerate cannot compare
models and schema there, so the comparison reads information_schema instead), no ADD FOREIGN KEY
(new tables declare their keys at CREATE time), DROP COLUMN only for un-indexed columns (the
columns 0002 adds are such, so its downgrade works on DuckDB too). Revision 0005 (doc_outcomes,
keyed to runs), 0007 (expert_relevance) and 0008 (rollouts), keyed to cases, are covered by every
round trip here plus their own data tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from harness_xai.errors import UserError
from harness_xai.records import DocOutcome, TaskSummary
from harness_xai.store import Store, bulk, migrate, normalize_url, run_sql, writer
from harness_xai.store.cli import db_main
from harness_xai.store.engine import display_url
from harness_xai.store.models import ALL_TABLES, Base
from harness_xai.store.names import short_model_name
from test_store_support import backend, counts, db, make_case, make_run  # noqa: F401

VIEWS = {"case_overview", "token_ranks", "segment_shares", "faithfulness_summary"}


def _revisions() -> list[str]:
    """Revisions from base to head."""
    return [rev.revision for rev in reversed(list(migrate.script_directory().walk_revisions()))]


def _engine(db: str) -> sa.Engine:
    return writer.make_engine(normalize_url(db))


def _tables(conn: sa.Connection) -> set[str]:
    return set(sa.inspect(conn).get_table_names())


def _views(conn: sa.Connection) -> set[str]:
    if conn.dialect.name == "sqlite":
        q = "SELECT name FROM sqlite_master WHERE type = 'view'"
    elif conn.dialect.name == "duckdb":
        q = "SELECT view_name FROM duckdb_views() WHERE NOT internal"
    else:
        q = "SELECT table_name FROM information_schema.views WHERE table_schema IN ('main', 'public')"
    return {r[0] for r in conn.execute(sa.text(q))}


def test_single_head_and_linear_history() -> None:
    scripts = migrate.script_directory()
    assert scripts.get_heads() == [migrate.head_revision()] == ["0009"]
    assert _revisions() == ["0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009"]
    for rev in scripts.walk_revisions():
        assert rev.doc and rev.doc.strip()  # every revision says what it does (db history shows it)


def test_upgrade_base_to_head_then_downgrade_to_base_leaves_nothing(db: str) -> None:
    engine = _engine(db)
    try:
        with engine.begin() as conn:
            migrate.upgrade(conn, "head")
        with engine.connect() as conn:
            assert migrate.current_revision(conn) == "0009"
            assert {t.name for t in ALL_TABLES} <= _tables(conn) and _views(conn) == VIEWS
            assert "doc_outcomes" in _tables(conn)
        with engine.begin() as conn:
            migrate.downgrade(conn, "base")
        with engine.connect() as conn:
            assert migrate.current_revision(conn) is None
            assert _tables(conn) - {"alembic_version"} == set() and _views(conn) == set()
    finally:
        engine.dispose()


def test_stepwise_up_down_up(db: str) -> None:
    """For every revision: up to it, down to its parent, up again (pytest-alembic's
    up_down_consistency), each step in its own transaction."""
    engine = _engine(db)
    try:
        previous = "base"
        for rev in _revisions():
            for action, target in (("up", rev), ("down", previous), ("up", rev)):
                with engine.begin() as conn:
                    (migrate.upgrade if action == "up" else migrate.downgrade)(conn, target)
                with engine.connect() as conn:
                    assert migrate.current_revision(conn) == (None if target == "base" else target), (action, target)
            previous = rev
    finally:
        engine.dispose()
    with Store.open(db) as store:  # the re-created schema (sequences, views) is usable
        run_id = store.ensure_run(make_run())
        assert store.write_case(run_id, *make_case()) >= 1
        store.write_task_summaries(run_id, [TaskSummary("tiny_mc", "acc", 0.0, 1, 1, "multiple_choice",
                                                        [DocOutcome(7, "dh7", "none", "acc", 0.0, 0)])])
    assert run_sql(db, "SELECT count(*) FROM token_ranks WHERE relevance_rank = 1")[1] == [(1,)]
    assert run_sql(db, "SELECT doc_id, correct FROM doc_outcomes")[1] == [(7, 0)]


_DUCKDB_TYPES = {sa.Integer: "INTEGER", sa.BigInteger: "BIGINT", sa.Double: "DOUBLE", sa.Text: "VARCHAR",
                 sa.DateTime: "TIMESTAMP"}


def test_models_match_migrated_schema(db: str) -> None:
    """pytest-alembic's model_definitions_match_ddl: autogenerate finds no difference between the
    models and the migrated database (SQLite, PostgreSQL); on DuckDB, whose reflection is broken,
    columns, types, nullability and primary keys are compared through information_schema (the
    per-position relevance tables have none there since 0009: bulk.py checks their keys)."""
    with Store.open(db) as store, store.engine.connect() as conn:
        if conn.dialect.name != "duckdb":
            diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert diffs == []
            return
        got = {(t, c): (ty, nullable) for t, c, ty, nullable in conn.execute(sa.text(
            "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'main'"))}
        pks = {t: list(cols) for t, cols in conn.execute(sa.text(
            "SELECT table_name, constraint_column_names FROM duckdb_constraints() "
            "WHERE constraint_type = 'PRIMARY KEY'"))}
    want = {}
    for table in Base.metadata.sorted_tables:
        for col in table.columns:
            want[(table.name, col.name)] = (_DUCKDB_TYPES[type(col.type)], "YES" if col.nullable else "NO")
        if table.name in bulk.DUCKDB_CHECKED:  # 0009: the writer's checked insert keeps the key
            assert table.name not in pks, table.name
        else:
            assert pks[table.name] == [c.name for c in table.primary_key.columns], table.name
    assert {k: v for k, v in got.items() if k[0] in Base.metadata.tables} == want


def test_upgrade_from_0001_keeps_data(db: str) -> None:
    engine = _engine(db)
    try:
        with engine.begin() as conn:
            migrate.upgrade(conn, "0001")
        with engine.begin() as conn:  # rows written by the 0001-era store
            conn.execute(sa.text("INSERT INTO runs (run_key, model) VALUES ('old', 'hf')"))
            run_id = conn.execute(sa.text("SELECT id FROM runs")).scalar()
            conn.execute(sa.text("INSERT INTO cases (run_id, task, doc_id, doc_hash, filter, status, delta) "
                                 "VALUES (:r, 't', 1, 'h', 'none', 'attributed', 2.5)"), {"r": run_id})
            case_id = conn.execute(sa.text("SELECT id FROM cases")).scalar()
            conn.execute(sa.text("INSERT INTO token_relevance VALUES (:c, 0, 5, 'x', 0.25)"), {"c": case_id})
    finally:
        engine.dispose()
    with pytest.raises(UserError, match="db upgrade"):  # a run refuses to write into it
        Store.open(db)
    assert db_main(["upgrade", "--db", db]) == 0
    assert run_sql(db, "SELECT run_key, step FROM runs") == (["run_key", "step"], [("old", None)])
    assert run_sql(db, "SELECT delta, contrast, aopc FROM cases")[1] == [(2.5, None, None)]
    assert run_sql(db, "SELECT token, relevance, segment FROM token_relevance")[1] == [("x", 0.25, None)]
    with Store.open(db) as store:  # and the upgraded store takes new cases (sequences continue)
        new_run = store.ensure_run(make_run())
        assert new_run != run_id and store.write_case(new_run, *make_case()) != case_id
        assert counts(store)["cases"] == 2


def test_0005_doc_outcomes_up_with_data_and_down(db: str) -> None:
    """0004 → 0005 on a store holding data: the data stay, doc_outcomes starts empty and takes rows
    (its key and its foreign key to runs hold); 0005 → 0004 drops exactly doc_outcomes; up again."""
    engine = _engine(db)
    try:
        with engine.begin() as conn:
            migrate.upgrade(conn, "0004")
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO runs (run_key, step) VALUES ('r', 100)"))
            run_id = conn.execute(sa.text("SELECT id FROM runs")).scalar()
            conn.execute(sa.text("INSERT INTO task_results (run_id, task, n_samples) VALUES (:r, 't', 2)"),
                         {"r": run_id})
            conn.execute(sa.text("INSERT INTO cases (run_id, task, doc_id, doc_hash, filter, status) "
                                 "VALUES (:r, 't', 1, 'h1', 'none', 'skipped')"), {"r": run_id})
        with engine.begin() as conn:
            migrate.upgrade(conn, "0005")
        insert = sa.text("INSERT INTO doc_outcomes (run_id, task, doc_id, doc_hash, filter, metric, value, "
                         "correct) VALUES (:r, 't', :d, :h, 'none', 'acc', :v, :c)")
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM doc_outcomes")).scalar() == 0
            conn.execute(insert, [{"r": run_id, "d": 1, "h": "h1", "v": 0.0, "c": 0},
                                  {"r": run_id, "d": 2, "h": "h2", "v": None, "c": None}])
        for bad in ({"r": run_id, "d": 1, "h": "h1", "v": 1.0, "c": 1},  # same key again
                    {"r": run_id + 999, "d": 3, "h": "h3", "v": 1.0, "c": 1}):  # no such run
            with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
                conn.execute(insert, bad)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT doc_id, value, correct FROM doc_outcomes ORDER BY doc_id")).all()
            assert [tuple(r) for r in rows] == [(1, 0.0, 0), (2, None, None)]
            before = _tables(conn)
        with engine.begin() as conn:
            migrate.downgrade(conn, "0004")
        with engine.connect() as conn:
            assert migrate.current_revision(conn) == "0004"
            assert _tables(conn) == before - {"doc_outcomes"} and _views(conn) == VIEWS
            assert conn.execute(sa.text("SELECT count(*) FROM cases")).scalar() == 1
            assert conn.execute(sa.text("SELECT n_samples FROM task_results")).scalar() == 2
        with engine.begin() as conn:
            migrate.upgrade(conn, "head")
    finally:
        engine.dispose()
    assert run_sql(db, "SELECT count(*) FROM doc_outcomes")[1] == [(0,)]
    assert run_sql(db, "SELECT run_key, step FROM runs")[1] == [("r", 100)]


HEAD = "0009"
NEXT = f"{int(HEAD) + 1:04d}"

#: additive per-case tables: revision → (table, insert of one row, a key for it, the value column)
PER_CASE_TABLES = {
    "0007": ("expert_relevance", "INSERT INTO expert_relevance (case_id, layer, expert, position, "
             "relevance) VALUES (:c, 1, :k, 0, :v)", "expert", "relevance"),
    "0008": ("rollouts", "INSERT INTO rollouts (case_id, rollout, position, model_token_id, "
             "model_token, alternative_token_id, alternative_token, rank, margin, correct, "
             "n_tokens, text) VALUES (:c, :k, 3, 17, ' y', 42, ' x', 1, :v, 0, 4, '<script>é')", "rollout", "margin"),
}


@pytest.mark.parametrize("revision", sorted(PER_CASE_TABLES))
def test_per_case_table_up_with_data_and_down(db: str, revision: str) -> None:
    """0005 → the revision's parent → the revision on a store holding a case: its table starts
    empty and takes rows (its key and its foreign key to cases hold); down to the parent drops
    exactly that table; up again (0007: expert_relevance, 0008: rollouts)."""
    table, insert, key, value = PER_CASE_TABLES[revision]
    parent = f"{int(revision) - 1:04d}"
    engine = _engine(db)
    try:
        with engine.begin() as conn:
            migrate.upgrade(conn, "0005")
            conn.execute(sa.text("INSERT INTO runs (run_key, step) VALUES ('r', 100)"))
            run_id = conn.execute(sa.text("SELECT id FROM runs")).scalar()
            conn.execute(sa.text("INSERT INTO cases (run_id, task, doc_id, doc_hash, filter, status) "
                                 "VALUES (:r, 't', 1, 'h1', 'none', 'attributed')"), {"r": run_id})
            case_id = conn.execute(sa.text("SELECT id FROM cases")).scalar()
        with engine.begin() as conn:
            migrate.upgrade(conn, parent)
        with engine.begin() as conn:
            migrate.upgrade(conn, revision)
        with engine.begin() as conn:
            assert conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar() == 0
            conn.execute(sa.text(insert), [{"c": case_id, "k": 3, "v": 0.5},
                                           {"c": case_id, "k": 0, "v": -0.25}])
        for bad in ({"c": case_id, "k": 3, "v": 1.0},  # same key again
                    {"c": case_id + 999, "k": 5, "v": 1.0}):  # no such case
            with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
                conn.execute(sa.text(insert), bad)
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT {key}, {value} FROM {table} ORDER BY {key}")).all()
            assert [tuple(r) for r in rows] == [(0, -0.25), (3, 0.5)]
            before = _tables(conn)
        with engine.begin() as conn:
            migrate.downgrade(conn, parent)
        with engine.connect() as conn:
            assert migrate.current_revision(conn) == parent
            assert _tables(conn) == before - {table} and _views(conn) == VIEWS
            assert conn.execute(sa.text("SELECT count(*) FROM cases")).scalar() == 1
        with engine.begin() as conn:
            migrate.upgrade(conn, "head")
    finally:
        engine.dispose()
    assert run_sql(db, f"SELECT count(*) FROM {table}")[1] == [(0,)]


@pytest.fixture
def migrations_with_next(tmp_path: Path) -> Path:
    """A copy of the shipped migrations plus an additive revision NEXT (a newer harness-xai)."""
    target = tmp_path / "migrations_next"
    shutil.copytree(migrate.MIGRATIONS_DIR, target, ignore=shutil.ignore_patterns("__pycache__"))
    (target / "versions" / f"{NEXT}_extra.py").write_text(
        '"""extra table for tests"""\n'
        "import sqlalchemy as sa\nfrom alembic import op\n"
        f"revision = '{NEXT}'\ndown_revision = '{HEAD}'\nbranch_labels = None\ndepends_on = None\n"
        "def upgrade():\n    op.create_table('extra_test', sa.Column('x', sa.Integer))\n"
        "def downgrade():\n    op.drop_table('extra_test')\n"
    )
    return target


def test_schema_behind_head_is_refused_then_upgraded(
    db: str, migrations_with_next: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    Store.open(db).close()  # at HEAD
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", migrations_with_next)  # now head is NEXT
    url = display_url(normalize_url(db))
    with pytest.raises(UserError) as err:
        Store.open(db)
    message = str(err.value)
    assert f"run `harness-xai db upgrade --db {url}`" in message and HEAD in message and "\n" not in message
    assert db_main(["current", "--db", db]) == 0
    assert capsys.readouterr().out.startswith(f"{HEAD} (behind head {NEXT}")
    assert db_main(["upgrade", "--db", db]) == 0
    assert capsys.readouterr().out.strip() == f"{url}: upgraded {HEAD} -> {NEXT} (head)"
    with Store.open(db) as store, store.engine.connect() as conn:
        assert "extra_test" in _tables(conn)
    monkeypatch.undo()  # back to the shipped scripts (head HEAD)
    with pytest.raises(UserError, match=f"unknown revision {NEXT}"):  # DB newer than this code
        Store.open(db)


def test_views_answer_on_empty_and_filled_store(db: str) -> None:
    Store.open(db).close()
    for view in sorted(VIEWS):
        assert run_sql(db, f"SELECT * FROM {view}")[1] == []
    with Store.open(db) as store:
        run_id = store.ensure_run(make_run())
        case, ex = make_case(n_tokens=12)
        store.write_case(run_id, case, ex)
    cols, rows = run_sql(db, "SELECT position, relevance_rank, share FROM token_ranks ORDER BY relevance_rank")
    order = np.argsort(-ex.token_relevance.astype(np.float64), kind="stable")
    assert [r[0] for r in rows] == order.tolist() and [r[1] for r in rows] == list(range(1, 13))
    assert sum(abs(r[2]) for r in rows) == pytest.approx(1.0)
    shares = dict(run_sql(db, "SELECT segment, share FROM segment_shares")[1])
    assert set(shares) == set(case.segments) and sum(shares.values()) == pytest.approx(1.0)
    (row,) = run_sql(db, "SELECT n_cases, mean_aopc, mean_gap, frac_beats_random FROM faithfulness_summary")[1]
    assert row == (1, pytest.approx(0.5), pytest.approx(0.3), pytest.approx(1.0))
    assert run_sql(db, "SELECT step, n_params, doc_id FROM case_overview")[1] == [(3000, 123_456_789_012, 7)]


def test_0006_model_name_backfilled_shown_in_view_and_down(db: str) -> None:
    """0005 → 0006 on a store holding runs: model_name is backfilled from pretrained (hub id kept,
    local path → directory name, checkpoint directory → its parent's name), case_overview shows
    it; new runs get it from the writer; 0006 → 0005 restores the 0003 view (and drops the column
    where the backend can); up again backfills again."""
    engine = _engine(db)
    olds = [("a", "EleutherAI/pythia-160m", "hf"), ("b", "/home/u/zoo/llama-s", "hf"),
            ("c", "/home/u/zoo/neox-l/step300", "hf"), ("d", None, "dummy")]
    try:
        with engine.begin() as conn:
            migrate.upgrade(conn, "0005")
        with engine.begin() as conn:
            for key, pretrained, model in olds:
                conn.execute(sa.text("INSERT INTO runs (run_key, pretrained, model) VALUES (:k, :p, :m)"),
                             {"k": key, "p": pretrained, "m": model})
            run_id = conn.execute(sa.text("SELECT id FROM runs WHERE run_key = 'b'")).scalar()
            conn.execute(sa.text("INSERT INTO cases (run_id, task, doc_id, doc_hash, filter, status) "
                                 "VALUES (:r, 't', 1, 'h', 'none', 'skipped')"), {"r": run_id})
        with engine.begin() as conn:
            migrate.upgrade(conn, "0006")
        want = {"a": "EleutherAI/pythia-160m", "b": "llama-s", "c": "neox-l", "d": "dummy"}
        with engine.connect() as conn:
            got = dict(conn.execute(sa.text("SELECT run_key, model_name FROM runs")).all())
            assert got == want
            assert conn.execute(sa.text("SELECT model_name, pretrained FROM case_overview")).all() == [
                ("llama-s", "/home/u/zoo/llama-s")]
        with engine.begin() as conn:
            migrate.downgrade(conn, "0005")
        with engine.connect() as conn:
            assert migrate.current_revision(conn) == "0005"
            assert _views(conn) == VIEWS
            cols = list(conn.execute(sa.text("SELECT * FROM case_overview")).keys())
            assert "model_name" not in cols and "pretrained" in cols
            assert conn.execute(sa.text("SELECT count(*) FROM runs")).scalar() == len(olds)
        with engine.begin() as conn:
            migrate.upgrade(conn, "head")
        with engine.connect() as conn:
            assert dict(conn.execute(sa.text("SELECT run_key, model_name FROM runs")).all()) == want
    finally:
        engine.dispose()
    with Store.open(db) as store:  # the writer fills it for new runs
        run = make_run()
        run_id = store.ensure_run(run)
    assert run_sql(db, "SELECT model_name FROM runs WHERE id = :i", {"i": run_id})[1] == [
        (short_model_name(run.pretrained),)]
