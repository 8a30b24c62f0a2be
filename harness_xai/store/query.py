"""Ad-hoc read-only SQL over a result database (``harness-xai sql``).

1. Normalize the URL; a missing DuckDB/SQLite file → UserError (never create one for a query).
2. Open read-only: DuckDB with ``read_only=True``, SQLite with ``mode=ro``; on other backends the
   statement runs in a transaction that is always rolled back. So ``sql`` never changes data.
3. Execute the query as ``sqlalchemy.text`` with bound ``:name`` parameters; any driver or
   statement error → UserError with the first line of the message.
4. Return column names and rows as plain tuples; dispose the engine (releases the DuckDB file).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from harness_xai.errors import UserError
from harness_xai.store.engine import db_file, first_line, make_engine, normalize_url, open_error


def run_sql(db: str, query: str, params: dict[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
    """Run one read-only statement on ``db``; returns (column names, rows)."""
    url = normalize_url(db)
    path = db_file(url)
    if path is not None and not path.is_file():
        raise UserError(f"database file not found: {path} (check --db)")
    if not query or not query.strip():
        raise UserError("empty SQL query: pass a statement such as \"SELECT * FROM runs\"")
    engine = make_engine(url, read_only=True)
    try:
        try:
            conn = engine.connect()
        except sa.exc.DBAPIError as exc:
            raise open_error(url, exc) from None
        with conn:
            try:
                result = conn.execute(sa.text(query), params or {})
                if result.returns_rows:
                    columns = list(result.keys())
                    rows = [tuple(row) for row in result]
                else:
                    columns, rows = [], []
            except (sa.exc.DBAPIError, sa.exc.StatementError, sa.exc.ArgumentError) as exc:
                raise UserError(f"SQL error: {first_line(exc)}") from None
            finally:
                conn.rollback()
    finally:
        engine.dispose()
    return columns, rows
