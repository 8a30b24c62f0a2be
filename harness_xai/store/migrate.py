"""Schema migrations with alembic, configured in code (no alembic.ini): works after `pip install`.

1. ``alembic_config`` points alembic at ``harness_xai/store/migrations`` (shipped in the package)
   and hands it an open connection through ``Config.attributes["connection"]``.
2. ``schema_state`` compares the database's ``alembic_version`` with the scripts' head and says
   whether it is empty, at head, behind (upgradable), ahead/unknown, foreign (harness-xai tables,
   no version) or other (another program's tables or views, no harness-xai table).
3. ``needs_migration`` decides, for a writer, whether to migrate now or refuse with a one-line
   UserError (behind head: names `harness-xai db upgrade --db URL`; another program's database:
   refused, never altered, unless ``init`` — `run --xai-db-init`, `db upgrade --init`).
4. ``upgrade``/``downgrade`` run alembic inside the caller's transaction (DuckDB and, with the
   engine's explicit BEGIN, SQLite have transactional DDL: a failed migration leaves nothing).

DuckDB needs an alembic implementation class registered under its dialect name; it is defined
here (imported by ``migrations/env.py`` and by anything that opens a ``MigrationContext``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.ddl.impl import DefaultImpl
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from harness_xai.errors import UserError
from harness_xai.store import models
from harness_xai.store.engine import display_url

#: folder holding env.py and versions/ (tests may point it at a copy with extra revisions)
MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")

EMPTY, AT_HEAD, BEHIND, UNKNOWN, FOREIGN = "empty", "head", "behind", "unknown", "foreign"
OTHER = "other"  # another program's database: tables or views, none of them harness-xai's


class AlembicDuckDBImpl(DefaultImpl):
    """Alembic support for duckdb-engine (defining the subclass registers it)."""

    __dialect__ = "duckdb"
    transactional_ddl = True


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands relative to the migration scripts."""

    kind: str  # EMPTY | AT_HEAD | BEHIND | UNKNOWN | FOREIGN | OTHER
    current: str | None  # alembic revision stored in the database
    head: str  # newest revision of the scripts
    others: tuple[str, ...] = ()  # OTHER: names of the tables and views found


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """Alembic Config built in code; ``connection`` (preferred) or ``url`` selects the database."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


def script_directory() -> ScriptDirectory:
    """The migration scripts shipped with the package."""
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The single head revision (the scripts must not branch)."""
    heads = script_directory().get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"migration scripts have {len(heads)} heads, expected 1: {heads}")
    return heads[0]


def current_revision(conn: Connection) -> str | None:
    """Revision stored in the database's alembic_version table (None when absent or empty)."""
    return MigrationContext.configure(conn).get_current_revision()


def schema_state(conn: Connection) -> SchemaState:
    """Classify the database behind ``conn`` against the migration scripts."""
    head = head_revision()
    current = current_revision(conn)
    if current is None:
        ours = set(models.Base.metadata.tables)
        inspector = sa.inspect(conn)
        names = set(inspector.get_table_names()) | set(inspector.get_view_names())
        if ours & names:
            return SchemaState(FOREIGN, None, head)
        others = tuple(sorted(names - {"alembic_version"}))
        return SchemaState(OTHER if others else EMPTY, None, head, others)
    if current == head:
        return SchemaState(AT_HEAD, current, head)
    scripts = script_directory()
    try:
        known = {rev.revision for rev in scripts.walk_revisions()}
    except Exception:  # noqa: BLE001 - a broken chain means we cannot vouch for the revision
        known = set()
    return SchemaState(BEHIND if current in known else UNKNOWN, current, head)


def upgrade(conn: Connection, target: str = "head") -> None:
    """Upgrade to ``target`` inside the caller's transaction (caller commits)."""
    command.upgrade(alembic_config(conn), target)


def downgrade(conn: Connection, target: str = "base") -> None:
    """Downgrade to ``target`` inside the caller's transaction (caller commits)."""
    command.downgrade(alembic_config(conn), target)


def history() -> list[tuple[str, str | None, str, bool]]:
    """Revisions newest first as (revision, down_revision, message, is_head)."""
    scripts = script_directory()
    heads = set(scripts.get_heads())
    out = []
    for rev in scripts.walk_revisions():
        down = rev.down_revision
        if down is not None and not isinstance(down, str):  # a merge revision has several parents
            down = ",".join(down)
        out.append((rev.revision, down, (rev.doc or "").strip(), rev.revision in heads))
    return out


def needs_migration(state: SchemaState, url: str, *, create: bool, upgrade: bool,
                    init: bool = False) -> bool:
    """True if the database must be migrated to head now; UserError if it must not be used.
    ``init``: add the harness-xai schema to another program's database (state OTHER) too."""
    shown = display_url(url)
    if state.kind == AT_HEAD:
        return False
    if state.kind == OTHER and not (init and create):
        listed = ", ".join(state.others[:5]) + (", …" if len(state.others) > 5 else "")
        raise UserError(
            f"{shown} is not a harness-xai database but another program's ({len(state.others)} "
            f"tables/views: {listed}); left untouched: use another --db, or add the harness-xai tables to it with "
            "`run … --xai-db-init` / `harness-xai db upgrade --init`")
    if state.kind == OTHER:
        return True
    if state.kind == EMPTY or (upgrade and state.kind == BEHIND):
        if not create:
            raise UserError(f"{shown} is not a harness-xai database (no schema); run `harness-xai db upgrade --db {shown}`")
        return True
    if state.kind == BEHIND:
        raise UserError(
            f"database schema of {shown} is at revision {state.current}, this harness-xai needs "
            f"{state.head}: run `harness-xai db upgrade --db {shown}`"
        )
    if state.kind == UNKNOWN:
        raise UserError(
            f"database schema of {shown} is at unknown revision {state.current} "
            f"(newer harness-xai?): upgrade harness-xai or use another --db"
        )
    raise UserError(f"{shown} has harness-xai tables but no schema revision: use another --db")
