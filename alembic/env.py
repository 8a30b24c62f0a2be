"""Alembic environment for the stock ``alembic`` CLI (``alembic.ini`` at the repository root).

1. The database: ``-x url=…`` (a URL or a file path, as ``--db`` takes it), else
   ``sqlalchemy.url`` of alembic.ini; normalised like every harness-xai command.
2. PostgreSQL and SQLite: the revisions run in one transaction (transactional DDL), exactly like
   the package's own environment (``harness_xai/store/migrations/env.py``).
3. A DuckDB file is never migrated in place (DuckDB cannot replay a WAL that altered a table with
   a sequence default, see ``harness_xai.store.duckfile``): the file is checkpointed and copied to
   ``.<name>.migrating-<pid>``, alembic runs the requested command on the copy, the copy is
   checkpointed, closed and renamed over the file. A kill at any moment leaves the original or
   the complete result. Commands that change nothing (``current``) read the file in place.
4. Offline (``--sql``) mode is not supported: the migrations branch on the live dialect.
"""

from __future__ import annotations

import os
import shutil
from logging.config import fileConfig
from pathlib import Path

import sqlalchemy as sa
from alembic import context

from harness_xai.store import migrate  # noqa: F401  (registers AlembicDuckDBImpl)
from harness_xai.store.engine import db_file, make_engine, normalize_url, remove_new_file
from harness_xai.store.models import Base

config = context.config
target_metadata = Base.metadata
if config.config_file_name is not None:
    fileConfig(config.config_file_name)


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


def _in_place(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


def _duckdb_copy_and_rename(url: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.migrating-{os.getpid()}")
    remove_new_file(tmp)
    try:
        if path.exists():
            engine = make_engine(url)
            try:
                with engine.connect() as conn:
                    conn.exec_driver_sql("CHECKPOINT")  # the copy must not need the WAL
            finally:
                engine.dispose()
            shutil.copy2(path, tmp)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        tmp_url = sa.URL.create("duckdb", database=str(tmp)).render_as_string(hide_password=False)
        engine = make_engine(tmp_url)
        try:
            with engine.connect() as conn:
                with conn.begin():
                    context.configure(connection=conn, target_metadata=target_metadata)
                    with context.begin_transaction():
                        context.run_migrations()
                conn.exec_driver_sql("CHECKPOINT")
        finally:
            engine.dispose()
        os.replace(tmp, path)
    finally:
        remove_new_file(tmp)


def _changes_revision() -> bool:
    """upgrade / downgrade / stamp name a destination; current and the like do not."""
    try:
        return context.get_revision_argument() is not None
    except KeyError:
        return False


if context.is_offline_mode():
    raise RuntimeError("harness-xai migrations need a live database connection (no --sql mode)")

_url = normalize_url(context.get_x_argument(as_dictionary=True).get("url")
                     or config.get_main_option("sqlalchemy.url"))
_file = db_file(_url)
if sa.make_url(_url).get_backend_name() == "duckdb" and _file is not None and _changes_revision():
    _duckdb_copy_and_rename(_url, _file)
else:
    _in_place(_url)
