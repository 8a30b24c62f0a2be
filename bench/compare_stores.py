"""Compare two harness-xai DuckDB stores table by table (content; floats within --tolerance).

Usage: python bench/compare_stores.py A.duckdb B.duckdb [--tolerance 1e-6]

Every base table is read in full, ordered by all columns; run creation times are skipped, and
in JSON columns the timing entry ``seconds`` is dropped (graph metrics). Prints one line per table
(rows, differing values, largest float difference) and IDENTICAL or the number of tables that
differ; exit 1 when any does. Used to show that a refactor changed no stored number.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import duckdb

SKIP = {("runs", "created_at")}


def _norm(value):
    if isinstance(value, str) and value[:1] in "{[":
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        if isinstance(parsed, dict):
            parsed.pop("seconds", None)
        return json.dumps(parsed, sort_keys=True)
    return value


def _columns(conn, table: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
        "ORDER BY ordinal_position", [table]).fetchall()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--tolerance", type=float, default=1e-6)
    args = p.parse_args()
    ca, cb = duckdb.connect(args.a, read_only=True), duckdb.connect(args.b, read_only=True)
    tables = [r[0] for r in ca.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
        "ORDER BY 1").fetchall()]
    bad = 0
    for table in tables:
        cols = _columns(ca, table)
        if cols != _columns(cb, table):
            print(f"{table}: columns differ")
            bad += 1
            continue
        keep = [c for c in cols if (table, c) not in SKIP]
        query = f"SELECT {', '.join(keep)} FROM {table} ORDER BY ALL"  # names from the schema
        ra, rb = ca.execute(query).fetchall(), cb.execute(query).fetchall()
        if len(ra) != len(rb):
            print(f"{table}: {len(ra)} rows vs {len(rb)}")
            bad += 1
            continue
        worst, diffs = 0.0, 0
        for x, y in zip(ra, rb):
            for u, v in zip(map(_norm, x), map(_norm, y)):
                if isinstance(u, float) and isinstance(v, float):
                    if math.isnan(u) and math.isnan(v):
                        continue
                    worst = max(worst, abs(u - v))
                    diffs += abs(u - v) > args.tolerance
                elif u != v:
                    diffs += 1
        print(f"{table}: {len(ra)} rows, {diffs} differing values, max float diff {worst:.2e}")
        bad += diffs > 0
    print("IDENTICAL" if not bad else f"{bad} TABLES DIFFER")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
