"""Opening a DuckDB file for writing, with schema migrations that a crash cannot break.

DuckDB 1.5 cannot replay a write-ahead log that holds ``ALTER TABLE … ADD COLUMN`` on a table
whose key column defaults to ``nextval(...)`` ("Failure while replaying WAL file: Calling
DatabaseManager::GetDefaultDatabase with no default database set", duckdb issues #18259,
#20543): a process killed after migrating and before the next checkpoint would leave a file that
no longer opens. So a DuckDB file is never migrated in place:

1. a new file is built as ``.<name>.migrating-<pid>`` next to the target: migrate to head in one
   transaction, ``CHECKPOINT`` (the WAL is folded into the file and removed), close, then
   ``os.replace`` it onto the target name — a kill at any moment leaves no file or a complete one;
2. an existing file that must be migrated (empty, or behind head with ``upgrade``) is first
   checkpointed, copied, the copy migrated and checkpointed as above, and renamed over the
   original (the original stays intact until the rename);
3. the migrated file is then opened normally (DuckDB's own lock refuses a second writer).
All of it runs under an exclusive lock on the folder (lock.DirectoryLock), which every writer
takes to open a store: two writers never both create the file, no writer opens the old file
between the copy and the rename, and a file once renamed into place is never deleted.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from harness_xai.errors import UserError
from harness_xai.store import migrate
from harness_xai.store.engine import make_engine, open_error, remove_new_file
from harness_xai.store.litter import migrating_prefix, remove_stale
from harness_xai.store.lock import DirectoryLock


def _connect(engine: Engine, url: str) -> sa.Connection:
    try:
        return engine.connect()
    except sa.exc.DBAPIError as exc:
        raise open_error(url, exc) from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _migrate_copy(path: Path, url: str, *, source_exists: bool) -> None:
    """Steps 1–2: migrate a copy (or a new file) to head, checkpoint it, rename it onto ``path``."""
    tmp = path.with_name(f"{migrating_prefix(path)}{os.getpid()}")
    remove_new_file(tmp)
    try:
        if source_exists:
            engine = make_engine(url)
            try:
                with _connect(engine, url) as conn:
                    conn.exec_driver_sql("CHECKPOINT")  # the copy must not need the original's WAL
            finally:
                engine.dispose()
            shutil.copy2(path, tmp)
        tmp_url = sa.URL.create("duckdb", database=str(tmp)).render_as_string(hide_password=False)
        engine = make_engine(tmp_url)
        try:
            with _connect(engine, tmp_url) as conn:
                with conn.begin():
                    migrate.upgrade(conn, "head")
                conn.exec_driver_sql("CHECKPOINT")
        finally:
            engine.dispose()
        if tmp.with_name(tmp.name + ".wal").exists():
            raise RuntimeError(f"DuckDB left a WAL after CHECKPOINT of {tmp}")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        remove_new_file(tmp)


def open_duckdb_file(url: str, path: Path, *, create: bool, upgrade: bool, init: bool = False
                     ) -> tuple[Engine, None, migrate.SchemaState]:
    """Engine on the DuckDB file ``path`` at head (migrated as described above), no extra lock.

    Everything happens under the folder's ``DirectoryLock``: of two processes creating the same
    new store, the second finds the first one's file and opens it (or is refused by DuckDB's own
    lock); a file renamed into place is never removed again, and stale ``.NAME.migrating-PID``
    copies of dead processes are removed first. An existing file is classified read-only, so a
    database that must not be used (another program's, newer schema) is never altered."""
    if not path.exists() and not create:
        raise UserError(f"database file not found: {path} (check --db)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with DirectoryLock(path.parent):
        remove_stale(path.parent, [migrating_prefix(path)])
        if not path.exists():
            if not create:
                raise UserError(f"database file not found: {path} (check --db)")
            state = migrate.SchemaState(migrate.EMPTY, None, migrate.head_revision())
            _migrate_copy(path, url, source_exists=False)
        else:
            engine = make_engine(url, read_only=True)
            try:
                with _connect(engine, url) as conn:
                    state = migrate.schema_state(conn)
                    conn.rollback()
            finally:
                engine.dispose()
            if migrate.needs_migration(state, url, create=create, upgrade=upgrade, init=init):
                _migrate_copy(path, url, source_exists=True)
        engine = make_engine(url)
        try:
            with _connect(engine, url) as conn:  # the pooled connection holds DuckDB's file lock
                after = migrate.schema_state(conn)
                conn.rollback()
            if after.kind != migrate.AT_HEAD:
                raise RuntimeError(f"{path} is at {after.current} after migrating to {after.head}")
        except BaseException:
            engine.dispose()
            raise
    return engine, None, state
