"""The stock ``alembic`` command line on a store (``alembic.ini`` + ``alembic/`` at the root):
up and down on DuckDB, SQLite and PostgreSQL, the same scripts as ``harness-xai db``, the data
kept, and a DuckDB file migrated through a renamed copy (nothing left beside it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness_xai.store import Store, migrate, normalize_url, run_sql
from test_store_support import backend, db, make_run  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def _alembic(url: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"),
                           "-x", f"url={url}", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout + proc.stderr


def _current(url: str) -> str:
    return _alembic(url, "current").splitlines()[0].strip()  # stdout first, then the log


def test_stock_alembic_cli_upgrades_and_downgrades_every_backend(db, tmp_path):
    url = normalize_url(db)
    head = migrate.head_revision()
    with Store.open(url) as store:  # a store with data, written by harness-xai
        store.ensure_run(make_run())
    assert _current(url) == f"{head} (head)"
    out = _alembic(url, "downgrade", "0004")
    assert "Running downgrade 0005 -> 0004" in out
    assert _current(url) == "0004"
    with pytest.raises(Exception, match="behind|0004"):  # harness-xai refuses an old schema
        Store.open(url, create=False).close()
    _alembic(url, "upgrade", "head")
    assert _current(url) == f"{head} (head)"
    _, rows = run_sql(url, "SELECT run_key FROM runs")
    assert rows == [("run-1",)]  # the data went down and up with the schema
    path = Path(url.split(":///", 1)[1]) if "://" in url and not url.startswith("postgresql") \
        else None
    if path is not None:
        assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []
    _alembic(url, "downgrade", "base")
    _, tables = run_sql(url, "SELECT count(*) FROM alembic_version")
    assert tables == [(0,)]


def test_stock_alembic_cli_creates_a_new_duckdb_file_atomically(tmp_path):
    target = tmp_path / "new" / "x.duckdb"
    _alembic(f"duckdb:///{target}", "upgrade", "head")
    assert target.exists() and [p.name for p in target.parent.iterdir()] == ["x.duckdb"]
    with Store.open(str(target), create=False) as store:  # at head: opens for writing
        assert store.ensure_run(make_run()) >= 1
    history = _alembic(f"duckdb:///{target}", "history")
    assert all(rev in history for rev in ("0001", migrate.head_revision()))
