"""Result store: SQLAlchemy models, alembic migrations, writer and read-only SQL.

Public API: ``normalize_url`` (``--db`` value → URL), ``Store`` (open/migrate, write runs, task
summaries and cases), ``run_sql`` (read-only query → column names + rows).
Modules: engine (URLs, engines), models + migrations/ (schema), migrate (alembic in code),
writer (Store), caserows (Case + Explanation → rows), bulk (per-backend bulk inserts), duckfile (crash-safe
DuckDB migrations), lock (one writer per file, one creator per folder), preflight (store and
report folder checked before lm-eval runs; faults as one line), litter (temporary files of dead
processes), query (read-only SQL), export (parquet),
examples (README queries), cli (`db`, `sql`, `export`), pgtemp (throwaway PostgreSQL for tests).
"""

from __future__ import annotations

from harness_xai.store.engine import normalize_url
from harness_xai.store.query import run_sql
from harness_xai.store.writer import Store

__all__ = ["Store", "normalize_url", "run_sql"]
