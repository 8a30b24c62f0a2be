"""Tests of the result store on real DuckDB and SQLite files: round trip, idempotency, atomicity,
schema revisions (alembic), read-only SQL and the `db`/`sql` command entry points."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
from pathlib import Path

import duckdb
import numpy as np
import pytest
import sqlalchemy as sa

from harness_xai.errors import UserError
from harness_xai.records import ATTRIBUTED, SKIPPED, CaseRecord, RunRecord, TaskSummary
from harness_xai.store import Store, normalize_url, run_sql
from harness_xai.store import migrate, writer
from harness_xai.store.cli import db_main, sql_main
from harness_xai.store.models import cases, layer_relevance, runs, task_results, token_relevance

NASTY = [
    "'; DROP TABLE cases; --",
    "<script>alert('x')</script>",
    'say "hi"',
    "naïve ☃ 日本語 🙂",
    "\n",
    "",
    " back\\slash %s :param ?",
]
TABLES = (runs, task_results, cases, token_relevance, layer_relevance)


@pytest.fixture(params=["duckdb", "sqlite"])
def db_path(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return tmp_path / f"results.{request.param}"


def make_run(key: str = "run-1") -> RunRecord:
    return RunRecord(
        run_key=key,
        model="hf",
        model_args="pretrained=/models/tiny,dtype=float32",
        pretrained="/models/tiny",
        revision="step3000",
        model_type="llama",
        n_params=123_456_789_012,
        tasks=["arc_easy", "tiny_mc"],
        method="attnlrp",
        lm_eval_version="0.4.13",
        harness_xai_version="0.1.0",
        config={"num_fewshot": 2, "limit": None, "nested": {"a": [1, 2.5, "x"]}, "text": NASTY[0]},
        created_at=dt.datetime(2026, 11, 24, 9, 30, 15, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    )


def make_case(doc_id: int = 7, n_tokens: int = len(NASTY), n_layers: int = 3, seed: int = 0) -> CaseRecord:
    rng = np.random.default_rng(seed)
    tokens = [NASTY[i % len(NASTY)] for i in range(n_tokens)]
    return CaseRecord(
        task="tiny_mc",
        doc_id=doc_id,
        doc_hash=f"dh{doc_id}",
        prompt_hash="ph",
        target_hash="th",
        filter="none",
        metric="acc",
        status=ATTRIBUTED,
        prompt="Q: " + " | ".join(NASTY),
        pred_index=np.int64(2),  # numpy scalars must be accepted
        gold_index=0,
        pred_text=" <b>wrong</b>",
        gold_text=" right'",
        position=n_tokens,
        wrong_token_id=11,
        gold_token_id=12,
        wrong_token=" <b>",
        gold_token=" r'",
        delta=np.float32(1.25),
        ll_pred=-0.5,
        ll_gold=-1.75,
        method="attnlrp",
        token_ids=[int(t) for t in rng.integers(0, 50_000, n_tokens)],
        tokens=tokens,
        token_relevance=rng.normal(size=n_tokens).astype(np.float32),  # (n_tokens,)
        layer_relevance=rng.normal(size=(n_layers + 1, n_tokens)).astype(np.float32),  # (L+1, n)
    )


def counts(store: Store) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar() for t in TABLES}


# -- normalize_url ---------------------------------------------------------------------------------
def test_normalize_url_paths_and_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert normalize_url("x.duckdb") == f"duckdb:///{tmp_path.resolve()}/x.duckdb"
    assert normalize_url("sub/y.DDB") == f"duckdb:///{tmp_path.resolve()}/sub/y.DDB"
    assert normalize_url("r.sqlite") == f"sqlite:///{tmp_path.resolve()}/r.sqlite"
    assert normalize_url(" r.db ") == f"sqlite:///{tmp_path.resolve()}/r.db"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert normalize_url("~/h.sqlite3") == f"sqlite:///{tmp_path.resolve()}/h.sqlite3"
    odd = tmp_path / "a b?c#d%e@f.duckdb"  # URL-special characters in a file name
    assert normalize_url(str(odd)).startswith("duckdb:////")
    assert writer.db_file(normalize_url(str(odd))) == odd.resolve()
    for url in ("duckdb:///:memory:", "sqlite:///rel.sqlite", "postgresql+psycopg2://u:p@host:5432/db"):
        assert normalize_url(url) == url


@pytest.mark.parametrize("bad", ["", "   ", "results.txt", "results", "mysql://u@h/db", "://nope"])
def test_normalize_url_rejects(bad: str) -> None:
    with pytest.raises(UserError) as err:
        normalize_url(bad)
    assert "\n" not in str(err.value)


def test_normalize_url_rejects_directory(tmp_path: Path) -> None:
    (tmp_path / "d.duckdb").mkdir()
    with pytest.raises(UserError, match="directory"):
        normalize_url(str(tmp_path / "d.duckdb"))


# -- open / schema ---------------------------------------------------------------------------------
def test_open_creates_migrates_and_reopens(db_path: Path) -> None:
    with Store.open(str(db_path)) as store:
        assert store.url == normalize_url(str(db_path))
        with store.engine.connect() as conn:
            assert migrate.current_revision(conn) == migrate.head_revision()
            assert {t.name for t in TABLES} <= set(sa.inspect(conn).get_table_names())
    assert db_path.is_file()
    with Store.open(str(db_path), create=False) as store:  # second open: no migration, works
        assert counts(store) == {t.name: 0 for t in TABLES}


def test_open_missing_without_create(db_path: Path) -> None:
    with pytest.raises(UserError, match=str(db_path)):
        Store.open(str(db_path), create=False)
    assert not db_path.exists()


def test_open_empty_file_without_create_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite"
    sqlite3.connect(path).close()
    with pytest.raises(UserError, match="db upgrade"):
        Store.open(str(path), create=False)


def test_failed_migration_leaves_no_file(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(conn: sa.Connection, target: str = "head") -> None:
        raise RuntimeError("migration failed")

    monkeypatch.setattr(migrate, "upgrade", boom)
    with pytest.raises(RuntimeError, match="migration failed"):
        Store.open(str(db_path))
    assert list(db_path.parent.iterdir()) == []


def test_duckdb_locked_by_other_process(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "locked.duckdb"
    Store.open(str(path)).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb,sys,time; c=duckdb.connect(sys.argv[1]); print('ok', flush=True); time.sleep(60)", str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(UserError, match="in use by another process"):
            Store.open(str(path))
        with pytest.raises(UserError, match="in use by another process"):
            run_sql(str(path), "SELECT 1")
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture
def migrations_with_0002(tmp_path: Path) -> Path:
    """A copy of the shipped migrations plus an additive revision 0002 (a newer harness-xai)."""
    target = tmp_path / "migrations_v2"
    shutil.copytree(migrate.MIGRATIONS_DIR, target, ignore=shutil.ignore_patterns("__pycache__"))
    (target / "versions" / "0002_extra.py").write_text(
        '"""extra table for tests"""\n'
        "import sqlalchemy as sa\nfrom alembic import op\n"
        "revision = '0002'\ndown_revision = '0001'\nbranch_labels = None\ndepends_on = None\n"
        "def upgrade():\n    op.create_table('extra_test', sa.Column('x', sa.Integer))\n"
        "def downgrade():\n    op.drop_table('extra_test')\n"
    )
    return target


def test_schema_behind_head_is_refused_then_upgraded(
    db_path: Path, migrations_with_0002: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    Store.open(str(db_path)).close()  # at 0001
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", migrations_with_0002)  # now head is 0002
    url = normalize_url(str(db_path))
    with pytest.raises(UserError) as err:
        Store.open(str(db_path))
    assert f"harness-xai db upgrade --db {url}" in str(err.value) and "0001" in str(err.value)
    assert db_main(["current", "--db", str(db_path)]) == 0
    assert capsys.readouterr().out.startswith("0001 (behind head 0002")
    assert db_main(["upgrade", "--db", str(db_path)]) == 0
    assert capsys.readouterr().out.strip() == f"{url}: upgraded 0001 -> 0002 (head)"
    with Store.open(str(db_path)) as store:
        with store.engine.connect() as conn:
            assert "extra_test" in sa.inspect(conn).get_table_names()
    monkeypatch.undo()  # back to the shipped scripts (head 0001)
    with pytest.raises(UserError, match="unknown revision 0002"):  # DB newer than this code
        Store.open(str(db_path))


@pytest.mark.parametrize("suffix", ["duckdb", "sqlite"])
def test_special_characters_in_file_name(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"odd name?#%@:x.{suffix}"
    with Store.open(str(path)) as store:
        store.ensure_run(make_run())
    assert path.is_file() and [p.name for p in tmp_path.iterdir() if not p.name.endswith(".wal")] == [path.name]
    assert run_sql(str(path), "SELECT run_key FROM runs") == (["run_key"], [("run-1",)])


def test_tables_without_revision_are_refused(db_path: Path) -> None:
    with Store.open(str(db_path)) as store:
        with store.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM alembic_version"))
    with pytest.raises(UserError, match="no schema revision"):
        Store.open(str(db_path))


def test_migrations_single_head_up_down_up(db_path: Path) -> None:
    assert len(migrate.script_directory().get_heads()) == 1
    url = normalize_url(str(db_path))
    engine = writer.make_engine(url)
    try:
        with engine.begin() as conn:
            migrate.upgrade(conn, "head")
        with engine.begin() as conn:
            assert migrate.current_revision(conn) == "0001"
            migrate.downgrade(conn, "base")  # DuckDB: tables dropped children-first, then sequences
        with engine.connect() as conn:
            assert migrate.current_revision(conn) is None
            assert not {t.name for t in TABLES} & set(sa.inspect(conn).get_table_names())
        with engine.begin() as conn:
            migrate.upgrade(conn, "head")
    finally:
        engine.dispose()
    with Store.open(str(db_path)) as store:  # the re-created schema (incl. sequences) is usable
        run_id = store.ensure_run(make_run())
        assert store.write_case(run_id, make_case()) >= 1


# -- writing ---------------------------------------------------------------------------------------
def test_round_trip(db_path: Path) -> None:
    run = make_run()
    case = make_case()
    with Store.open(str(db_path)) as store:
        run_id = store.ensure_run(run)
        store.write_task_summaries(run_id, [
            TaskSummary("tiny_mc", "acc", 0.25, 8, 6, "multiple_choice"),
            TaskSummary("arc_easy", "acc_norm", np.float64(0.5), 4, 2, "multiple_choice"),
        ])
        store.write_task_summaries(run_id, [TaskSummary("tiny_mc", "acc", 0.375, 8, 5, "multiple_choice")])
        case_id = store.write_case(run_id, case)
        assert store.done_keys(run_id) == {case.unit_key}
        with store.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().one()
            summaries = conn.execute(sa.select(task_results).order_by(task_results.c.task)).all()
            crow = conn.execute(sa.select(cases).where(cases.c.id == case_id)).mappings().one()
            toks = conn.execute(sa.select(token_relevance).order_by(token_relevance.c.position)).all()
            layers = conn.execute(
                sa.select(layer_relevance).order_by(layer_relevance.c.layer, layer_relevance.c.position)
            ).all()

    assert row["run_key"] == run.run_key and row["model_args"] == run.model_args
    assert row["n_params"] == run.n_params and row["revision"] == "step3000"
    assert json.loads(row["tasks"]) == run.tasks and json.loads(row["config"]) == run.config
    assert row["created_at"] == dt.datetime(2026, 11, 24, 7, 30, 15)  # naive UTC
    assert [tuple(s) for s in summaries] == [
        (run_id, "arc_easy", "acc_norm", 0.5, 4, 2, "multiple_choice"),
        (run_id, "tiny_mc", "acc", 0.375, 8, 5, "multiple_choice"),
    ]
    for name in ("task", "doc_id", "doc_hash", "prompt_hash", "target_hash", "filter", "metric", "status",
                 "prompt", "gold_index", "pred_text", "gold_text", "position", "wrong_token_id",
                 "gold_token_id", "wrong_token", "gold_token", "ll_pred", "ll_gold", "method"):
        assert crow[name] == getattr(case, name), name
    assert crow["pred_index"] == 2 and crow["delta"] == 1.25 and crow["skip_reason"] is None
    assert crow["n_tokens"] == len(case.tokens)
    assert [t.token for t in toks] == case.tokens  # nasty text survives byte for byte
    assert [t.token_id for t in toks] == case.token_ids and [t.position for t in toks] == list(range(len(NASTY)))
    np.testing.assert_allclose([t.relevance for t in toks], case.token_relevance, rtol=1e-6)
    got = np.array([r.relevance for r in layers]).reshape(case.layer_relevance.shape)  # (L+1, n)
    np.testing.assert_allclose(got, case.layer_relevance, rtol=1e-6)
    assert {r.case_id for r in layers} == {case_id}
    # the same rows through the read-only SQL path, with a bound parameter
    cols, rows = run_sql(str(db_path), "SELECT token FROM token_relevance WHERE token = :t", {"t": NASTY[0]})
    assert cols == ["token"] and rows == [(NASTY[0],)]


def test_idempotent_writes(db_path: Path) -> None:
    with Store.open(str(db_path)) as store:
        run_id = store.ensure_run(make_run())
        assert store.ensure_run(make_run()) == run_id
        other = store.ensure_run(make_run("run-2"))
        assert other != run_id
        first = store.write_case(run_id, make_case(doc_id=1))
        second_case = store.write_case(run_id, make_case(doc_id=2))
        before = counts(store)
        assert store.write_case(run_id, make_case(doc_id=1, seed=5)) == first
        assert counts(store) == before
        assert store.write_case(other, make_case(doc_id=1)) not in (first, second_case)  # other run: new case
    with Store.open(str(db_path)) as store:  # across sessions too
        assert store.ensure_run(make_run()) == run_id
        after = counts(store)
        assert store.write_case(run_id, make_case(doc_id=2)) == second_case
        assert counts(store) == after
        assert after["runs"] == 2 and after["cases"] == 3
        assert after["token_relevance"] == 3 * len(NASTY) and after["layer_relevance"] == 3 * 4 * len(NASTY)


def test_write_case_is_atomic(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_insert = writer._insert_columns

    def duplicate_layer_rows(conn: sa.Connection, table: sa.Table, columns: dict[str, list]) -> None:
        if table.name == "layer_relevance":  # repeat the first row: a real primary-key violation
            columns = {name: values + values[:1] for name, values in columns.items()}
        real_insert(conn, table, columns)

    with Store.open(str(db_path)) as store:
        run_id = store.ensure_run(make_run())
        kept = store.write_case(run_id, make_case(doc_id=1))
        before = counts(store)
        monkeypatch.setattr(writer, "_insert_columns", duplicate_layer_rows)
        with pytest.raises(sa.exc.IntegrityError):
            store.write_case(run_id, make_case(doc_id=2))
        assert counts(store) == before  # no case row, no token rows of the failed case
        assert store.done_keys(run_id) == {make_case(doc_id=1).unit_key}
        monkeypatch.setattr(writer, "_insert_columns", real_insert)
        bad = make_case(doc_id=3)
        bad.layer_relevance = bad.layer_relevance[:, :-1]  # shape mismatch: refused before writing
        with pytest.raises(ValueError, match="layer_relevance shape"):
            store.write_case(run_id, bad)
        assert counts(store) == before
        assert store.write_case(run_id, make_case(doc_id=2)) not in (None, kept)  # retry succeeds
        assert counts(store)["cases"] == 2


def test_skipped_case_writes_only_case_row(db_path: Path) -> None:
    skipped = CaseRecord(
        task="tiny_mc", doc_id=4, doc_hash="d4", prompt_hash="p", target_hash="t", filter="none",
        metric="acc", status=SKIPPED, skip_reason="identical continuations", prompt="Q?",
    )
    with Store.open(str(db_path)) as store:
        run_id = store.ensure_run(make_run())
        case_id = store.write_case(run_id, skipped)
        assert counts(store) == {"runs": 1, "task_results": 0, "cases": 1, "token_relevance": 0, "layer_relevance": 0}
        with store.engine.connect() as conn:
            row = conn.execute(sa.select(cases).where(cases.c.id == case_id)).mappings().one()
        assert row["status"] == "skipped" and row["skip_reason"] == "identical continuations"
        assert row["n_tokens"] is None and row["delta"] is None


# -- sql / db commands -----------------------------------------------------------------------------
@pytest.fixture
def filled_db(db_path: Path) -> Path:
    with Store.open(str(db_path)) as store:
        run_id = store.ensure_run(make_run())
        store.write_case(run_id, make_case(doc_id=1))
        store.write_case(run_id, make_case(doc_id=22))
    return db_path


def test_sql_main_table_csv_json(filled_db: Path, capsys: pytest.CaptureFixture) -> None:
    query = "SELECT doc_id, status, pred_text, delta FROM cases WHERE doc_id >= :lo ORDER BY doc_id"
    assert sql_main(["--db", str(filled_db), query, "--param", "lo=0"]) == 0
    assert capsys.readouterr().out == (
        "doc_id | status     | pred_text     | delta\n"
        "-------+------------+---------------+------\n"
        "     1 | attributed |  <b>wrong</b> |  1.25\n"
        "    22 | attributed |  <b>wrong</b> |  1.25\n"
        "(2 rows)\n"
    )
    sql_main(["--db", str(filled_db), "--format", "csv", "SELECT token FROM token_relevance WHERE case_id = 1 ORDER BY position"])
    assert capsys.readouterr().out.splitlines()[:3] == ["token", "'; DROP TABLE cases; --", "<script>alert('x')</script>"]
    sql_main(["--db", str(filled_db), "--format", "json", "-p", "d=22", "SELECT doc_id, skip_reason FROM cases WHERE doc_id = :d"])
    assert json.loads(capsys.readouterr().out) == [{"doc_id": 22, "skip_reason": None}]
    sql_main(["--db", str(filled_db), "SELECT prompt FROM cases WHERE doc_id = 1", "--max-width", "12"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "Q: '; DROP …" and lines[-1] == "(1 row)"


@pytest.mark.parametrize(
    "query, message",
    [
        ("SELEC 1", "SQL error: "),
        ("SELECT * FROM no_such_table", "SQL error: "),
        ("SELECT :missing", "SQL error: "),
        ("DELETE FROM cases", "SQL error: "),  # read-only connection
        ("DROP TABLE cases", "SQL error: "),
    ],
)
def test_sql_errors_are_one_line_and_read_only(filled_db: Path, query: str, message: str) -> None:
    with pytest.raises(UserError) as err:
        sql_main(["--db", str(filled_db), query])
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert run_sql(str(filled_db), "SELECT count(*) FROM cases")[1] == [(2,)]


def test_sql_and_db_argument_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.duckdb"
    with pytest.raises(UserError, match="not found"):
        sql_main(["--db", str(missing), "SELECT 1"])
    assert not missing.exists()
    with pytest.raises(UserError, match="not found"):
        db_main(["current", "--db", str(missing)])
    with pytest.raises(UserError, match="--format"):
        sql_main(["--db", str(missing), "--format", "xml", "SELECT 1"])
    with pytest.raises(UserError, match="bad --param"):
        sql_main(["--db", str(missing), "-p", "no_equals", "SELECT 1"])
    with pytest.raises(UserError, match="invalid choice"):
        db_main(["downgrade", "--db", str(missing)])
    with pytest.raises(UserError, match="--db"):
        db_main(["upgrade"])


def test_db_upgrade_current_history(db_path: Path, capsys: pytest.CaptureFixture) -> None:
    url = normalize_url(str(db_path))
    if db_path.suffix == ".duckdb":
        duckdb.connect(str(db_path)).close()
    else:
        sqlite3.connect(db_path).close()
    assert db_main(["current", "--db", str(db_path)]) == 0
    assert capsys.readouterr().out == "empty\n"
    assert db_main(["upgrade", "--db", str(db_path)]) == 0
    assert capsys.readouterr().out == f"{url}: upgraded empty -> 0001 (head)\n"
    assert db_main(["upgrade", "--db", str(db_path)]) == 0
    assert capsys.readouterr().out == f"{url}: already at revision 0001 (head)\n"
    db_main(["current", "--db", str(db_path)])
    assert capsys.readouterr().out == "0001 (head)\n"
    db_main(["history"])
    assert capsys.readouterr().out.startswith("<base> -> 0001 (head): initial schema")
    db_main(["history", "--db", str(db_path)])
    assert capsys.readouterr().out.startswith("<base> -> 0001 (head, current): ")
