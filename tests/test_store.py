"""The parametrized store suite: every test runs on DuckDB, SQLite and PostgreSQL (real files and a
real server): open/migrate, round trip of every Case and Explanation field, idempotency, atomicity,
skipped cases, task summaries with every document's outcome (replace semantics, bulk path), the writer
lock on DuckDB/SQLite files, and the `db` command."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import duckdb
import numpy as np
import pytest
import sqlalchemy as sa

from harness_xai.cli import main as cli_main
from harness_xai.errors import UserError
from harness_xai.records import ATTRIBUTED, PENDING, DocOutcome, TaskSummary
from harness_xai.store import Store, bulk, migrate, normalize_url, run_sql, writer
from harness_xai.store.cli import db_main
from harness_xai.store.engine import display_url
from harness_xai.store.models import (ALL_TABLES, cases, doc_outcomes, faithfulness, graph_edges, graph_nodes,
                                      graphs, head_relevance, layer_relevance, runs, state_relevance,
                                      task_results, token_relevance)
from test_store_support import (NASTY, backend, counts, db, db_path, make_case, make_run,  # noqa: F401
                                make_skipped)

EMPTY_COUNTS = {t.name: 0 for t in ALL_TABLES}


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
    for url in ("duckdb:///:memory:", "postgresql+psycopg://u:p@host:5432/db",
                "postgresql://u@host/db", f"sqlite:///{tmp_path.resolve()}/abs.sqlite"):
        assert normalize_url(url) == url
    # a relative file in a URL is resolved, so messages name the file actually used (issue 18)
    assert normalize_url("sqlite:///rel.sqlite") == f"sqlite:///{tmp_path.resolve()}/rel.sqlite"
    assert display_url("postgresql://u:secret@host/db") == "postgresql://u:***@host/db"


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
def test_open_creates_migrates_and_reopens(db: str) -> None:
    with Store.open(db) as store:
        assert store.url == normalize_url(db)
        with store.engine.connect() as conn:
            assert migrate.current_revision(conn) == migrate.head_revision()
            assert {t.name for t in ALL_TABLES} <= set(sa.inspect(conn).get_table_names())
    with Store.open(db, create=False) as store:  # second open: no migration, works
        assert counts(store) == EMPTY_COUNTS


def test_open_missing_without_create(db_path: Path) -> None:
    with pytest.raises(UserError, match=str(db_path)):
        Store.open(str(db_path), create=False)
    assert not db_path.exists()


def _make_empty(db: str) -> None:
    """An existing database without any table (a PostgreSQL database from new_db already is)."""
    url = normalize_url(db)
    if url.startswith("duckdb"):
        duckdb.connect(db).close()
    elif url.startswith("sqlite"):
        sqlite3.connect(db).close()


def test_open_empty_database_without_create_is_refused(db: str) -> None:
    _make_empty(db)
    with pytest.raises(UserError, match="db upgrade"):
        Store.open(db, create=False)


def _tables(db: str) -> set[str]:
    engine = writer.make_engine(normalize_url(db))
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def test_failed_migration_leaves_nothing(db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_upgrade = migrate.upgrade

    def upgrade_then_fail(conn: sa.Connection, target: str = "head") -> None:
        real_upgrade(conn, target)  # all DDL runs, then the migration fails: everything rolls back
        raise RuntimeError("migration failed")

    monkeypatch.setattr(migrate, "upgrade", upgrade_then_fail)
    with pytest.raises(RuntimeError, match="migration failed"):
        Store.open(db)
    if normalize_url(db).startswith("postgresql"):
        assert _tables(db) == set()
    else:
        assert list(tmp_path.iterdir()) == []


def test_tables_without_revision_are_refused(db: str) -> None:
    with Store.open(db) as store:
        with store.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM alembic_version"))
    with pytest.raises(UserError, match="no schema revision"):
        Store.open(db)


@pytest.mark.parametrize("suffix", ["duckdb", "sqlite"])
def test_special_characters_in_file_name(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"odd name?#%@:x.{suffix}"
    with Store.open(str(path)) as store:
        store.ensure_run(make_run())
    assert path.is_file() and [p.name for p in tmp_path.iterdir() if not p.name.endswith(".wal")] == [path.name]
    assert run_sql(str(path), "SELECT run_key FROM runs") == (["run_key"], [("run-1",)])


# -- writing ---------------------------------------------------------------------------------------
def _rows(conn: sa.Connection, table: sa.Table) -> list[sa.Row]:
    return conn.execute(sa.select(table).order_by(*table.primary_key.columns)).all()


def test_round_trip_every_field(db: str) -> None:
    run = make_run()
    built = {"contrast": {"rule": "first_difference", "note": NASTY[1]}, "budget": None}
    case, ex = make_case(built=built)
    with Store.open(db) as store:
        run_id = store.ensure_run(run)
        store.write_task_summaries(run_id, [
            TaskSummary("tiny_mc", "acc", 0.25, 8, 6, "multiple_choice"),
            TaskSummary("arc_easy", "acc_norm", np.float64(0.5), 4, 2, "multiple_choice"),
        ])
        store.write_task_summaries(run_id, [TaskSummary("tiny_mc", "acc", 0.375, 8, 5, "multiple_choice")])
        case_id = store.write_case(run_id, case, ex)
        assert store.done_keys(run_id) == {case.unit_key}
        with store.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().one()
            summaries = _rows(conn, task_results)
            crow = conn.execute(sa.select(cases).where(cases.c.id == case_id)).mappings().one()
            toks, layers, states, heads, curve, graph, nodes, edges = (
                _rows(conn, t) for t in (token_relevance, layer_relevance, state_relevance, head_relevance,
                                         faithfulness, graphs, graph_nodes, graph_edges))
    n = len(case.tokens)
    assert row["run_key"] == run.run_key and row["model_args"] == run.model_args and row["step"] == 3000
    assert row["n_params"] == run.n_params and row["revision"] == "step3000"
    assert json.loads(row["tasks"]) == run.tasks and json.loads(row["config"]) == run.config
    assert row["created_at"].replace(tzinfo=None).isoformat() == "2026-11-24T07:30:15"  # naive UTC
    assert [tuple(s) for s in summaries] == [
        (run_id, "arc_easy", "acc_norm", 0.5, 4, 2, "multiple_choice"),
        (run_id, "tiny_mc", "acc", 0.375, 8, 5, "multiple_choice"),
    ]
    for name in ("task", "doc_id", "doc_hash", "prompt_hash", "target_hash", "filter", "metric",
                 "prompt", "gold_index", "pred_text", "gold_text", "position", "wrong_token_id",
                 "gold_token_id", "wrong_token", "gold_token", "ll_pred", "ll_gold",
                 "output_type", "contrast", "ll_error"):
        assert crow[name] == getattr(case, name), name
    assert case.status == PENDING and crow["status"] == ATTRIBUTED  # explained: stored as attributed
    assert crow["method"] == ex.method == "attnlrp"
    assert crow["pred_index"] == 2 and crow["delta"] == 1.25 and crow["skip_reason"] is None
    assert crow["n_tokens"] == n and crow["aopc"] == 0.5 and crow["aopc_random"] == 0.2
    # the method's params beside how the contrast was built (case.built)
    assert json.loads(crow["method_params"]) == {**ex.params, **built,
                                                 "faithfulness": {"baseline_token_id": 0, "orders": 3}}
    # tokens: nasty text byte for byte, ids, relevance, segments
    assert [t.token for t in toks] == list(case.tokens) and [t.position for t in toks] == list(range(n))
    assert [t.token_id for t in toks] == list(case.token_ids)
    assert [t.segment for t in toks] == list(case.segments)
    assert [t.segment_index for t in toks] == list(case.segment_index)
    assert [t.evidence for t in toks] == [None] * n  # no evidence positions: unknown
    np.testing.assert_allclose([t.relevance for t in toks], ex.token_relevance, rtol=1e-6)
    got = np.array([r.relevance for r in layers]).reshape(ex.layer_relevance.shape)  # (L+1, n)
    np.testing.assert_allclose(got, ex.layer_relevance, rtol=1e-6)
    assert [(r.layer, r.position) for r in layers][: n + 1] == [(0, p) for p in range(n)] + [(1, 0)]
    # states: kind, 1-based block, position
    for kind, arr in ex.state_relevance.items():
        cells = [r for r in states if r.kind == kind]
        assert {r.layer for r in cells} == {1, 2, 3}
        np.testing.assert_allclose(np.array([r.relevance for r in cells]).reshape(arr.shape), arr, rtol=1e-6)
    assert [(r.layer, r.head, r.position) for r in heads][:2] == [(1, 0, 0), (1, 0, 1)]
    np.testing.assert_allclose(np.array([r.relevance for r in heads]).reshape(ex.head_relevance.shape),
                               ex.head_relevance, rtol=1e-6)
    f = ex.faithfulness
    assert [(r.step, r.n_removed) for r in curve] == list(enumerate(f.n_removed))
    np.testing.assert_allclose([[r.fraction, r.delta_relevance, r.delta_random] for r in curve],
                               np.array([f.fractions, f.delta_relevance, f.delta_random]).T)
    (g,) = graph
    assert json.loads(g.node_layers) == ex.graph.node_layers and g.n_edges == len(edges) == 6
    assert g.mass_kept == 0.8 and g.formation_layer == 2 and json.loads(g.params) == {"top_k": 2}
    assert json.loads(g.metrics)["n_edges"] == 6
    expected_nodes = {(int(l), int(p)) for l, p in zip(*np.nonzero(ex.graph.node_relevance))}
    assert {(r.layer, r.position) for r in nodes} == expected_nodes and g.n_nodes == len(nodes)
    for r in nodes:
        assert r.relevance == pytest.approx(float(ex.graph.node_relevance[r.layer, r.position]), rel=1e-6)
    assert sorted((r.source_layer, r.source_position, r.target_layer, r.target_position) for r in edges) == sorted(
        zip(ex.graph.source_layer.tolist(), ex.graph.source_position.tolist(),
            ex.graph.target_layer.tolist(), ex.graph.target_position.tolist()))
    # the same rows through the read-only SQL path, with a bound parameter
    cols, rows = run_sql(db, "SELECT token FROM token_relevance WHERE token = :t", {"t": NASTY[0]})
    assert cols == ["token"] and rows == [(NASTY[0],)]


def test_idempotent_writes(db: str) -> None:
    with Store.open(db) as store:
        run_id = store.ensure_run(make_run())
        assert store.ensure_run(make_run()) == run_id
        other = store.ensure_run(make_run("run-2"))
        assert other != run_id
        first = store.write_case(run_id, *make_case(doc_id=1))
        second_case = store.write_case(run_id, *make_case(doc_id=2))
        before = counts(store)
        assert store.write_case(run_id, *make_case(doc_id=1, seed=5)) == first
        assert counts(store) == before
        assert store.write_case(other, *make_case(doc_id=1)) not in (first, second_case)  # other run: new case
    with Store.open(db) as store:  # across sessions too
        assert store.ensure_run(make_run()) == run_id
        after = counts(store)
        assert store.write_case(run_id, *make_case(doc_id=2)) == second_case
        assert counts(store) == after
    n = len(NASTY)
    assert after["runs"] == 2 and after["cases"] == 3 and after["graphs"] == 3
    assert after["token_relevance"] == 3 * n and after["layer_relevance"] == 3 * 4 * n
    assert after["state_relevance"] == 3 * 3 * 3 * n and after["head_relevance"] == 3 * 3 * 2 * n


@pytest.mark.parametrize("failing_table", ["token_relevance", "layer_relevance", "graph_edges"])
def test_write_case_is_atomic(db: str, failing_table: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real_insert = bulk.insert_columns

    def duplicate_first_row(conn: sa.Connection, table: sa.Table, columns: dict) -> None:
        if table.name == failing_table:  # repeat the first row: a real primary-key violation
            n = max(len(v) for v in columns.values() if isinstance(v, (list, np.ndarray)))
            columns = {k: (np.concatenate([v, v[:1]]) if isinstance(v, np.ndarray) else v + v[:1])
                       if isinstance(v, (list, np.ndarray)) and len(v) == n else v for k, v in columns.items()}
        real_insert(conn, table, columns)

    with Store.open(db) as store:
        run_id = store.ensure_run(make_run())
        kept = store.write_case(run_id, *make_case(doc_id=1))
        before = counts(store)
        monkeypatch.setattr(bulk, "insert_columns", duplicate_first_row)
        with pytest.raises(sa.exc.IntegrityError):
            store.write_case(run_id, *make_case(doc_id=2))
        assert counts(store) == before  # no case row, no rows of any table of the failed case
        assert store.done_keys(run_id) == {make_case(doc_id=1)[0].unit_key}
        monkeypatch.setattr(bulk, "insert_columns", real_insert)
        bad, ex = make_case(doc_id=3)
        ex = replace(ex, head_relevance=ex.head_relevance[:, :, :-1])  # shape mismatch: refused before writing
        with pytest.raises(ValueError, match="head_relevance shape"):
            store.write_case(run_id, bad, ex)
        assert counts(store) == before
        assert store.write_case(run_id, *make_case(doc_id=2)) not in (None, kept)  # retry succeeds
        assert counts(store)["cases"] == 2


@pytest.mark.parametrize("mutate, message", [  # (case, explanation) → a changed pair
    (lambda c, e: (replace(c, segments=c.segments[:-1]), e), "segment labels"),
    (lambda c, e: (replace(c, segments=("bogus",) * len(c.tokens)), e), "unknown segment"),
    (lambda c, e: (c, replace(e, state_relevance={**e.state_relevance, "mid": e.state_relevance["mid"][:, :-1]})),
     "state_relevance"),
    (lambda c, e: (c, replace(e, graph=replace(e.graph, target_position=e.graph.target_position + 100))),
     "outside node_relevance"),
    (lambda c, e: (c, replace(e, faithfulness=replace(e.faithfulness, n_removed=[1]))), "faithfulness"),
    (lambda c, e: (c, replace(e, layer_relevance=e.layer_relevance[:, :-1])), "layer_relevance shape"),
    (lambda c, e: (c, replace(e, expert_relevance=np.ones((3, 4, len(c.tokens) + 1)))),
     "expert_relevance"),
])
def test_bad_shapes_are_refused_before_writing(tmp_path: Path, mutate, message: str) -> None:
    case, ex = mutate(*make_case())
    with Store.open(str(tmp_path / "x.duckdb")) as store:
        run_id = store.ensure_run(make_run())
        with pytest.raises(ValueError, match=message):
            store.write_case(run_id, case, ex)
        assert counts(store)["cases"] == 0


def test_expert_relevance_stores_the_selected_experts(db: str) -> None:
    """MoE: only the non-zero (selected) entries of (layers, experts, tokens) become rows; a
    (layer, expert) total is their SUM; a dense case writes none."""
    from harness_xai.store.models import expert_relevance

    case, ex = make_case()
    n = len(case.tokens)
    rng = np.random.default_rng(5)
    rel = rng.normal(size=(3, 4, n)).astype(np.float32)
    top2 = np.argsort(-np.abs(rel), axis=1)[:, :2]  # two selected experts per (layer, token)
    keep = np.zeros_like(rel, dtype=bool)
    np.put_along_axis(keep, top2, True, axis=1)
    ex = replace(ex, expert_relevance=np.where(keep, rel, 0.0).astype(np.float32))
    with Store.open(db) as store:
        run_id = store.ensure_run(make_run())
        case_id = store.write_case(run_id, case, ex)
        store.write_case(run_id, *make_case(doc_id=8))  # dense: no expert rows
        with store.engine.connect() as conn:
            rows = conn.execute(sa.select(expert_relevance).order_by(
                expert_relevance.c.layer, expert_relevance.c.expert,
                expert_relevance.c.position)).all()
    assert len(rows) == 3 * 2 * n and {r.case_id for r in rows} == {case_id}
    got = np.zeros_like(rel)
    for r in rows:
        got[r.layer - 1, r.expert, r.position] = r.relevance
    np.testing.assert_allclose(got, ex.expert_relevance, rtol=1e-6)
    totals = run_sql(db, "SELECT layer, expert, sum(relevance) FROM expert_relevance "
                         "GROUP BY layer, expert ORDER BY layer, expert")[1]
    for layer, expert, total in totals:
        assert total == pytest.approx(float(ex.expert_relevance[layer - 1, expert].sum()), rel=1e-5)


def test_rollouts_are_stored_in_order_for_attributed_and_skipped_cases(db: str) -> None:
    """Every ``Case.rollouts`` entry becomes one ``rollouts`` row, in the order tried, text bound
    (``<script>``, unicode, quotes); a skipped case keeps its rollouts; a case without writes none."""
    from harness_xai.records import Rollout
    from harness_xai.store.models import rollouts

    tried = tuple(Rollout(position=p, model_token_id=10 + p, model_token=f"<b>{p}",
                          alternative_token_id=50 + i,
                          alternative_token=f" a{i}", rank=1 + i % 4, margin=0.125 * i,
                          correct=i == 4, text=f"<script>alert('{i}')</script> é\u2028 '; --",
                          n_tokens=6 - p)
                  for i, p in enumerate((0, 0, 2, 2, 3)))
    case, ex = make_case()
    skipped, _ = make_case(doc_id=8)
    skipped = skipped.skipped("no-flip-within-budget:pass@1")
    with Store.open(db) as store:
        run_id = store.ensure_run(make_run())
        first = store.write_case(run_id, replace(case, rollouts=tried), ex)
        second = store.write_case(run_id, replace(skipped, rollouts=tried[:2]))
        store.write_case(run_id, *make_case(doc_id=9))  # no rollouts: no rows
        with store.engine.connect() as conn:
            rows = conn.execute(sa.select(rollouts).order_by(rollouts.c.case_id,
                                                             rollouts.c.rollout)).all()
    assert [(r.case_id, r.rollout) for r in rows] == \
        [(first, i) for i in range(5)] + [(second, 0), (second, 1)]
    for row, want in zip(rows, tried + tried[:2]):
        assert (row.position, row.model_token_id, row.model_token, row.alternative_token_id,
                row.alternative_token, row.rank, row.n_tokens, row.text) == \
            (want.position, want.model_token_id, want.model_token, want.alternative_token_id,
             want.alternative_token, want.rank, want.n_tokens, want.text)
        assert row.margin == pytest.approx(want.margin) and row.correct == int(want.correct)
    assert run_sql(db, "SELECT count(*) FROM rollouts WHERE correct = 1")[1] == [(1,)]


def test_skipped_case_writes_only_case_row(db: str) -> None:
    skipped = make_skipped(doc_id=4, task="tiny_mc", reason="identical continuations")
    with Store.open(db) as store:
        run_id = store.ensure_run(make_run(step=None))
        case_id = store.write_case(run_id, skipped)
        assert counts(store) == {**EMPTY_COUNTS, "runs": 1, "cases": 1}
        with store.engine.connect() as conn:
            row = conn.execute(sa.select(cases).where(cases.c.id == case_id)).mappings().one()
            assert conn.execute(sa.select(runs.c.step, runs.c.revision)).one() == (None, None)
        assert row["status"] == "skipped" and row["skip_reason"] == "identical continuations"
        assert row["n_tokens"] is None and row["delta"] is None and row["contrast"] == "token"
        assert row["method_params"] is None and row["aopc"] is None
        # a case skipped after it was built (Case.skipped): no token rows, how it was built kept
        budget = make_case(doc_id=5)[0].skipped("over the token budget", budget={"max_tokens": 4})
        budget_id = store.write_case(run_id, budget)
        assert counts(store) == {**EMPTY_COUNTS, "runs": 1, "cases": 2}
        with store.engine.connect() as conn:
            row = conn.execute(sa.select(cases).where(cases.c.id == budget_id)).mappings().one()
        assert row["status"] == "skipped" and row["skip_reason"] == "over the token budget"
        assert row["n_tokens"] is None and row["delta"] is None and row["method"] is None
        assert json.loads(row["method_params"]) == {"budget": {"max_tokens": 4}}


def test_large_case_through_bulk_path(db: str) -> None:
    """Thousands of rows per table (several bulk chunks on the way) arrive exactly."""
    case, ex = make_case(n_tokens=700, n_layers=6, n_heads=4, seed=3)
    with Store.open(db) as store:
        run_id = store.ensure_run(make_run())
        case_id = store.write_case(run_id, case, ex)
        with store.engine.connect() as conn:
            heads = conn.execute(sa.select(head_relevance.c.relevance).where(head_relevance.c.case_id == case_id)
                                 .order_by(head_relevance.c.layer, head_relevance.c.head,
                                           head_relevance.c.position)).scalars().all()
            total = conn.execute(sa.select(sa.func.sum(state_relevance.c.relevance))).scalar()
    np.testing.assert_allclose(np.array(heads).reshape(6, 4, 700), ex.head_relevance, rtol=1e-6)
    assert total == pytest.approx(sum(float(a.astype(np.float64).sum()) for a in ex.state_relevance.values()))


def _outcomes(conn: sa.Connection) -> list[tuple]:
    return [tuple(r) for r in _rows(conn, doc_outcomes)]


def test_task_summaries_write_doc_outcomes_with_replace_semantics(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every outcome arrives through the bulk path (one insert per task, even for 10k documents);
    rewriting a task replaces all its rows (fewer docs, flipped outcomes, none at all) and leaves
    other tasks and runs alone; bad outcomes are refused before anything is written."""
    n = 10_000
    big = [DocOutcome(d, f"h{d}", "none", "acc", float(d % 3 != 0), int(d % 3 != 0)) for d in range(n)]
    nasty = [DocOutcome(d, NASTY[d], NASTY[-1 - d], None if d % 2 else "exact_match",
                        None if d % 3 == 0 else 0.5 * d, None if d % 3 == 0 else d % 2)
             for d in range(len(NASTY))]
    nasty.append(DocOutcome(np.int64(0), NASTY[0], "strict-match", "exact_match", np.float64(1.0), np.int64(1)))
    bulk_calls: list[int] = []
    real_insert = bulk.insert_columns

    def spy(conn: sa.Connection, table: sa.Table, columns: dict) -> None:
        if table.name == "doc_outcomes":
            bulk_calls.append(len(columns["doc_id"]))
        real_insert(conn, table, columns)

    monkeypatch.setattr(bulk, "insert_columns", spy)
    with Store.open(db) as store:
        run_id, other = store.ensure_run(make_run()), store.ensure_run(make_run("run-2"))
        store.write_task_summaries(run_id, [TaskSummary("big", "acc", 2 / 3, n, n // 3 + 1, "multiple_choice", big),
                                            TaskSummary("odd", "exact_match", 0.5, 8, 2, "generate_until", nasty)])
        store.write_task_summaries(other, [TaskSummary("big", "acc", 1.0, 1, 0, "multiple_choice",
                                                       [DocOutcome(0, "h0", "none", "acc", 1.0, 1)])])
        assert bulk_calls == [n, len(nasty), 1]
        with store.engine.connect() as conn:
            rows = _outcomes(conn)
        assert len(rows) == n + len(nasty) + 1
        assert sorted(r for r in rows if r[0] == run_id and r[1] == "odd") == sorted(  # any text collation
            (run_id, "odd", int(o.doc_id), o.doc_hash, o.filter, o.metric, None if o.value is None else float(o.value),
             None if o.correct is None else int(o.correct)) for o in nasty)
        got_big = [r for r in rows if r[0] == run_id and r[1] == "big"]
        assert got_big == [(run_id, "big", d, f"h{d}", "none", "acc", float(d % 3 != 0), int(d % 3 != 0))
                           for d in range(n)]
        with store.engine.connect() as conn:
            assert tuple(conn.execute(sa.text(
                "SELECT sum(correct), count(*) - count(correct) FROM doc_outcomes WHERE task = 'big' "
                "AND run_id = :r"), {"r": run_id}).one()) == (n - (n // 3 + 1), 0)
        # replace "big": fewer documents, flipped outcomes; "odd" and the other run are untouched
        smaller = [DocOutcome(d, f"h{d}", "none", "acc", 1.0 - float(d % 3 != 0), int(d % 3 == 0)) for d in range(5)]
        store.write_task_summaries(run_id, [TaskSummary("big", "acc", 0.4, 5, 3, "multiple_choice", smaller)])
        with store.engine.connect() as conn:
            after = _outcomes(conn)
            summary = conn.execute(sa.select(task_results.c.value, task_results.c.n_samples).where(
                task_results.c.run_id == run_id, task_results.c.task == "big")).one()
        assert [r[2:] for r in after if r[0] == run_id and r[1] == "big"] == [
            (d, f"h{d}", "none", "acc", 1.0 - float(d % 3 != 0), int(d % 3 == 0)) for d in range(5)]
        assert [r for r in after if r[1] == "odd" or r[0] == other] == [r for r in rows if r[1] == "odd" or r[0] == other]
        assert tuple(summary) == (0.4, 5)
        # a summary without outcomes removes the task's rows (replace, like task_results)
        store.write_task_summaries(run_id, [TaskSummary("big", "acc", 0.4, 5, 3, "multiple_choice")])
        with store.engine.connect() as conn:
            assert [r for r in _outcomes(conn) if r[0] == run_id and r[1] == "big"] == []
            before = _outcomes(conn), _rows(conn, task_results)
        # refused before writing: a repeated key, a correct outside {0, 1, None}
        for bad, message in (([smaller[0], smaller[0]], "given twice"),
                             ([DocOutcome(1, "h", "none", "acc", 2.0, 2)], "correct must be")):
            with pytest.raises(ValueError, match=message):
                store.write_task_summaries(run_id, [TaskSummary("odd", "acc", 0.0, 1, 1, "multiple_choice"),
                                                    TaskSummary("big", "acc", 0.0, 1, 1, "multiple_choice", bad)])
            with store.engine.connect() as conn:
                assert (_outcomes(conn), _rows(conn, task_results)) == before


def test_task_summaries_are_atomic(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while inserting outcomes rolls back the deletes and the task_results rows too."""
    outcomes = [DocOutcome(d, f"h{d}", "none", "acc", 0.0, 0) for d in range(4)]
    with Store.open(db) as store:
        run_id = store.ensure_run(make_run())
        store.write_task_summaries(run_id, [TaskSummary("t", "acc", 0.0, 4, 4, "multiple_choice", outcomes)])
        with store.engine.connect() as conn:
            before = _outcomes(conn), _rows(conn, task_results)
        real_insert = bulk.insert_columns

        def duplicate_first_row(conn: sa.Connection, table: sa.Table, columns: dict) -> None:
            if table.name == "doc_outcomes":  # a real primary-key violation inside the transaction
                columns = {k: v + v[:1] if isinstance(v, list) else v for k, v in columns.items()}
            real_insert(conn, table, columns)

        monkeypatch.setattr(bulk, "insert_columns", duplicate_first_row)
        flipped = [DocOutcome(d, f"h{d}", "none", "acc", 1.0, 1) for d in range(3)]
        with pytest.raises(sa.exc.IntegrityError):
            store.write_task_summaries(run_id, [TaskSummary("t", "acc", 1.0, 3, 0, "multiple_choice", flipped)])
        with store.engine.connect() as conn:
            assert (_outcomes(conn), _rows(conn, task_results)) == before


# -- one writer per file ---------------------------------------------------------------------------
def _hold_writer(path: Path) -> subprocess.Popen:
    code = ("import sys, time\nfrom harness_xai.store import Store\n"
            "s = Store.open(sys.argv[1])\nprint('ok', flush=True)\ntime.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "ok"
    return holder


def test_second_writer_is_refused_with_path_and_pid(db_path: Path, capsys: pytest.CaptureFixture) -> None:
    Store.open(str(db_path)).close()
    holder = _hold_writer(db_path)
    try:
        start = time.monotonic()
        with pytest.raises(UserError) as err:
            Store.open(str(db_path))
        assert time.monotonic() - start < 5  # refused at once, not after a lock timeout
        message = str(err.value)
        assert f"database {db_path} is in use by another process (pid {holder.pid}" in message
        assert "\n" not in message
        assert cli_main(["db", "upgrade", "--db", str(db_path)]) == 2  # the CLI: exit 2, one line
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and str(db_path) in lines[0] and f"pid {holder.pid}" in lines[0]
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # a killed writer leaves no stale lock
        holder.wait()
    with Store.open(str(db_path)) as store:
        assert store.ensure_run(make_run()) >= 1


# -- db command ------------------------------------------------------------------------------------
def test_db_upgrade_current_history(db: str, capsys: pytest.CaptureFixture) -> None:
    url = display_url(normalize_url(db))
    head = migrate.head_revision()
    _make_empty(db)
    assert db_main(["current", "--db", db]) == 0
    assert capsys.readouterr().out == "empty\n"
    assert db_main(["upgrade", "--db", db]) == 0
    assert capsys.readouterr().out == f"{url}: upgraded empty -> {head} (head)\n"
    assert db_main(["upgrade", "--db", db]) == 0
    assert capsys.readouterr().out == f"{url}: already at revision {head} (head)\n"
    db_main(["current", "--db", db])
    assert capsys.readouterr().out == f"{head} (head)\n"
    db_main(["history"])
    lines = capsys.readouterr().out.splitlines()
    newest = migrate.script_directory().get_revision(head)  # the head's own line comes first
    assert lines[0].startswith(f"{newest.down_revision} -> {head} (head): "
                               f"{newest.doc.strip()[:30]}")
    assert lines[-1].startswith("<base> -> 0001: initial schema")
    db_main(["history", "--db", db])
    assert capsys.readouterr().out.startswith(f"{newest.down_revision} -> {head} (head, current): ")


def test_db_argument_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.duckdb"
    with pytest.raises(UserError, match="not found"):
        db_main(["current", "--db", str(missing)])
    assert not missing.exists()
    with pytest.raises(UserError, match="invalid choice"):
        db_main(["downgrade", "--db", str(missing)])
    with pytest.raises(UserError, match="--db"):
        db_main(["upgrade"])


def test_duckdb_store_killed_right_after_creation_reopens(tmp_path: Path) -> None:
    """DuckDB 1.5 cannot replay a WAL holding the migration's ALTER TABLE … ADD COLUMN (see
    store/duckfile.py); the store is therefore created checkpointed. A process SIGKILLed right
    after creating the store and writing a case leaves a file that opens with that case."""
    path = tmp_path / "killed.duckdb"
    code = ("import os, signal, sys\nsys.path.insert(0, sys.argv[2])\n"
            "from harness_xai.store import Store\nfrom factory import make_case, make_run\n"
            "s = Store.open(sys.argv[1])\ns.write_case(s.ensure_run(make_run()), *make_case())\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(Path(__file__).parent)])
    assert proc.returncode == -signal.SIGKILL
    assert Path(str(path) + ".wal").exists()  # the case is only in the WAL: replay must work
    assert run_sql(str(path), "SELECT count(*) FROM token_relevance")[1] == [(len(NASTY),)]
    with Store.open(str(path)) as store:
        assert counts(store)["cases"] == 1


def test_concurrent_writers_share_a_postgres_store(tmp_path: Path) -> None:
    """Two processes open the same new PostgreSQL store at once and write overlapping cases: one
    migrates while the other waits; every unit key is stored once."""
    from test_store_support import new_db

    db = new_db("postgresql", tmp_path)
    code = ("import sys\nsys.path.insert(0, sys.argv[2])\nfrom harness_xai.store import Store\n"
            "from factory import make_case, make_run\n"
            "with Store.open(sys.argv[1]) as s:\n    r = s.ensure_run(make_run())\n"
            "    for d in range(12):\n        s.write_case(r, *make_case(doc_id=d))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, db, str(Path(__file__).parent)]) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert run_sql(db, "SELECT count(*), count(DISTINCT doc_id) FROM cases")[1] == [(12, 12)]
    assert run_sql(db, "SELECT count(*) FROM runs")[1] == [(1,)]
    assert run_sql(db, "SELECT count(*) FROM token_relevance")[1] == [(12 * len(NASTY),)]


def test_status_and_explanation_must_agree(db):
    """A pending case is only stored with its explanation and a skipped one only without: a
    pending case stored alone would count as done and never be explained on a resume."""
    case, ex = make_case()
    skipped = make_skipped()
    with Store.open(db) as store:
        run_id = store.ensure_run(make_run())
        with pytest.raises(ValueError, match="pending case written without an explanation"):
            store.write_case(run_id, case)
        with pytest.raises(ValueError, match="skipped case written with an explanation"):
            store.write_case(run_id, skipped, ex)
        assert store.done_keys(run_id) == set()
        assert counts(store)["cases"] == 0


def test_write_cases_equals_one_case_at_a_time(db: str, tmp_path: Path) -> None:
    """``write_cases`` (one transaction, one bulk insert per child table for several cases: what
    the runner uses for short cases) stores exactly what ``write_case`` stores case by case —
    every table, every row, in both stores — and returns the stored id of a case already there."""
    pairs = [make_case(doc_id=d, seed=d, n_tokens=5 + d) for d in range(4)]
    pairs.append((make_skipped(doc_id=9), None))
    pairs.append(make_case(doc_id=10, seed=3, full=False))
    other = f"sqlite:///{tmp_path / 'one_at_a_time.sqlite'}"
    with Store.open(db) as batched, Store.open(other) as single:
        run_b, run_s = batched.ensure_run(make_run()), single.ensure_run(make_run())
        first = batched.write_case(run_b, *pairs[0])
        ids = batched.write_cases(run_b, pairs)
        assert ids[0] == first and len(set(ids)) == len(pairs)
        assert batched.write_cases(run_b, pairs[1:3]) == ids[1:3]  # already stored: same ids
        for case, ex in pairs:
            single.write_case(run_s, case, ex)
        assert counts(batched) == counts(single)
        with batched.engine.connect() as cb, single.engine.connect() as cs:
            for table in ALL_TABLES:
                if table.name in ("runs",):
                    continue
                rows_b = [tuple(_plain(v) for v in r) for r in _rows(cb, table)]
                rows_s = [tuple(_plain(v) for v in r) for r in _rows(cs, table)]
                assert rows_b == rows_s, table.name


def _plain(value):
    """Backend-neutral value: floats rounded to 12 digits, timestamps dropped."""
    if isinstance(value, float):
        return round(value, 12)
    if hasattr(value, "isoformat"):
        return None
    return value
