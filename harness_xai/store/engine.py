"""Database URLs and engines for the store: DuckDB (default), SQLite, PostgreSQL.

1. ``normalize_url`` turns what the user passed as ``--db`` into an SQLAlchemy URL: a file path is
   made absolute and mapped to a backend by its suffix; URLs of a supported backend pass through.
2. ``db_file`` gives the local file behind a DuckDB/SQLite URL (None for in-memory or servers).
3. ``make_engine`` builds the engine: SQLite gets ``PRAGMA foreign_keys=ON`` and real transactions
   (pysqlite's implicit BEGIN is replaced by an explicit one, so DDL and DML roll back together);
   ``read_only=True`` opens DuckDB with ``read_only``, SQLite with ``mode=ro`` and PostgreSQL
   sessions with ``default_transaction_read_only=on``. PostgreSQL uses psycopg 3 (SQLAlchemy's
   default driver for ``postgresql://``).
4. ``remove_new_file`` deletes a file a failed command created (nothing half-written).
5. ``open_error`` turns a driver error on connect into a one-line ``UserError`` (a DuckDB file
   locked by another process: the path and the holder's pid, see lock.py).
6. ``display_url`` hides a PostgreSQL password in messages.
7. ``disk_full`` tells whether an error (anywhere in its chain) is a full disk.
"""

from __future__ import annotations

import errno
import re
import sqlite3
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError

from harness_xai.errors import UserError

DUCKDB_SUFFIXES = (".duckdb", ".ddb")
#: a lock conflict in a driver message ("database is locked", "Could not set lock on file",
#: "Conflicting lock"), not "lock" inside another word ("block", "clock")
_LOCK_WORDS = re.compile(r"\block(ed|s)?\b", re.IGNORECASE)
SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
SUPPORTED_BACKENDS = ("duckdb", "sqlite", "postgresql")


def normalize_url(db: str) -> str:
    """Map a ``--db`` value (file path or URL) onto an SQLAlchemy URL string.

    ``x.duckdb`` → ``duckdb:////abs/x.duckdb``; ``x.sqlite``/``x.db`` → ``sqlite:////abs/x.sqlite``;
    ``duckdb://``, ``sqlite://`` and ``postgresql[+driver]://`` URLs pass through, except that a
    relative file in a DuckDB/SQLite URL (``duckdb:///data/x.duckdb`` is ``./data/x.duckdb`` to
    SQLAlchemy) is made absolute, so every message names the file actually used.
    """
    if not isinstance(db, str) or not db.strip():
        raise UserError("no database given: pass --db PATH.duckdb (or a .sqlite path or a URL)")
    db = db.strip()
    if "://" in db:
        try:
            url = make_url(db)
        except ArgumentError:
            raise UserError(f"invalid database URL {db!r}: expected e.g. duckdb:///results.duckdb") from None
        if url.get_backend_name() not in SUPPORTED_BACKENDS:
            raise UserError(
                f"unsupported database backend {url.get_backend_name()!r} in {db!r}: "
                "use duckdb://, sqlite:// or postgresql://"
            )
        database = url.database or ""
        if (url.get_backend_name() in ("duckdb", "sqlite") and database not in ("", ":memory:")
                and not database.startswith("file:") and not Path(database).is_absolute()):
            absolute = str(Path(database).expanduser().resolve())
            return url.set(database=absolute).render_as_string(hide_password=False)
        return db
    path = Path(db).expanduser()
    suffix = path.suffix.lower()
    if suffix in DUCKDB_SUFFIXES:
        backend = "duckdb"
    elif suffix in SQLITE_SUFFIXES:
        backend = "sqlite"
    else:
        raise UserError(
            f"cannot tell the database type of {db!r}: name the file *.duckdb or *.sqlite, or pass a URL"
        )
    if path.exists() and path.is_dir():
        raise UserError(f"database path {db!r} is a directory: pass a file name ending in {suffix}")
    # URL.create escapes '?', '#', '%', '@', ':' in the path; make_url(...).database decodes them
    return sa.URL.create(backend, database=str(path.resolve())).render_as_string(hide_password=False)


def db_file(url: str) -> Path | None:
    """Local file of a DuckDB/SQLite URL, or None (in-memory database or a server)."""
    u = make_url(url)
    if u.get_backend_name() not in ("duckdb", "sqlite"):
        return None
    database = u.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database).expanduser().resolve()


def _sqlite_transactions(engine: Engine) -> None:
    """Foreign keys on, and explicit BEGIN so DDL is transactional too (SQLAlchemy recipe)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # no implicit BEGIN/COMMIT from pysqlite
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN")


def make_engine(url: str, *, read_only: bool = False) -> Engine:
    """Engine for ``url`` (already normalized); ``read_only`` applies to DuckDB and SQLite files."""
    u = make_url(url)
    backend = u.get_backend_name()
    try:
        if backend == "sqlite":
            path = db_file(url)
            if read_only and path is not None:
                uri = path.as_uri() + "?mode=ro"
                engine = sa.create_engine(
                    "sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False)
                )
            else:
                engine = sa.create_engine(u)
            _sqlite_transactions(engine)
            return engine
        if backend == "duckdb":
            connect_args = {"read_only": True} if read_only else {}
            return sa.create_engine(u, connect_args=connect_args)
        if backend == "postgresql" and read_only:
            return sa.create_engine(u, connect_args={"options": "-c default_transaction_read_only=on"})
        return sa.create_engine(u)
    except (ImportError, sa.exc.NoSuchModuleError) as exc:
        raise UserError(f"cannot use database {url!r}: driver missing ({exc}); install it with pip") from None


def display_url(url: str) -> str:
    """``url`` with any password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def open_error(url: str, exc: BaseException) -> UserError:
    """One-line UserError for a failure to open/connect ``url``."""
    from harness_xai.store.lock import busy_error, duckdb_holder

    first = first_line(exc)
    shown = display_url(url)
    if "different configuration" in first:
        return UserError(f"database {shown} is already open in this process (close the Store first): {first}")
    holder = duckdb_holder(first)
    if holder is not None:
        return busy_error(db_file(url) or Path(shown), holder)
    if "replaying WAL" in first:
        return UserError(f"cannot open database {shown}: DuckDB cannot replay its write-ahead log "
                         f"({first}); moving the .wal file aside opens the last checkpointed state")
    if "No space left on device" in first or "database or disk is full" in first:
        return UserError(f"disk full while creating/opening database {shown} ({first}): nothing "
                         "was written; free space and re-run")
    if _LOCK_WORDS.search(first):
        return UserError(
            f"database {shown} is in use by another process ({first}): wait for it to finish or use another --db"
        )
    return UserError(f"cannot open database {shown}: {first}")


def disk_full(exc: BaseException) -> bool:
    """True if ENOSPC (or a driver's "No space left on device") is anywhere in the chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc)
        if any(m in text for m in ("No space left on device", "Disk quota exceeded",
                                   "database or disk is full")):
            return True
        exc = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__
    return False


def remove_new_file(path: Path | None) -> None:
    """Delete a database file (and DuckDB/SQLite side files) that a failed command created."""
    if path is None:
        return
    for leftover in (path, path.with_name(path.name + ".wal"), path.with_name(path.name + "-journal")):
        leftover.unlink(missing_ok=True)


def first_line(exc: BaseException) -> str:
    """First line of a driver error message (without SQLAlchemy's [SQL: …] trailer)."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__
