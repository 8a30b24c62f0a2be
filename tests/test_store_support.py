"""Shared fixtures and helpers of the store tests (no tests in this module); the record
factories (``make_run``, ``make_case``, ``make_skipped``, ``NASTY``) live in tests/factory.py and
are re-exported here.

``db`` is parametrized over the three backends: a DuckDB file, an SQLite file, and a fresh
database on a real PostgreSQL server (harness_xai.store.pgtemp: initdb + pg_ctl on loopback, one
server per test process, or $HARNESS_XAI_TEST_PG_URL).
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from factory import NASTY, explained, make_case, make_run, make_skipped  # noqa: F401 (re-exported)
from harness_xai.store import Store, pgtemp
from harness_xai.store.models import ALL_TABLES

#: the tables keyed by cases.id (children of a case)
CASE_CHILD_TABLES = tuple(t for t in ALL_TABLES if "case_id" in t.c)

BACKENDS = ("duckdb", "sqlite", "postgresql")
FILE_BACKENDS = ("duckdb", "sqlite")


def new_db(backend: str, tmp_path: Path, name: str = "results") -> str:
    """A not-yet-existing DuckDB/SQLite file path, or a fresh empty PostgreSQL database URL."""
    if backend == "postgresql":
        return pgtemp.fresh_database_url()
    return str(tmp_path / f"{name}.{backend}")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def db(backend: str, tmp_path: Path) -> str:
    return new_db(backend, tmp_path)


@pytest.fixture(params=FILE_BACKENDS)
def db_path(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return tmp_path / f"results.{request.param}"


def counts(store: Store) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar() for t in ALL_TABLES}


def dump(db_or_store: str | Store) -> dict[str, list[tuple]]:
    """Full content of every table, rows sorted by primary key (for byte-for-byte comparisons)."""
    store = Store.open(db_or_store, create=False) if isinstance(db_or_store, str) else db_or_store
    try:
        with store.engine.connect() as conn:
            out = {}
            for t in ALL_TABLES:
                order = list(t.primary_key.columns) or list(t.columns)
                out[t.name] = [tuple(r) for r in conn.execute(sa.select(t).order_by(*order))]
            return out
    finally:
        if isinstance(db_or_store, str):
            store.close()


# -- kill -9 / resume harness (tests/test_store_resume.py and bench/bench_resume.py) --------------
#: progress of the attribution loop on stderr: "… 3/22 cases" (a postfix of the token bar), or a
#: bar counting cases, "attributing: 14%|█  | 3/22 [00:01<00:05, 2.6case/s]"
_PROGRESS = (re.compile(rb"(\d+)/(\d+) cases"),
             re.compile(rb"attributing[^:\r\n]*:[^\r\n|]*\|[^|]*\|\s*(\d+)/(\d+) \[[^\]\r\n]*case/s"))


def run_command(model: Path, out: Path, db: str, tasks: str, limit: int, cache: Path | None = None) -> list[str]:
    """`python -m harness_xai run … --attribute` on the bundled tasks (progress bar on stderr).
    ``cache``: lm-eval's --use_cache (model answers reused by later runs; not part of the run key)."""
    from harness_xai.zoo import tasks_dir

    extra = ["--use_cache", str(cache)] if cache is not None else []
    return [sys.executable, "-m", "harness_xai", "run", "--model", "hf", "--model_args",
            f"pretrained={model},dtype=float32", "--tasks", tasks, "--include_path", str(tasks_dir()),
            "--device", "cpu", "--batch_size", "8", "--limit", str(limit), "--output_path", str(out),
            *extra, "--attribute", "--xai-db", db]


def run_env() -> dict[str, str]:
    # every progress update printed (tqdm reads TQDM_* defaults from the environment)
    return {**os.environ, "TQDM_MININTERVAL": "0", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def slow_attribution_env(folder: Path, seconds: float) -> dict[str, str]:
    """``run_env()`` plus a ``sitecustomize`` that makes every engine pass of the child process
    sleep ``seconds`` first: a signal sent once the first case is stored then lands during
    attribution on any machine (on an idle one the whole attribution of a small run takes < 1 s)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import time\nimport harness_xai.pipeline as _pipeline\n"
        "_real = _pipeline.explain_objectives\n\n\n"
        f"def _slow(*args, **kwargs):\n    time.sleep({float(seconds)})\n"
        "    return _real(*args, **kwargs)\n\n\n_pipeline.explain_objectives = _slow\n")
    env = run_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), env.get("PYTHONPATH")) if p)
    return env


def _progress(buf: bytes, done: int, todo: int) -> tuple[int, int]:
    for pattern in _PROGRESS:
        found = pattern.findall(buf)
        if found:
            return int(found[-1][0]), int(found[-1][1])
    return done, todo


def run_and_kill(cmd: list[str], kill_after: int, delay: float, timeout: float = 600,
                 env: dict[str, str] | None = None) -> tuple[bool, int, int]:
    """Start ``cmd``; once its progress bar shows ``kill_after`` cases done, wait ``delay`` s and
    SIGKILL it. Returns (killed during attribution, cases done at the kill, todo of this run)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env or run_env())
    fd = proc.stderr.fileno()
    buf, done, todo = b"", -1, -1
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.05)
            chunk = os.read(fd, 65536) if ready else b""
            if ready and not chunk:  # stderr closed: the run ended by itself
                if proc.wait() == 0:
                    return False, done, todo
                break
            buf = (buf + chunk)[-4096:]
            done, todo = _progress(buf, done, todo)
            if done >= kill_after:
                time.sleep(delay)
                while select.select([fd], [], [], 0)[0]:  # what it printed while we slept
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    buf = (buf + chunk)[-4096:]
                done, todo = _progress(buf, done, todo)
                alive = proc.poll() is None
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return alive and done < todo, done, todo
        raise AssertionError(f"run failed or timed out before {kill_after} cases (rc={proc.poll()}): "
                             f"{buf.decode(errors='replace')[-800:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()


def integrity_problems(db: str) -> list[str]:
    """Partial cases, orphan rows or duplicate unit keys in a store (empty list: consistent)."""
    from harness_xai.store import run_sql

    checks = {
        "duplicate unit keys": "SELECT count(*) - (SELECT count(*) FROM (SELECT DISTINCT run_id, task, doc_id, "
                               "doc_hash, filter FROM cases) AS k) FROM cases",
        "attributed case with missing token rows": "SELECT count(*) FROM cases AS c WHERE c.status = 'attributed' "
            "AND c.n_tokens <> (SELECT count(*) FROM token_relevance AS t WHERE t.case_id = c.id)",
        "attributed case with partial layer rows": "SELECT count(*) FROM cases AS c WHERE c.status = 'attributed' "
            "AND (SELECT count(*) FROM layer_relevance AS l WHERE l.case_id = c.id) <> c.n_tokens * "
            "(SELECT max(layer) + 1 FROM layer_relevance)",
        "skipped case with rows": "SELECT count(*) FROM cases AS c WHERE c.status = 'skipped' "
            "AND EXISTS (SELECT 1 FROM token_relevance AS t WHERE t.case_id = c.id)",
        # cases are written after their task's outcomes: every case has an outcome, never 'correct'
        "case without a doc_outcomes row": "SELECT count(*) FROM cases AS c WHERE NOT EXISTS (SELECT 1 "
            "FROM doc_outcomes AS o WHERE o.run_id = c.run_id AND o.task = c.task AND o.doc_id = c.doc_id "
            "AND o.doc_hash = c.doc_hash AND o.filter = c.filter AND (o.correct = 0 OR o.correct IS NULL))",
        "orphan doc_outcomes rows": "SELECT count(*) FROM doc_outcomes AS o "
            "WHERE NOT EXISTS (SELECT 1 FROM runs AS r WHERE r.id = o.run_id)",
    }
    for table in CASE_CHILD_TABLES:
        checks[f"orphan {table.name} rows"] = (f"SELECT count(*) FROM {table.name} AS x "
                                               "WHERE NOT EXISTS (SELECT 1 FROM cases AS c WHERE c.id = x.case_id)")
    return [name for name, q in checks.items() if run_sql(db, q)[1][0][0]]


def keyed_content(db: str) -> dict[str, list[tuple]]:
    """Table contents with surrogate ids replaced by the case's (task, doc_id, filter) and the
    run's key, and without created_at: comparable across two databases of the same run."""
    content = dump(db)
    tables = {t.name: t for t in ALL_TABLES}
    run_cols = [c.name for c in tables["runs"].columns]
    case_cols = [c.name for c in tables["cases"].columns]
    key = {r[0]: (r[case_cols.index("task")], r[case_cols.index("doc_id")], r[case_cols.index("filter")])
           for r in content["cases"]}
    out = {"runs": [tuple(v for c, v in zip(run_cols, r) if c not in ("id", "created_at")) for r in content["runs"]],
           "task_results": [r[1:] for r in content["task_results"]],
           "doc_outcomes": sorted(r[1:] for r in content["doc_outcomes"]),
           "cases": sorted(tuple(v for c, v in zip(case_cols, r) if c not in ("id", "run_id")) for r in content["cases"])}
    for table in CASE_CHILD_TABLES:
        out[table.name] = sorted((key[r[0]],) + tuple(r[1:]) for r in content[table.name])
    return out
