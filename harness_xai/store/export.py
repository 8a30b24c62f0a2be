"""Exports: Parquet (pyarrow) of every table of a store (``harness-xai export``) or of one query
result; ``export_json`` for the Every Eval Ever (``eee``) and graph-JSON (``graphjson``) formats.

``export_parquet(db, out_dir)``:
1. open the database read-only (query.read_only_connection) and read its schema revision;
2. refuse a store that is not at the schema head (names `harness-xai db upgrade`);
   for each schema table, parents first (models.ALL_TABLES), stream ``SELECT * … ORDER BY`` its
   primary key in chunks of ``CHUNK_ROWS`` rows into ``<table>.parquet`` with an Arrow schema
   derived from the column types (so empty tables and all-NULL columns keep their types);
3. write ``manifest.json`` (source URL without password, revision, rows per table).
The output folder must be new, empty or a previous export, and writable (checked first,
preflight.check_destination). Every file is written under a temporary name and renamed when complete; on any error the new
files are removed, so the output directory never holds a half-written dump. Table and column
names come from the models, never from user input.

``rows_to_parquet(columns, rows, path)`` writes a query result, inferring each column's type
(mixed-type SQLite columns fall back to text).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from harness_xai.errors import UserError
from harness_xai.store import migrate
from harness_xai.store.engine import display_url
from harness_xai.store.models import ALL_TABLES
from harness_xai.store.preflight import check_destination
from harness_xai.store.query import read_only_connection

CHUNK_ROWS = 100_000


def _arrow_type(column: sa.Column) -> Any:
    import pyarrow as pa

    t = type(column.type)
    if t is sa.BigInteger:
        return pa.int64()
    if issubclass(t, sa.Integer):
        return pa.int32()
    if issubclass(t, (sa.Double, sa.Float)):
        return pa.float64()
    if issubclass(t, sa.DateTime):
        return pa.timestamp("us")
    return pa.string()


def _atomic_target(path: Path) -> Path:
    return path.with_name(f".{path.name}.part-{os.getpid()}")


def _write_table(conn: sa.Connection, table: sa.Table, path: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([pa.field(c.name, _arrow_type(c)) for c in table.columns])
    order = list(table.primary_key.columns) or list(table.columns)
    result = conn.execute(sa.select(table).order_by(*order))
    tmp = _atomic_target(path)
    n = 0
    with pq.ParquetWriter(tmp, schema) as writer:
        while True:
            rows = result.fetchmany(CHUNK_ROWS)
            if not rows and n:
                break
            arrays = [pa.array([r[i] for r in rows], type=f.type) for i, f in enumerate(schema)]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            n += len(rows)
            if not rows:
                break
    tmp.replace(path)
    return n


def _previous_export(names: set[str]) -> bool:
    """True if a folder holds only what an export writes (it may be replaced by a new one)."""
    ours = {f"{t.name}.parquet" for t in ALL_TABLES} | {"manifest.json"}
    return "manifest.json" in names and names <= ours


def export_json(db: str, out_dir: str | Path, fmt: str, case_id: int | None = None) -> dict[str, int]:
    """``fmt`` "eee": Every Eval Ever records per run (``eee``); "graph-json": each case's graph
    as circuit-tracer / Neuronpedia JSON (``graphjson``). Same store checks as parquet."""
    from harness_xai.store.eee import export_eee
    from harness_xai.store.graphjson import export_graphs

    out = check_destination(Path(out_dir).expanduser(), "--out", allowed=_previous_json_export)
    with read_only_connection(db, user_sql=False) as (url, conn):
        _check_at_head(conn, url)
        if fmt == "eee":
            return export_eee(conn, out)
        return {"graphs": export_graphs(conn, out, case_id)}


def _previous_json_export(names: set[str]) -> bool:
    """A folder holding only what ``export_json`` writes (it may be written again)."""
    return all(n.endswith((".json", ".jsonl")) for n in names)


def _check_at_head(conn: sa.Connection, url: Any) -> migrate.SchemaState:
    state = migrate.schema_state(conn)
    shown = display_url(url)
    if state.kind in (migrate.EMPTY, migrate.FOREIGN):
        raise UserError(f"{shown} is not a harness-xai store (no schema revision): nothing to export")
    if state.kind != migrate.AT_HEAD:
        raise UserError(f"database schema of {shown} is at revision {state.current}, not {state.head}: "
                        f"run `harness-xai db upgrade --db {shown}` first")
    return state


def export_parquet(db: str, out_dir: str | Path) -> dict[str, int]:
    """Write ``<table>.parquet`` for every schema table plus ``manifest.json``; rows per table."""
    out = Path(out_dir).expanduser()
    check_destination(out, "--out", allowed=_previous_export)
    counts: dict[str, int] = {}
    written: list[Path] = []
    with read_only_connection(db, user_sql=False) as (url, conn):
        state = _check_at_head(conn, url)
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(stream_results=True)  # server-side cursor
        out.mkdir(parents=True, exist_ok=True)
        try:
            for table in ALL_TABLES:
                path = out / f"{table.name}.parquet"
                counts[table.name] = _write_table(conn, table, path)
                written.append(path)
            manifest = {"source": display_url(url), "revision": state.current, "rows": counts}
            path = out / "manifest.json"
            tmp = _atomic_target(path)
            tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            tmp.replace(path)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            for leftover in out.glob(f".*.part-{os.getpid()}"):
                leftover.unlink(missing_ok=True)
            raise
    return counts


def rows_to_parquet(columns: list[str], rows: list[tuple], path: str | Path) -> None:
    """Write a query result to ``path`` (column types inferred; mixed types become text)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if len(set(columns)) != len(columns):
        raise UserError("parquet needs distinct column names: alias the duplicated columns (AS …)")
    arrays = []
    for i, _ in enumerate(columns):
        values = [r[i] for r in rows]
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays.append(pa.array([None if v is None else str(v) for v in values], type=pa.string()))
    target = Path(path).expanduser()
    tmp = _atomic_target(target)
    try:
        pq.write_table(pa.Table.from_arrays(arrays, names=list(columns)), tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
