"""Command-line entry points of the store, dispatched to by the main `harness-xai` CLI.

``db_main``  — `harness-xai db upgrade|current|history [--db URL]`:
  upgrade: create the database if needed and migrate it to head, print the revision (another
    program's non-empty database is refused and left untouched unless --init);
  current: print the stored revision (with "(head)" or how to upgrade) or "empty";
  history: list the migration revisions, newest first, marking head (and current with --db).
``sql_main`` — `harness-xai sql --db URL [--format table|csv|json|parquet] [--param k=v]…
  [--out FILE] "SELECT …"`: run one read-only statement (store/query.py) and print the result
  (or write it to --out; parquet needs --out); "-" reads the query from stdin. Table format:
  header, dashed rule, left-aligned text / right-aligned numbers, newlines shown as ⏎, cells cut
  at --max-width, then "(N rows)".
``export_main`` — `harness-xai export --format parquet --db URL --out DIR`: every table of the
  store as DIR/<table>.parquet plus DIR/manifest.json (store/export.py, pyarrow); `--format eee`:
  Every Eval Ever records per run (store/eee.py); `--format graph-json [--case ID]`: graphs as
  circuit-tracer/Neuronpedia JSON (store/graphjson.py).

Argument errors and every failure raise ``UserError`` (one line; the main CLI exits with 2).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import decimal
import io
import json
import sys
from pathlib import Path
from typing import Any, NoReturn, TextIO

import sqlalchemy as sa

from harness_xai.errors import UserError
from harness_xai.store import migrate
from harness_xai.store.engine import db_file, display_url, make_engine, normalize_url, open_error
from harness_xai.store.query import run_sql
from harness_xai.store.writer import open_for_writing


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors become one-line UserErrors instead of sys.exit(2)."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message} (see `{self.prog} --help`)")


# -- db ------------------------------------------------------------------------------------------
def _db_upgrade(db: str, out: TextIO, init: bool = False) -> None:
    url = normalize_url(db)
    engine, lock, state = open_for_writing(url, create=True, upgrade=True, init=init)  # locked
    engine.dispose()
    if lock is not None:
        lock.release()
    shown = display_url(url)
    if state.kind == migrate.AT_HEAD:
        out.write(f"{shown}: already at revision {state.head} (head)\n")
    else:
        out.write(f"{shown}: upgraded {state.current or state.kind} -> {state.head} (head)\n")


def _current_state(db: str) -> tuple[str, migrate.SchemaState]:
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
            state = migrate.schema_state(conn)
            conn.rollback()
    finally:
        engine.dispose()
    return url, state


def _db_current(db: str, out: TextIO) -> None:
    url, state = _current_state(db)
    if state.kind == migrate.EMPTY:
        out.write("empty\n")
    elif state.kind == migrate.AT_HEAD:
        out.write(f"{state.current} (head)\n")
    elif state.kind == migrate.BEHIND:
        out.write(f"{state.current} (behind head {state.head}: run `harness-xai db upgrade --db {display_url(url)}`)\n")
    elif state.kind == migrate.UNKNOWN:
        out.write(f"{state.current} (unknown to this harness-xai; head is {state.head})\n")
    elif state.kind == migrate.OTHER:
        out.write(f"none (another program's database: {len(state.others)} tables/views)\n")
    else:
        out.write("none (harness-xai tables without a schema revision)\n")


def _db_history(db: str | None, out: TextIO) -> None:
    current = _current_state(db)[1].current if db else None
    for revision, down, message, is_head in migrate.history():
        marks = [m for m, on in (("head", is_head), ("current", revision == current)) if on]
        suffix = f" ({', '.join(marks)})" if marks else ""
        title = message.splitlines()[0] if message else ""
        out.write(f"{down or '<base>'} -> {revision}{suffix}: {title}\n")


def db_main(argv: list[str], out: TextIO | None = None) -> int:
    """`harness-xai db upgrade|current|history`; returns the exit code (0)."""
    out = out or sys.stdout
    parser = _Parser(prog="harness-xai db", description="Manage the result database schema (alembic).")
    sub = parser.add_subparsers(dest="action", required=True, parser_class=_Parser)
    for name, help_text, required in (
        ("upgrade", "create the database if needed and migrate it to the newest schema", True),
        ("current", "print the schema revision of the database", True),
        ("history", "list the schema revisions", False),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--db", required=required, help="database file (.duckdb/.sqlite) or URL")
        if name == "upgrade":
            p.add_argument("--init", action="store_true",
                           help="add the harness-xai tables to another program's database "
                                "(refused without it)")
    args = parser.parse_args(argv)
    if args.action == "upgrade":
        _db_upgrade(args.db, out, init=args.init)
    elif args.action == "current":
        _db_current(args.db, out)
    else:
        _db_history(args.db, out)
    return 0


# -- sql -----------------------------------------------------------------------------------------
def _parse_param(text: str) -> tuple[str, Any]:
    """``name=value``; the value is read as JSON when it parses (numbers, null, strings in quotes)."""
    name, sep, raw = text.partition("=")
    if not sep or not name.isidentifier():
        raise UserError(f"bad --param {text!r}: expected NAME=VALUE, used in the query as :NAME")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    if isinstance(value, (list, dict)):
        value = raw
    return name, value


def _cell(value: Any, max_width: int) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        text = format(value, ".6g")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        text = bytes(value).hex()
    else:
        text = str(value)
    text = text.replace("\r\n", "⏎").replace("\n", "⏎").replace("\r", "⏎").replace("\t", " ")
    if max_width > 0 and len(text) > max_width:
        text = text[: max(1, max_width - 1)] + "…"
    return text


def _is_numeric_column(values: list[Any]) -> bool:
    """True when every non-NULL value is a number (and there is at least one): right-align it."""
    present = [v for v in values if v is not None]
    return bool(present) and all(
        isinstance(v, (int, float, decimal.Decimal)) and not isinstance(v, bool) for v in present
    )


def format_table(columns: list[str], rows: list[tuple], max_width: int = 60) -> str:
    """Aligned text table: header, rule, rows, then "(N rows)"."""
    cells = [[_cell(v, max_width) for v in row] for row in rows]
    widths = [len(c) for c in columns]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    numeric = [_is_numeric_column([row[i] for row in rows]) for i in range(len(columns))]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return " | ".join(parts).rstrip()

    out = []
    if columns:
        out.append(line(list(columns)))
        out.append("-+-".join("-" * w for w in widths))
        out.extend(line(row) for row in cells)
    out.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    return "\n".join(out) + "\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)


def format_result(columns: list[str], rows: list[tuple], fmt: str, max_width: int = 60) -> str:
    """Render a query result as table, csv or json (list of objects)."""
    if fmt == "table":
        return format_table(columns, rows, max_width)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
        return buf.getvalue()
    records = [dict(zip(columns, row)) for row in rows]
    return json.dumps(records, ensure_ascii=False, indent=2, default=_json_default, allow_nan=True) + "\n"


def sql_main(argv: list[str], out: TextIO | None = None) -> int:
    """`harness-xai sql --db URL "SELECT …"`; returns the exit code (0)."""
    out = out or sys.stdout
    parser = _Parser(prog="harness-xai sql", description="Run one read-only SQL statement on a result database.")
    parser.add_argument("query", help='SQL statement, e.g. "SELECT task, count(*) FROM cases GROUP BY 1"; "-" reads stdin')
    parser.add_argument("--db", required=True, help="database file (.duckdb/.sqlite) or URL")
    parser.add_argument("--format", choices=("table", "csv", "json", "parquet"), default="table",
                        help="output format (default table; parquet needs --out)")
    parser.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE", help="bind :NAME in the query")
    parser.add_argument("--max-width", type=int, default=60, help="cut table cells to this width (0: no limit)")
    parser.add_argument("--out", "-o", default=None, metavar="FILE", help="write the result to FILE instead of stdout")
    args = parser.parse_args(argv)
    if args.format == "parquet" and not args.out:
        raise UserError("--format parquet writes a file: add --out FILE.parquet")
    query = sys.stdin.read() if args.query == "-" else args.query
    params = dict(_parse_param(p) for p in args.param)
    columns, rows = run_sql(args.db, query, params)
    if args.format == "parquet":
        from harness_xai.store.export import rows_to_parquet

        rows_to_parquet(columns, rows, args.out)
        return 0
    text = format_result(columns, rows, args.format, args.max_width)
    if args.out:
        Path(args.out).expanduser().write_text(text, encoding="utf-8")
    else:
        out.write(text)
    return 0


def export_main(argv: list[str], out: TextIO | None = None) -> int:
    """`harness-xai export --format parquet --db URL --out DIR`; returns the exit code (0)."""
    from harness_xai.store.export import export_parquet

    out = out or sys.stdout
    parser = _Parser(prog="harness-xai export", description="Dump every table of a result database.")
    parser.add_argument("--db", required=True, help="database file (.duckdb/.sqlite) or URL")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    parser.add_argument("--format", choices=("parquet", "eee", "graph-json"), default="parquet",
                        help="parquet: every table; eee: Every Eval Ever aggregate + per-instance "
                             "records per run; graph-json: each case's graph as circuit-tracer/"
                             "Neuronpedia JSON")
    parser.add_argument("--case", type=int, default=None, help="graph-json: only this case id")
    args = parser.parse_args(argv)
    if args.format != "parquet":
        from harness_xai.store.export import export_json

        got = export_json(args.db, args.out, args.format, args.case)
        what = ", ".join(f"{v} {k}" for k, v in got.items())
        out.write(f"exported {what} ({args.format}) to {Path(args.out).expanduser()}\n")
        return 0
    counts = export_parquet(args.db, args.out)
    total = sum(counts.values())
    out.write(f"exported {len(counts)} tables ({total} rows) to {Path(args.out).expanduser()}\n")
    return 0
