"""Report generation at scale: wall seconds to render a store of many failures.

Usage:
    python bench/bench_report.py                       # 10,000 failures (the #7 goal: <= 30 s)
    python bench/bench_report.py --cases 2000 --keep /tmp/bench-store.duckdb

Steps:
1. Build a DuckDB store (not timed, reused with ``--keep PATH`` when it exists): ``--runs`` runs of
   one model series at increasing checkpoint steps, one task, ``--cases`` attributed failures in
   all, shaped like the zoo demo's: ``--tokens`` tokens per case with segments and evidence,
   layer relevance (``--layers`` + 1 rows), the three internal state kinds, heads
   (``--heads`` per block), per-case analysis metrics and triage, every evaluated doc's outcome;
   every ``--graph-every``-th case also gets a deletion curve and a graph of up to 200 edges.
   Docs repeat across runs (the same doc at several checkpoints), as in a sweep.
2. Render the report (``render_report``) into a fresh directory and time it (wall and CPU);
   count the pages and bytes written.
3. Print one line of results; ``--json`` writes them to a file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from factory import explained  # noqa: E402
from harness_xai.analysis import analyse  # noqa: E402
from harness_xai.records import (Case, DocOutcome, Explanation, Faithfulness, GraphRecord,  # noqa: E402
                                 RunRecord, TaskSummary)
from harness_xai.report import render_report  # noqa: E402
from harness_xai.store import Store  # noqa: E402


def _case(doc_id: int, run: int, rng: np.random.Generator, a: argparse.Namespace,
          graph: bool) -> tuple[Case, Explanation]:
    n, L = a.tokens, a.layers
    rel = rng.normal(size=n).astype(np.float32)  # (n,)
    delta = float(rng.normal())
    layers = rng.normal(size=(L + 1, n)).astype(np.float32)  # (L + 1, n)
    states = {k: rng.normal(size=(L, n)).astype(np.float32) for k in ("mid", "attn", "mlp")}
    heads = rng.normal(size=(L, a.heads, n)).astype(np.float32)
    internals: dict = {}
    if graph:
        k = min(200, L * n)
        src = rng.choice(L * n, k, replace=False)  # distinct (layer, position) sources
        internals["faithfulness"] = Faithfulness(
            fractions=[0.1, 0.2, 0.5], n_removed=[1, 2, 5], delta_relevance=[0.5, 0.1, -0.3],
            delta_random=[0.9, 0.8, 0.7], aopc=0.6, aopc_random=0.2, baseline_token_id=0)
        internals["graph"] = GraphRecord(
            node_layers=["emb"] + [str(l) for l in range(1, L + 1)],
            node_relevance=rng.normal(size=(L + 1, n)).astype(np.float32),
            source_layer=(src // n).astype(np.int32), source_position=(src % n).astype(np.int32),
            target_layer=np.full(k, L, np.int32), target_position=np.full(k, n - 1, np.int32),
            weight=rng.normal(size=k).astype(np.float32), params={"mass": 0.85},
            metrics={"n_edges": k})
    case, ex = explained(
        rel, task="bench_task", doc_id=doc_id, delta=delta, layer_relevance=layers,
        state_relevance=states, head_relevance=heads,
        prompt=" ".join(f"w{i}" for i in range(n)), pred_index=1, gold_index=0,
        pred_text=" 12", gold_text=" 34", position=n, wrong_token_id=5, gold_token_id=6,
        wrong_token=" 12", gold_token=" 34", ll_pred=-1.0, ll_gold=-2.0,
        token_ids=range(100, 100 + n), tokens=[f" w{i}" for i in range(n)],
        segments=["question"] * n, segment_index=[None] * n,
        evidence_positions=[int(doc_id % n)], output_type="multiple_choice", **internals)
    return case, analyse(case, ex)


def build(path: Path, a: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    per_run = a.cases // a.runs
    docs = per_run * 2  # each run evaluates twice as many docs as it gets wrong
    with Store.open(str(path)) as store:
        for r in range(a.runs):
            run = RunRecord(
                run_key=f"bench-{r}", model="hf", model_args="{}", pretrained="/bench/model",
                revision=None, model_type="llama", n_params=100_000, tasks=["bench_task"],
                method="attnlrp", lm_eval_version="0.4.13", harness_xai_version="bench",
                created_at=dt.datetime(2026, 11, 24, tzinfo=dt.timezone.utc), step=100 * r,
                config={"method": "attnlrp", "config": {"limit": docs}})
            run_id = store.ensure_run(run)
            wrong = sorted(rng.choice(docs, per_run, replace=False).tolist())
            outcomes = [DocOutcome(doc_id=d, doc_hash=f"d{d}", filter="none", metric="acc",
                                   value=0.0 if d in set(wrong) else 1.0,
                                   correct=0 if d in set(wrong) else 1) for d in range(docs)]
            store.write_task_summaries(run_id, [TaskSummary(
                "bench_task", "acc", 0.5, docs, per_run, "multiple_choice", outcomes=outcomes)])
            for i, d in enumerate(wrong):
                store.write_case(run_id, *_case(d, r, rng, a, graph=i % a.graph_every == 0))
            print(f"  built run {r + 1}/{a.runs}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--graph-every", type=int, default=10)
    p.add_argument("--keep", help="store path to build once and reuse")
    p.add_argument("--json", help="write the results to this file")
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-report-"))
    try:
        db = Path(a.keep) if a.keep else work / "bench.duckdb"
        if not db.exists():
            t0 = time.perf_counter()
            build(db, a)
            print(f"built {a.cases} cases in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        out = work / "report"
        w0, c0 = time.perf_counter(), time.process_time()
        render_report(str(db), out)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        files = [f for f in out.rglob("*.html")]
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        result = {"cases": a.cases, "runs": a.runs, "tokens": a.tokens, "layers": a.layers,
                  "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "pages": len(files),
                  "bytes": size, "cases_per_s": round(a.cases / wall, 1),
                  "cpus": os.cpu_count(), "load": os.getloadavg()[0]}
        print(json.dumps(result))
        if a.json:
            Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
