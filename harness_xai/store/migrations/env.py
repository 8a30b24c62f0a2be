"""Alembic environment for the harness-xai store (configured in code, see store/migrate.py).

1. Use the connection passed in ``config.attributes["connection"]`` (the store runs migrations
   inside its own transaction); otherwise build an engine from ``sqlalchemy.url``.
2. Importing ``harness_xai.store.migrate`` registers the DuckDB implementation
   (``AlembicDuckDBImpl``: dialect "duckdb", transactional DDL).
3. Offline (``--sql``) mode is not supported: the migrations branch on the live dialect.
"""

from __future__ import annotations

from alembic import context

from harness_xai.store import migrate  # noqa: F401  (registers AlembicDuckDBImpl)
from harness_xai.store.engine import make_engine
from harness_xai.store.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("harness-xai migrations need a live database connection (no --sql mode)")

_connection = config.attributes.get("connection")
if _connection is not None:
    _run(_connection)
else:
    _engine = make_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with _engine.begin() as _conn:
            _run(_conn)
    finally:
        _engine.dispose()
