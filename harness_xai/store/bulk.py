"""Bulk inserts of column-wise rows through each backend's fast path (never row-by-row ORM).

``insert_columns(conn, table, columns)`` takes ``{column name: scalar | sequence | ndarray}``
(scalars are broadcast; all sequences have one length n) and inserts n rows inside the caller's
transaction:

1. Normalize: each column becomes a typed numpy array (int32/int64/float64 per the SQLAlchemy
   column type) or, for TEXT or NULL-bearing columns, a Python list.
2. DuckDB: build a typed Arrow table (zero-copy from numpy), register it on the raw DuckDB
   connection under a private name, ``INSERT INTO t (cols) SELECT cols FROM name``, unregister.
   The raw connection is the one SQLAlchemy's transaction runs on, so the rows commit or roll back
   with it. The per-position relevance tables (``DUCKDB_CHECKED``) carry no PRIMARY / FOREIGN KEY
   on DuckDB (revision 0009: ART index probes cost 5-15x the insert), so their insert is checked
   first, on the staged rows, in the same transaction: (a) no key twice among them (GROUP BY key
   HAVING count > 1); (b) no key already stored (join with the table restricted to the staged case
   ids, literal so that DuckDB's zone maps skip other row groups); (c) every foreign key value
   exists in the referenced table. A violation raises ``sqlalchemy.exc.IntegrityError`` before
   anything is inserted, as the keys did; DuckDB's one writer per file keeps check + insert
   race-free.
3. PostgreSQL (psycopg 3): ``COPY t (cols) FROM STDIN (FORMAT BINARY)``. Numeric tables without
   NULLs are encoded in one vectorized step: a packed big-endian numpy record per row
   (int16 field count, then int32 length + value per field) between the COPY header and trailer.
   A text column repeating one value (e.g. ``state_relevance.kind``) is encoded as fixed-width
   bytes the same way. Other text columns or NULLs go through psycopg's ``write_row``.
4. SQLite (and any other backend): one DB-API ``executemany`` of plain tuples.
Driver errors are re-raised as SQLAlchemy ``DBAPIError`` subclasses (a key violation is an
``sqlalchemy.exc.IntegrityError`` on every backend), as Core statements would raise them.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

#: rows per statement / COPY chunk (bounds the memory of one encoded batch)
CHUNK_ROWS = 1_000_000
#: tables whose keys DuckDB stores do not index (migration 0009): the insert checks them itself
DUCKDB_CHECKED = frozenset({"token_relevance", "layer_relevance", "state_relevance",
                            "head_relevance", "expert_relevance", "graph_nodes", "graph_edges"})

_PG_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_PG_TRAILER = struct.pack(">h", -1)


def _kind(column: sa.Column) -> str:
    """'int32' | 'int64' | 'float64' | 'text' for the column types the schema uses."""
    t = type(column.type)
    if t is sa.BigInteger:
        return "int64"
    if issubclass(t, sa.Integer):
        return "int32"
    if issubclass(t, (sa.Double, sa.Float)):
        return "float64"
    if issubclass(t, (sa.Text, sa.String)):
        return "text"
    raise TypeError(f"no bulk encoding for column {column.name} ({column.type!r})")


def _normalize(table: sa.Table, columns: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(n rows, {name: ndarray for clean numeric columns | list otherwise})."""
    lengths = {name: len(v) for name, v in columns.items()
               if isinstance(v, (Sequence, np.ndarray)) and not isinstance(v, (str, bytes))}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{table.name}: columns of different lengths {lengths}")
    n = next(iter(lengths.values()), 1)
    out: dict[str, Any] = {}
    for name, values in columns.items():
        kind = _kind(table.c[name])
        if name not in lengths:  # scalar: broadcast
            if values is not None and kind != "text":
                values = np.full(n, values, dtype=np.float64 if kind == "float64" else np.int64)
            else:
                values = [values] * n
        if kind == "text":
            out[name] = [None if v is None else str(v) for v in values]
            continue
        if isinstance(values, np.ndarray) and values.dtype != object:
            arr = values
        elif any(v is None for v in values):
            out[name] = [None if v is None else (float(v) if kind == "float64" else int(v)) for v in values]
            continue
        else:
            arr = np.asarray(values)
        if kind == "float64":
            out[name] = arr.astype(np.float64, copy=False)
        else:
            info = np.iinfo(np.int32 if kind == "int32" else np.int64)
            if arr.size and (arr.min() < info.min or arr.max() > info.max):
                raise ValueError(f"{table.name}.{name}: value out of {kind} range")
            out[name] = arr.astype(kind, copy=False)
    return n, out


def concat_columns(table: sa.Table, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Column-wise rows of several cases of one table as one column dict (same columns each)."""
    normal = [_normalize(table, p) for p in parts if p]
    normal = [cols for n, cols in normal if n]
    if not normal:
        return {}
    out: dict[str, Any] = {}
    for name in normal[0]:
        values = [cols[name] for cols in normal]
        if all(isinstance(v, np.ndarray) for v in values):
            out[name] = np.concatenate(values)
        else:
            out[name] = [x for v in values for x in (v.tolist() if isinstance(v, np.ndarray) else v)]
    return out


def insert_columns(conn: Connection, table: sa.Table, columns: dict[str, Any]) -> None:
    """Insert rows given column-wise into ``table`` within ``conn``'s transaction."""
    if not columns:
        return
    n, cols = _normalize(table, columns)
    if n == 0:
        return
    dialect = conn.dialect.name
    for start in range(0, n, CHUNK_ROWS):
        chunk = {k: v[start:start + CHUNK_ROWS] for k, v in cols.items()}
        if dialect == "duckdb":
            _duckdb(conn, table, chunk)
        elif dialect == "postgresql" and conn.dialect.driver == "psycopg":
            _postgres(conn, table, chunk)
        else:
            _executemany(conn, table, chunk)


def _quoted(conn: Connection, table: sa.Table, names: list[str]) -> tuple[str, str]:
    quote = conn.dialect.identifier_preparer.quote
    return quote(table.name), ", ".join(quote(name) for name in names)


# -- DuckDB ------------------------------------------------------------------------------------
def _duckdb(conn: Connection, table: sa.Table, cols: dict[str, Any]) -> None:
    import pyarrow as pa

    arrow_types = {"int32": pa.int32(), "int64": pa.int64(), "float64": pa.float64(), "text": pa.string()}
    arrays = {name: pa.array(values, type=arrow_types[_kind(table.c[name])]) for name, values in cols.items()}
    batch = pa.table(arrays)
    view = f"__harness_xai_bulk_{table.name}"
    target, names = _quoted(conn, table, list(cols))
    raw = conn.connection.dbapi_connection  # duckdb-engine wrapper of the DuckDB connection
    raw.register(view, batch)
    try:
        if table.name in DUCKDB_CHECKED:
            _duckdb_check(conn, table, view, cols)
        conn.exec_driver_sql(f"INSERT INTO {target} ({names}) SELECT {names} FROM {view}")
    finally:
        raw.unregister(view)


class KeyViolation(Exception):
    """A checked DuckDB insert found a duplicate key or a missing referenced row."""


def _duckdb_check(conn: Connection, table: sa.Table, view: str, cols: dict[str, Any]) -> None:
    """Checks (a)-(c) of the module docstring on the staged rows ``view``: one probe statement
    (does the table hold rows of the staged case ids; how many referenced rows exist), the key
    join only when the case already has rows, the GROUP BY only for rows not in key order."""
    quote = conn.dialect.identifier_preparer.quote
    keys = [c.name for c in table.primary_key.columns]
    target, key_list = _quoted(conn, table, keys)
    probes, expected = [], []
    case_ids = _distinct_ints(cols.get("case_id")) if "case_id" in keys else []
    where = f"WHERE t.case_id IN ({', '.join(map(str, case_ids))})"
    if case_ids:
        probes.append(f"EXISTS (SELECT 1 FROM {target} AS t {where})")
    for fk in table.foreign_keys:
        values = _distinct_ints(cols.get(fk.parent.name))
        if values:
            ref_table, ref = quote(fk.column.table.name), quote(fk.column.name)
            probes.append(f"(SELECT count(DISTINCT {ref}) FROM {ref_table} "
                          f"WHERE {ref} IN ({', '.join(map(str, values))}))")
            expected.append((len(values), f"{fk.parent.name} not in {fk.column.table.name}"))
    found = list(conn.exec_driver_sql(f"SELECT {', '.join(probes)}").one()) if probes else []
    problem = None
    if case_ids and found.pop(0) and conn.exec_driver_sql(
            f"SELECT 1 FROM {target} AS t JOIN {view} AS s USING ({key_list}) {where} LIMIT 1"
    ).first() is not None:  # the case has rows already: compare the keys
        problem = "a key already stored"
    for count, (want, message) in zip(found, expected):
        if problem is None and count != want:
            problem = message
    if problem is None and not _strictly_increasing(cols, keys) and conn.exec_driver_sql(
            f"SELECT 1 FROM {view} GROUP BY {key_list} HAVING count(*) > 1 LIMIT 1"
    ).first() is not None:
        problem = "a key given twice"
    if problem is not None:
        raise sa.exc.IntegrityError(f"INSERT INTO {target} (checked)", None, KeyViolation(
            f"{table.name}: {problem} (primary key {', '.join(keys)})"))


def _strictly_increasing(cols: dict[str, Any], keys: list[str]) -> bool:
    """Whether the staged rows are in strictly increasing key order (then no key repeats): one
    vectorized pass over consecutive rows; False (undecided: the caller checks in SQL) for
    unsorted rows or a text key column that varies."""
    n = len(next(iter(cols.values())))
    if n < 2:
        return True
    tied = np.ones(n - 1, dtype=bool)  # (n - 1,) consecutive pairs equal on the keys so far
    for key in keys:
        values = cols[key]
        if not isinstance(values, np.ndarray):
            if values.count(values[0]) == n:  # one repeated value (e.g. state_relevance.kind)
                continue
            return False
        before, after = values[:-1], values[1:]
        if np.any(tied & (after < before)):
            return False
        tied &= after == before
    return not tied.any()


def _distinct_ints(values) -> list[int]:
    """Distinct non-NULL integers of a staged column (an ndarray or a list)."""
    if values is None:
        return []
    if isinstance(values, np.ndarray):
        if values.size and values.min() == values.max():  # one case: no sort
            return [int(values[0])]
        return [int(v) for v in np.unique(values)]
    return sorted({int(v) for v in values if v is not None})


# -- PostgreSQL --------------------------------------------------------------------------------
_PG_TYPES = {"int32": "int4", "int64": "int8", "float64": "float8", "text": "text"}


def _pg_fixed_text(values: list) -> np.ndarray | None:
    """A text column holding one repeated non-NULL value as fixed-width bytes, else None."""
    distinct = set(values)
    if len(distinct) != 1 or None in distinct:
        return None
    encoded = next(iter(distinct)).encode()
    if not encoded or b"\x00" in encoded:
        return None
    return np.full(len(values), encoded, dtype=f"S{len(encoded)}")


def _pg_binary_rows(cols: list[np.ndarray], n: int) -> bytes:
    """COPY BINARY payload of NULL-free numeric / fixed-width text columns, no loop per row."""
    fields: list[tuple[str, str]] = [("nfields", ">i2")]
    for i, values in enumerate(cols):
        fields += [(f"len{i}", ">i4"), (f"val{i}", values.dtype.newbyteorder(">").str)]
    rec = np.empty(n, dtype=np.dtype(fields))  # (n,) packed big-endian records
    rec["nfields"] = len(cols)
    for i, values in enumerate(cols):
        rec[f"len{i}"] = values.dtype.itemsize
        rec[f"val{i}"] = values
    return _PG_HEADER + rec.tobytes() + _PG_TRAILER


def _postgres(conn: Connection, table: sa.Table, cols: dict[str, Any]) -> None:
    import psycopg

    target, names = _quoted(conn, table, list(cols))
    statement = f"COPY {target} ({names}) FROM STDIN (FORMAT BINARY)"
    kinds = [_kind(table.c[name]) for name in cols]
    raw = conn.connection.dbapi_connection  # psycopg.Connection, inside SQLAlchemy's transaction
    n = len(next(iter(cols.values())))
    try:
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            fixed = [v if isinstance(v, np.ndarray) else _pg_fixed_text(v) if k == "text" else None
                     for k, v in zip(kinds, cols.values())]
            if all(v is not None for v in fixed):
                copy.write(_pg_binary_rows(fixed, n))  # type: ignore[arg-type]
            else:
                copy.set_types([_PG_TYPES[k] for k in kinds])
                values = [v.tolist() if isinstance(v, np.ndarray) else v for v in cols.values()]
                for row in zip(*values):
                    copy.write_row(row)
    except psycopg.Error as exc:
        raise sa.exc.DBAPIError.instance(statement, None, exc, psycopg.Error, dialect=conn.dialect) from exc


# -- SQLite and others -------------------------------------------------------------------------
def _executemany(conn: Connection, table: sa.Table, cols: dict[str, Any]) -> None:
    values = [v.tolist() if isinstance(v, np.ndarray) else v for v in cols.values()]
    if conn.dialect.paramstyle != "qmark":  # other drivers: portable Core executemany
        conn.execute(sa.insert(table), [dict(zip(cols, row)) for row in zip(*values)])
        return
    target, names = _quoted(conn, table, list(cols))
    marks = ", ".join("?" for _ in cols)
    conn.exec_driver_sql(f"INSERT INTO {target} ({names}) VALUES ({marks})", list(zip(*values)))
