"""`harness-xai sql` and `export` on DuckDB, SQLite and PostgreSQL: output formats (table, csv,
json, parquet), read-only enforcement (statement check AND backend: CTE-wrapped writes, PRAGMA,
ATTACH, COPY, …), bound parameters with injection strings, parquet export of every table, and the
README example queries (run on all backends against one populated store, results compared)."""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from harness_xai.cli import main as cli_main
from harness_xai.errors import UserError
from harness_xai.records import DocOutcome, TaskSummary
from harness_xai.store import Store, query, run_sql
from harness_xai.store.cli import export_main, sql_main
from harness_xai.store.examples import EXAMPLES, markdown, sql_block
from harness_xai.store.models import ALL_TABLES
from test_store_support import (BACKENDS, NASTY, backend, counts, db, dump, make_case, make_run,  # noqa: F401
                                make_skipped, new_db)

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def filled_db(db: str) -> str:
    with Store.open(db) as store:
        run_id = store.ensure_run(make_run())
        store.write_case(run_id, *make_case(doc_id=1))
        store.write_case(run_id, *make_case(doc_id=22))
    return db


def _counts(db: str) -> dict[str, int]:
    with Store.open(db, create=False) as store:
        return counts(store)


# -- formats ---------------------------------------------------------------------------------------
def test_sql_main_table_csv_json(filled_db: str, capsys: pytest.CaptureFixture) -> None:
    query_text = "SELECT doc_id, status, pred_text, delta FROM cases WHERE doc_id >= :lo ORDER BY doc_id"
    assert sql_main(["--db", filled_db, query_text, "--param", "lo=0"]) == 0
    assert capsys.readouterr().out == (
        "doc_id | status     | pred_text     | delta\n"
        "-------+------------+---------------+------\n"
        "     1 | attributed |  <b>wrong</b> |  1.25\n"
        "    22 | attributed |  <b>wrong</b> |  1.25\n"
        "(2 rows)\n"
    )
    sql_main(["--db", filled_db, "--format", "csv",
              "SELECT token FROM token_relevance WHERE case_id = 1 ORDER BY position"])
    assert capsys.readouterr().out.splitlines()[:3] == ["token", "'; DROP TABLE cases; --", "<script>alert('x')</script>"]
    sql_main(["--db", filled_db, "--format", "json", "-p", "d=22", "SELECT doc_id, skip_reason FROM cases WHERE doc_id = :d"])
    assert json.loads(capsys.readouterr().out) == [{"doc_id": 22, "skip_reason": None}]
    sql_main(["--db", filled_db, "SELECT prompt FROM cases WHERE doc_id = 1", "--max-width", "12"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "Q: '; DROP …" and lines[-1] == "(1 row)"


def test_sql_parquet_and_out_file(filled_db: str, tmp_path: Path) -> None:
    target = tmp_path / "tokens.parquet"
    q = "SELECT case_id, position, token, relevance, segment_index FROM token_relevance ORDER BY case_id, position"
    assert cli_main(["sql", "--db", filled_db, "--format", "parquet", "--out", str(target), q]) == 0
    table = pq.read_table(target)
    cols, rows = run_sql(filled_db, q)
    assert table.column_names == cols and [tuple(r.values()) for r in table.to_pylist()] == rows
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".parquet"] == ["tokens.parquet"]
    csv_out = tmp_path / "cases.csv"
    sql_main(["--db", filled_db, "--format", "csv", "-o", str(csv_out), "SELECT doc_id FROM cases ORDER BY 1"])
    assert csv_out.read_text() == "doc_id\n1\n22\n"
    with pytest.raises(UserError, match="--out"):
        sql_main(["--db", filled_db, "--format", "parquet", "SELECT 1"])


# -- read-only -------------------------------------------------------------------------------------
WRITES = [
    "DELETE FROM cases",
    "delete from cases where 1=1",
    "UPDATE cases SET delta = 0",
    "INSERT INTO runs (run_key) VALUES ('x')",
    "DROP TABLE cases",
    "CREATE TABLE evil (x INTEGER)",
    "ALTER TABLE cases ADD COLUMN evil INTEGER",
    "WITH d AS (DELETE FROM cases RETURNING id) SELECT * FROM d",
    "WITH x AS (SELECT 1 AS n) INSERT INTO runs (run_key) SELECT 'x' FROM x",
    "WITH x AS (SELECT 1) REPLACE INTO runs (run_key) VALUES ('x')",
    "EXPLAIN ANALYZE DELETE FROM cases",
    "PRAGMA writable_schema = ON",
    "PRAGMA foreign_keys = OFF",
    "ATTACH '{tmp}/evil.db' AS evil",
    "COPY cases TO '{tmp}/evil.csv'",
    "COPY (SELECT * FROM cases) TO '{tmp}/evil.csv'",
    "SELECT 1; DELETE FROM cases",
    "SELECT 1 -- harmless\n; DROP TABLE cases",
    "/* SELECT */ DELETE FROM cases",
    "VACUUM",
    "CHECKPOINT",
    "SET search_path = evil",
    "BEGIN",
    "TRUNCATE cases",
    "INSTALL httpfs",
]


@pytest.mark.parametrize("statement", WRITES)
def test_write_statements_are_refused(filled_db: str, tmp_path: Path, statement: str) -> None:
    before = dump(filled_db)
    with pytest.raises(UserError) as err:
        run_sql(filled_db, statement.format(tmp=tmp_path))
    assert "read-only" in str(err.value) or "one statement" in str(err.value)
    assert "\n" not in str(err.value)
    assert dump(filled_db) == before
    assert not list(tmp_path.glob("evil*"))


# the backend refuses these by itself when the statement check is bypassed
BACKEND_WRITES = {
    "duckdb": ["DELETE FROM cases", "INSERT INTO runs (run_key) VALUES ('x')", "DROP TABLE cases",
               "ATTACH '{tmp}/evil.duckdb' AS evil", "COPY cases TO '{tmp}/evil.csv'",
               "SELECT * FROM read_csv('{tmp}/../evil.csv')"],
    "sqlite": ["DELETE FROM cases", "INSERT INTO runs (run_key) VALUES ('x')", "DROP TABLE cases",
               "ATTACH '{tmp}/evil.db' AS evil", "PRAGMA writable_schema = ON",
               "WITH x AS (SELECT 1) REPLACE INTO runs (run_key) VALUES ('x')"],
    "postgresql": ["DELETE FROM cases", "WITH d AS (DELETE FROM cases RETURNING id) SELECT * FROM d",
                   "INSERT INTO runs (run_key) VALUES ('x')", "CREATE TABLE evil (x INTEGER)",
                   "SELECT nextval('cases_id_seq')", "COPY cases TO '{tmp}/evil.csv'"],
}


def test_backend_refuses_writes_without_the_statement_check(
    filled_db: str, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(query, "check_read_only", lambda q: None)
    before = dump(filled_db)
    for statement in BACKEND_WRITES[backend]:
        with pytest.raises(UserError, match="SQL error"):
            run_sql(filled_db, statement.format(tmp=tmp_path))
    assert dump(filled_db) == before
    assert not list(tmp_path.glob("evil*"))


READS = [
    ("SELECT 'DELETE FROM cases; DROP TABLE runs' AS s", [("DELETE FROM cases; DROP TABLE runs",)]),
    ('SELECT 1 AS "update"', [(1,)]),
    ("-- drop table cases\nSELECT 2", [(2,)]),
    ("/* ATTACH */ SELECT 3;", [(3,)]),
    ("SELECT replace('abc', 'b', 'x')", [("axc",)]),
    ("WITH x AS (SELECT 4 AS n) SELECT n FROM x", [(4,)]),
    ("SELECT * FROM (SELECT 5) AS t", [(5,)]),
    ("SELECT count(*) FROM cases WHERE prompt LIKE '%DROP TABLE%'", [(2,)]),
]


@pytest.mark.parametrize("statement, rows", READS)
def test_reads_with_write_words_in_literals_pass(filled_db: str, statement: str, rows: list) -> None:
    assert run_sql(filled_db, statement)[1] == rows


def test_postgres_quoting_forms(backend: str, tmp_path: Path) -> None:
    if backend != "postgresql":
        query.check_read_only("SELECT 'it''s DELETE'")  # the doubled quote stays inside the literal
        with pytest.raises(UserError):
            query.check_read_only("SELECT 'x' ; DELETE FROM cases")
        return
    db = new_db(backend, tmp_path)
    Store.open(db).close()
    assert run_sql(db, "SELECT $$DELETE FROM cases$$")[1] == [("DELETE FROM cases",)]
    assert run_sql(db, "SELECT $tag$ DROP $x$ $tag$")[1] == [(" DROP $x$ ",)]
    assert run_sql(db, r"SELECT E'it\'s; DELETE'")[1] == [("it's; DELETE",)]
    with pytest.raises(UserError, match="one statement"):
        run_sql(db, "SELECT $$x$$; DELETE FROM cases")
    with pytest.raises(UserError, match="DELETE is refused"):
        run_sql(db, "SELECT $$x$$ FROM (DELETE FROM cases RETURNING 1) AS d")


# -- bound parameters ------------------------------------------------------------------------------
def test_injection_strings_are_bound_parameters(filled_db: str, capsys: pytest.CaptureFixture) -> None:
    before = dump(filled_db)
    for text in NASTY:
        expected = sum(1 for t in make_case()[0].tokens if t == text) * 2  # two cases
        got = run_sql(filled_db, "SELECT count(*) FROM token_relevance WHERE token = :t", {"t": text})[1]
        assert got == [(expected,)], text
        assert cli_main(["sql", "--db", filled_db, "--format", "json", "-p", f"t={text}",
                         "SELECT count(*) AS n FROM cases WHERE task = :t"]) == 0
        assert json.loads(capsys.readouterr().out) == [{"n": 0}]
    assert dump(filled_db) == before


# -- export ----------------------------------------------------------------------------------------
def test_export_parquet_every_table(filled_db: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "dump"
    assert cli_main(["export", "--format", "parquet", "--db", filled_db, "--out", str(out)]) == 0
    content = dump(filled_db)
    assert capsys.readouterr().out.startswith(f"exported {len(ALL_TABLES)} tables ({sum(map(len, content.values()))} rows)")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["revision"] == "0008" and manifest["rows"] == {k: len(v) for k, v in content.items()}
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{t.name}.parquet" for t in ALL_TABLES] + ["manifest.json"])
    for table in ALL_TABLES:
        got = pq.read_table(out / f"{table.name}.parquet")
        assert got.column_names == [c.name for c in table.columns]
        rows = [tuple(r.values()) for r in got.to_pylist()]
        want = content[table.name]
        if table.name == "runs":  # timestamps: compare as naive datetimes
            rows = [r[:2] + (r[2].replace(tzinfo=None),) + r[3:] for r in rows]
            want = [r[:2] + (r[2].replace(tzinfo=None),) + r[3:] for r in want]
        assert rows == want, table.name
    assert pq.read_table(out / "graph_edges.parquet").schema.field("weight").type == "double"


def test_export_errors(filled_db: str, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        export_main(["--db", filled_db, "--out", str(blocker)])
    with pytest.raises(UserError, match="not found"):
        export_main(["--db", str(tmp_path / "missing.duckdb"), "--out", str(tmp_path / "o")])
    with pytest.raises(UserError, match="invalid choice"):
        export_main(["--db", filled_db, "--out", str(tmp_path / "o"), "--format", "csv"])
    assert not (tmp_path / "o").exists()


# -- example queries -------------------------------------------------------------------------------
def _outcomes(k: int) -> tuple[list[DocOutcome], list[DocOutcome]]:
    """Outcomes of run k: xai_kv docs 0..7, wrong (a case) below 4 - k; xai_arith docs 2..5,
    only doc 5 wrong (its skipped case)."""
    kv = [DocOutcome(d, f"dh{d}", "none", "acc", float(d >= 4 - k), int(d >= 4 - k)) for d in range(8)]
    arith = [DocOutcome(d, f"d{d}", "none", "acc", float(d != 5), int(d != 5)) for d in range(2, 6)]
    return kv, arith


def _populate(db: str) -> None:
    """Three runs (two checkpoints of one model, one bigger model), two tasks, full cases, and
    every document's outcome (doc 3 of xai_kv flips from wrong at step 1000 to right at 2000)."""
    runs = [make_run("a", step=1000, n_params=1_000_000, pretrained="/m/tiny"),
            make_run("b", step=2000, n_params=1_000_000, pretrained="/m/tiny"),
            make_run("c", step=None, n_params=5_000_000, pretrained="/m/small")]
    with Store.open(db) as store:
        for k, run in enumerate(runs):
            run_id = store.ensure_run(run)
            kv, arith = _outcomes(k)
            store.write_task_summaries(run_id, [TaskSummary("xai_kv", "acc", 0.5 + 0.1 * k, 8, 4 - k, "multiple_choice", kv),
                                                TaskSummary("xai_arith", "acc", 0.9, 4, 1, "multiple_choice", arith)])
            for doc_id in range(4 - k):  # doc 0 and 1 fail everywhere, doc 3 only in run a
                store.write_case(run_id, *make_case(doc_id=doc_id, seed=10 * k + doc_id, n_tokens=9 + doc_id, task="xai_kv"))
            store.write_case(run_id, make_skipped(doc_id=5, task="xai_arith", prompt="",
                                                  reason="identical continuations" if k else NASTY[0]))


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("examples")
    dbs = {b: new_db(b, tmp) for b in BACKENDS}
    for db in dbs.values():
        _populate(db)
    return dbs


def _norm(value):
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float):
        return round(value, 9) if math.isfinite(value) else value
    return value


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_query_runs_and_agrees_on_every_backend(populated: dict[str, str], example) -> None:
    results = {b: run_sql(db, example.sql, example.params) for b, db in populated.items()}
    cols, rows = results["duckdb"]
    assert rows, f"{example.name} returned nothing"
    for b, (c, r) in results.items():
        assert c == cols, b
        assert [tuple(_norm(v) for v in row) for row in r] == [tuple(_norm(v) for v in row) for row in rows], b


def test_example_answers(populated: dict[str, str]) -> None:
    by_name = {e.name: e for e in EXAMPLES}
    db = populated["sqlite"]
    worst = run_sql(db, by_name["worst_failures"].sql, {"n": 3})[1]
    deltas = sorted((float(make_case(doc_id=d, seed=10 * k + d)[1].delta) for k in range(3) for d in range(4 - k)),
                    reverse=True)
    assert [r[-1] for r in worst] == pytest.approx(deltas[:3])
    trajectory = run_sql(db, by_name["doc_trajectory"].sql, {"task": "xai_kv", "doc_id": 3})[1]
    assert [(r[0], r[1], r[4], r[5]) for r in trajectory] == [  # every run evaluated doc 3
        ("small", None, "correct", None), ("tiny", 1000, "wrong", "attributed"),
        ("tiny", 2000, "correct", None)]
    hard = run_sql(db, by_name["hard_docs"].sql)[1]
    assert sorted((r[0], r[1]) for r in hard) == [("xai_arith", 5), ("xai_kv", 0), ("xai_kv", 1)]
    skips = run_sql(db, by_name["skip_reasons"].sql)[1]
    assert ("xai_arith", NASTY[0], 1) in skips and ("xai_arith", "identical continuations", 2) in skips
    acc = run_sql(db, by_name["accuracy_and_failures"].sql)[1]
    assert [(r[0], r[1], r[2], r[7], r[8]) for r in acc] == [
        ("small", None, "xai_arith", 0, 1), ("small", None, "xai_kv", 2, 0),
        ("tiny", 1000, "xai_arith", 0, 1), ("tiny", 1000, "xai_kv", 4, 0),
        ("tiny", 2000, "xai_arith", 0, 1), ("tiny", 2000, "xai_kv", 3, 0)]
    flips = run_sql(db, by_name["checkpoint_flips"].sql)[1]
    assert flips == [("tiny", "/m/tiny", "xai_kv", 3, "none", 1000, 2000)]
    shares = run_sql(db, by_name["segment_shares_by_size"].sql)[1]
    for n_params in (1_000_000, 5_000_000):
        assert sum(r[2] for r in shares if r[0] == n_params) == pytest.approx(1.0)


def test_checkpoint_flips_compare_consecutive_evaluated_checkpoints(tmp_path: Path) -> None:
    """A flip is reported between neighbouring checkpoints that evaluated the doc (a checkpoint
    that did not evaluate it is skipped over), once per flip; other models and filters are apart."""
    outcome = {  # (model, step) → {(doc_id, filter): correct}; a missing doc = not evaluated
        ("/m/a", 100): {(1, "none"): 0, (2, "none"): 1, (3, "none"): 0, (4, "none"): 0, (4, "strict"): 1},
        ("/m/a", 200): {(1, "none"): 0, (2, "none"): 0, (4, "none"): 1, (4, "strict"): 0},
        ("/m/a", 300): {(1, "none"): 1, (2, "none"): 1, (3, "none"): 1, (4, "none"): 0, (4, "strict"): 1},
        ("/m/b", 150): {(1, "none"): 1},
        ("/m/b", 50): {(1, "none"): 0},
    }
    db = str(tmp_path / "flips.sqlite")
    with Store.open(db) as store:
        for (model, step), docs in outcome.items():
            run_id = store.ensure_run(make_run(f"{model}@{step}", step=step, pretrained=model))
            store.write_task_summaries(run_id, [TaskSummary("t", "acc", None, len(docs), 0, "multiple_choice", [
                DocOutcome(d, f"h{d}", f, "acc", float(c), c) for (d, f), c in docs.items()])])
    example = next(e for e in EXAMPLES if e.name == "checkpoint_flips")
    assert run_sql(db, example.sql, example.params)[1] == [
        ("a", "/m/a", "t", 1, "none", 200, 300), ("a", "/m/a", "t", 2, "none", 200, 300),
        ("a", "/m/a", "t", 3, "none", 100, 300), ("a", "/m/a", "t", 4, "none", 100, 200),
        ("a", "/m/a", "t", 4, "strict", 200, 300), ("b", "/m/b", "t", 1, "none", 50, 150)]


def test_readme_documents_exactly_the_examples() -> None:
    text = README.read_text(encoding="utf-8")
    documented = re.findall(r"```sql\n-- (\w+): .*?```", text, flags=re.S)
    assert documented == [e.name for e in EXAMPLES], (
        "README.md must show the store example queries: paste `python -m harness_xai.store.examples`")
    for example in EXAMPLES:
        assert sql_block(example) in text, example.name
    assert sql_block(EXAMPLES[0]) in markdown()
