"""Store write throughput: rows/s of token-relevance rows and graph edges on each backend.

Usage:
    python bench/bench_store.py                                   # full: 1M rows each, 3 backends
    python bench/bench_store.py --rows 100000 --backends duckdb   # quick

For each backend (DuckDB file, SQLite file, PostgreSQL: a throwaway server from
harness_xai.store.pgtemp with PostgreSQL's durable defaults, fsync on) and each workload:
1. ``tokens``: ``--rows`` token_relevance rows written through ``Store.write_case``, in cases of
   ``--tokens-per-case`` tokens (token ids, text, relevance, segment labels). Every case is its
   own transaction (case row + rows + commit), exactly as a run writes them.
2. ``edges``: ``--rows`` graph_edges rows through ``Store.write_case``, in cases of
   ``--edges-per-case`` edges (plus the graphs summary row).
3. ``relevance``: whole explained cases through ``Store.write_case``, as an attribution writes
   them: per case ``--tokens-per-case`` token rows plus layer (``--layers`` + 1), state (3 kinds
   × ``--layers``) and head (``--layers`` × ``--heads``) relevance rows per token — the
   "relevance rows/s" of issue #15 (98 rows per token at 8 layers × 8 heads).
4. ``bulk``: the raw bulk path alone (``bulk.insert_columns``): ``--rows`` graph-edge rows in
   one statement and one transaction — the ceiling the per-case figures approach. On DuckDB this
   is the checked insert (bulk.py: keys unique, none stored, case exists; revision 0008), on
   SQLite / PostgreSQL the tables' own keys.
5. ``unsorted``: ``bulk`` with the rows in shuffled key order (DuckDB: the uniqueness check
   cannot use the sorted fast path and runs its GROUP BY).
6. ``keyed``: ``bulk`` into a scratch copy of graph_edges with the database's own PRIMARY and
   FOREIGN KEY and no checks — what every backend did before revision 0008 (DuckDB's ART indexes).
7. ``nokeys``: the same into a scratch copy without primary or foreign key and without checks:
   the floor; ``bulk`` / ``nokeys`` is the share of the time the duplicate protection takes.
rows/s = rows / wall seconds of the writes (case construction excluded, commit included); CPU s
= this process's CPU seconds over the same span (DuckDB's threads included; on a loaded machine
rows per CPU second is the steadier figure). The database starts empty; the schema is the real
one at head.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from factory import explained  # noqa: E402
from harness_xai.records import ATTRIBUTED, Case, Explanation, GraphRecord, RunRecord  # noqa: E402
from harness_xai.store import Store, bulk, pgtemp  # noqa: E402
from harness_xai.store.models import cases, graph_edges  # noqa: E402


def _run() -> RunRecord:
    return RunRecord(run_key="bench", model="hf", model_args="", pretrained="bench", revision=None,
                     model_type="llama", n_params=1, tasks=["bench"], method="attnlrp",
                     lm_eval_version="0", harness_xai_version="0")


def _case(doc_id: int, rng: np.random.Generator, n_tokens: int = 0,
          n_edges: int = 0) -> tuple[Case, Explanation]:
    fields: dict = {}
    if n_tokens:
        fields["tokens"] = [f" tok{i % 977}" for i in range(n_tokens)]
        fields["token_ids"] = rng.integers(0, 50_000, n_tokens).tolist()
        fields["token_relevance"] = rng.normal(size=n_tokens).astype(np.float32)  # (n,)
        fields["segments"] = ["fewshot"] * (n_tokens // 2) + ["question"] * (n_tokens - n_tokens // 2)
    if n_edges:
        width = 256
        idx = np.arange(n_edges)  # edge i: (i // width, i % width) → (i // width + 1, (i * 7) % width)
        fields["graph"] = GraphRecord(
            node_layers=[str(i) for i in range(n_edges // width + 2)],
            node_relevance=np.zeros((n_edges // width + 2, width), np.float32),
            source_layer=(idx // width).astype(np.int32), source_position=(idx % width).astype(np.int32),
            target_layer=(idx // width + 1).astype(np.int32), target_position=((idx * 7) % width).astype(np.int32),
            weight=rng.normal(size=n_edges).astype(np.float32), metrics={"mass_kept": 0.9})
    return explained(fields.pop("token_relevance", None), task="bench", doc_id=doc_id,
                     prompt_hash="p", target_hash="t", **fields)


def _relevance_case(doc_id: int, rng: np.random.Generator, n_tokens: int, n_layers: int,
                    n_heads: int) -> tuple[Case, Explanation]:
    """A whole explanation: tokens, layers, states and heads (98 rows per token at 8 × 8)."""
    case, ex = _case(doc_id, rng, n_tokens=n_tokens)
    ex = replace(ex, layer_relevance=rng.normal(size=(n_layers + 1, n_tokens)),
                 state_relevance={k: rng.normal(size=(n_layers, n_tokens)) for k in ("mid", "attn", "mlp")},
                 head_relevance=rng.normal(size=(n_layers, n_heads, n_tokens)))
    return case, ex


def _timed_cases(db: str, make, n_cases: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    batch = [make(i, rng) for i in range(n_cases)]
    with Store.open(db) as store:
        run_id = store.ensure_run(_run())
        start, cpu = time.perf_counter(), time.process_time()
        for case, ex in batch:
            store.write_case(run_id, case, ex)
        return time.perf_counter() - start, time.process_time() - cpu


def _timed_bulk(db: str, n_rows: int, keys: str = "checked", shuffle: bool = False) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    width = 1024
    idx = rng.permutation(n_rows) if shuffle else np.arange(n_rows)
    columns = {"case_id": 1, "source_layer": (idx // width).astype(np.int32),
               "source_position": (idx % width).astype(np.int32),
               "target_layer": (idx // width + 1).astype(np.int32),
               "target_position": ((idx * 7) % width).astype(np.int32), "weight": rng.normal(size=n_rows)}
    with Store.open(db) as store:
        run_id = store.ensure_run(_run())
        with store.engine.begin() as conn:
            conn.execute(sa.insert(cases).values(id=1, run_id=run_id, task="bulk", doc_id=0, doc_hash="h",
                                                 filter="none", status=ATTRIBUTED))
        table = graph_edges
        if keys != "checked":  # a scratch copy: with the database's own keys (as before 0008) or none
            extra = [sa.PrimaryKeyConstraint(*[c.name for c in graph_edges.primary_key.columns]),
                     sa.ForeignKeyConstraint(["case_id"], [cases.c.id])] if keys == "keyed" else []
            table = sa.Table(f"bench_edges_{keys}", sa.MetaData(),
                             *[sa.Column(c.name, c.type) for c in graph_edges.columns], *extra)
            table.create(store.engine)
        start, cpu = time.perf_counter(), time.process_time()
        with store.engine.begin() as conn:
            if keys == "checked":
                bulk.insert_columns(conn, table, columns)
            else:  # the plain insert, no checks: the floor
                with _unchecked():
                    bulk.insert_columns(conn, table, columns)
        return time.perf_counter() - start, time.process_time() - cpu


@contextmanager
def _unchecked():
    saved = bulk.DUCKDB_CHECKED
    bulk.DUCKDB_CHECKED = frozenset()
    try:
        yield
    finally:
        bulk.DUCKDB_CHECKED = saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per workload (default 1M)")
    parser.add_argument("--tokens-per-case", type=int, default=2000)
    parser.add_argument("--edges-per-case", type=int, default=20_000)
    parser.add_argument("--layers", type=int, default=8, help="relevance workload: blocks")
    parser.add_argument("--heads", type=int, default=8, help="relevance workload: heads")
    parser.add_argument("--backends", default="duckdb,sqlite,postgresql")
    parser.add_argument("--workloads", default="tokens,edges,relevance,bulk,unsorted,keyed,nokeys")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    server = None
    print(f"{'backend':<11} {'workload':<9} {'rows':>9} {'cases':>6} {'seconds':>8} {'rows/s':>11} "
          f"{'CPU s':>7} {'rows/CPU s':>11}  (load {' '.join(f'{x:.1f}' for x in os.getloadavg())})")
    try:
        for backend in args.backends.split(","):
            for workload in args.workloads.split(","):
                if backend == "postgresql":
                    if server is None:
                        server = pgtemp.TempPostgres(fast=False).start()
                    db = server.create_database()
                else:
                    db = str(tmp / f"{workload}.{backend}")
                if workload == "tokens":
                    n_cases = max(1, args.rows // args.tokens_per_case)
                    rows = n_cases * args.tokens_per_case
                    seconds = _timed_cases(db, lambda i, rng: _case(i, rng, n_tokens=args.tokens_per_case), n_cases)
                elif workload == "edges":
                    n_cases = max(1, args.rows // args.edges_per_case)
                    rows = n_cases * args.edges_per_case
                    seconds = _timed_cases(db, lambda i, rng: _case(i, rng, n_edges=args.edges_per_case), n_cases)
                elif workload == "relevance":
                    per_case = args.tokens_per_case * (1 + (args.layers + 1) + 3 * args.layers
                                                       + args.layers * args.heads)
                    n_cases = max(1, args.rows // per_case)
                    rows = n_cases * per_case
                    seconds = _timed_cases(db, lambda i, rng: _relevance_case(
                        i, rng, args.tokens_per_case, args.layers, args.heads), n_cases)
                else:
                    n_cases, rows = 1, args.rows
                    keys = {"nokeys": "none", "keyed": "keyed"}.get(workload, "checked")
                    seconds = _timed_bulk(db, rows, keys=keys, shuffle=workload == "unsorted")
                wall, cpu = seconds
                print(f"{backend:<11} {workload:<9} {rows:>9} {n_cases:>6} {wall:>8.2f} {rows / wall:>11,.0f} "
                      f"{cpu:>7.2f} {rows / max(cpu, 1e-9):>11,.0f}", flush=True)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
