"""Ad-hoc read-only SQL over a result database (``harness-xai sql`` and ``export``).

Read-only is enforced twice, so that neither layer alone has to be perfect:
1. ``check_read_only`` scans the statement with comments, string literals, quoted identifiers
   and PostgreSQL dollar-quoted bodies blanked out: exactly one statement; it must start with
   SELECT, WITH, VALUES, TABLE, FROM, EXPLAIN, SHOW, DESCRIBE, SUMMARIZE or "("; and no
   data-changing word may appear anywhere (INSERT, UPDATE, DELETE, MERGE, CREATE, DROP, ALTER,
   TRUNCATE, ATTACH, DETACH, COPY, PRAGMA, REPLACE INTO, …), which catches writes wrapped in a
   CTE or in EXPLAIN ANALYZE. A refusal is one UserError line naming the word.
2. ``read_only_connection`` opens the database so that the backend itself refuses writes:
   DuckDB ``read_only=True`` plus ``enable_external_access=false`` and ``lock_configuration``
   (no COPY TO, ATTACH, EXPORT or file reads); SQLite ``mode=ro`` plus an authorizer that allows
   only reads (no ATTACH, PRAGMA or writes); PostgreSQL sessions with
   ``default_transaction_read_only=on``. Every transaction is rolled back at the end.
3. ``run_sql`` executes the statement as ``sqlalchemy.text`` with bound ``:name`` parameters
   (never formatted into the SQL); driver errors become one-line UserErrors.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from harness_xai.errors import UserError
from harness_xai.store.engine import db_file, first_line, make_engine, normalize_url, open_error

READ_STARTS = {"SELECT", "WITH", "VALUES", "TABLE", "FROM", "EXPLAIN", "SHOW", "DESCRIBE", "SUMMARIZE"}
WRITE_WORDS = {
    "INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT", "CREATE", "DROP", "ALTER", "TRUNCATE", "ATTACH",
    "DETACH", "COPY", "PRAGMA", "VACUUM", "REINDEX", "GRANT", "REVOKE", "INSTALL", "LOAD", "EXPORT",
    "IMPORT", "CHECKPOINT", "CALL", "EXECUTE", "PREPARE", "LOCK", "SECURITY",
}
_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z_0-9]*)?\$")
_WORD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")


def _blank_literals(sql: str) -> str:
    """``sql`` with comments, literals and quoted identifiers replaced by spaces."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
            out.append(" ")
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
            out.append(" ")
        elif ch in "'\"`":
            backslash = ch == "'" and i > 0 and sql[i - 1] in "eE" and (i < 2 or not (sql[i - 2].isalnum() or sql[i - 2] == "_"))
            j = i + 1
            while j < n:
                if backslash and sql[j] == "\\":
                    j += 2
                    continue
                if sql[j] == ch:
                    if j + 1 < n and sql[j + 1] == ch:  # doubled quote: escaped
                        j += 2
                        continue
                    break
                j += 1
            i = j + 1
            out.append(" 0 " if ch == "'" else " x ")
        elif ch == "$" and (m := _DOLLAR.match(sql, i)) and not (i > 0 and (sql[i - 1].isalnum() or sql[i - 1] == "_")):
            end = sql.find(m.group(0), m.end())
            i = n if end < 0 else end + len(m.group(0))
            out.append(" 0 ")
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def check_read_only(query: str) -> None:
    """Refuse anything but one reading statement (UserError, one line)."""
    text = _blank_literals(query)
    statements = [s for s in text.split(";") if s.strip()]
    if not statements:
        raise UserError("empty SQL query: pass a statement such as \"SELECT * FROM runs\"")
    if len(statements) > 1:
        raise UserError("harness-xai sql runs one statement at a time: remove the extra ';'-separated statements")
    body = statements[0].strip()
    words = [w.upper() for w in _WORD.findall(body)]
    if not body.startswith("(") and (not words or words[0] not in READ_STARTS):
        first = words[0] if words else body[:20]
        raise UserError(f"harness-xai sql is read-only: {first} statements are refused (use SELECT … FROM …)")
    for k, word in enumerate(words):
        if word in WRITE_WORDS or (word == "REPLACE" and k + 1 < len(words) and words[k + 1] == "INTO"):
            raise UserError(f"harness-xai sql is read-only: {word} is refused, even inside a query (use SELECT)")


_SQLITE_READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                        getattr(sqlite3, "SQLITE_RECURSIVE", 33)}


def _sqlite_authorizer(action: int, *_args: Any) -> int:
    return sqlite3.SQLITE_OK if action in _SQLITE_READ_ACTIONS else sqlite3.SQLITE_DENY


@contextmanager
def read_only_connection(db: str, *, user_sql: bool = True) -> Iterator[tuple[str, Connection]]:
    """(url, connection) opened so that the backend refuses writes; always rolled back.

    ``user_sql=False`` (statements built by harness-xai itself, e.g. export) leaves out the SQLite
    authorizer, which would also refuse the PRAGMAs that schema inspection uses."""
    url = normalize_url(db)
    path = db_file(url)
    if path is not None and not path.is_file():
        raise UserError(f"database file not found: {path} (check --db)")
    engine = make_engine(url, read_only=True)
    try:
        try:
            conn = engine.connect()
        except sa.exc.DBAPIError as exc:
            raise open_error(url, exc) from None
        with conn:
            raw = conn.connection.dbapi_connection
            if conn.dialect.name == "duckdb":
                conn.exec_driver_sql("SET enable_external_access = false")
                conn.exec_driver_sql("SET lock_configuration = true")
            try:
                if conn.dialect.name == "sqlite" and user_sql:
                    conn.begin()  # BEGIN runs before the authorizer is installed
                    raw.set_authorizer(_sqlite_authorizer)
                yield url, conn
            finally:
                if conn.dialect.name == "sqlite" and user_sql:
                    raw.set_authorizer(None)
                conn.rollback()
    finally:
        engine.dispose()


def run_sql(db: str, query: str, params: dict[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
    """Run one read-only statement on ``db``; returns (column names, rows)."""
    if not isinstance(query, str) or not query.strip():
        raise UserError("empty SQL query: pass a statement such as \"SELECT * FROM runs\"")
    check_read_only(query)
    with read_only_connection(db) as (_url, conn):
        try:
            result = conn.execute(sa.text(query), params or {})
            if not result.returns_rows:
                return [], []
            return list(result.keys()), [tuple(row) for row in result]
        except (sa.exc.DBAPIError, sa.exc.StatementError, sa.exc.ArgumentError) as exc:
            raise UserError(f"SQL error: {first_line(exc)}") from None
