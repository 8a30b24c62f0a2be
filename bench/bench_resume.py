"""Bench-sized kill -9 / resume check: 25 SIGKILLs during attribution of ≥ 200 cases.

Usage:
    python bench/bench_resume.py                          # 25 kills, DuckDB, ≥ 200 cases
    python bench/bench_resume.py --kills 5 --limit 40     # quick
    python bench/bench_resume.py --backend sqlite

The CI-sized version is tests/test_store_resume.py (≥ 3 kills, ≥ 20 cases); both use the helpers
in tests/test_store_support.py.
1. Build the tests' micro model (tests/conftest.py MICRO_SPEC) unless --model is given.
2. Reference: one uninterrupted `python -m harness_xai run … --attribute` into ref.<backend>.
3. Kill loop on a second store: start the same run, wait until its progress bar shows a random
   number of cases done (at most twice the fair share of what is left per remaining kill), sleep
   a random 0–0.2 s, SIGKILL; after every kill check the store for partial cases, orphan rows and
   duplicate unit keys. Repeat until --kills kills landed during attribution.
4. Finish with one more run; require exact case counts and content equal to the reference
   (relevance within 1e-5 relative), and print kills, cases and timings.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_store_support import (  # noqa: E402
    integrity_problems,
    keyed_content,
    run_and_kill,
    run_command,
    run_env,
)

from harness_xai.store import run_sql  # noqa: E402


def _count(db: str, path: Path) -> int:
    return run_sql(db, "SELECT count(*) FROM cases")[1][0][0] if path.exists() else 0


def _equal(a: dict, b: dict) -> list[str]:
    problems = []
    for table in a:
        if len(a[table]) != len(b[table]):
            problems.append(f"{table}: {len(a[table])} vs {len(b[table])} rows")
            continue
        for ra, rb in zip(a[table], b[table]):
            for x, y in zip(ra, rb):
                same = (math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6) if isinstance(x, float) and isinstance(y, float)
                        else x == y)
                if not same:
                    problems.append(f"{table}: {ra} != {rb}")
                    break
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=25)
    parser.add_argument("--min-cases", type=int, default=200)
    parser.add_argument("--limit", type=int, default=150, help="lm-eval --limit per task")
    parser.add_argument("--tasks", default="xai_arith,xai_kv")
    parser.add_argument("--backend", choices=("duckdb", "sqlite"), default="duckdb")
    parser.add_argument("--model", default=None, help="model directory (default: build the micro model)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.model:
        model = Path(args.model)
    else:
        from conftest import MICRO_SPEC

        from harness_xai.zoo import build_model
        from harness_xai.zoo.train import TrainSpec

        model = Path(build_model(work / "zoo", spec=TrainSpec(**MICRO_SPEC), progress=False))
    cache = work / "cache"
    ref_path, path = work / f"ref.{args.backend}", work / f"resumed.{args.backend}"
    ref_db, db = str(ref_path), str(path)
    print(f"seed {seed}; work dir {work}", flush=True)

    start = time.perf_counter()
    ref = subprocess.run(run_command(model, work / "ref-results", ref_db, args.tasks, args.limit, cache),
                         capture_output=True, text=True, env=run_env())
    if ref.returncode != 0:
        print(ref.stderr[-3000:], file=sys.stderr)
        return 1
    n_cases = _count(ref_db, ref_path)
    print(f"reference: {n_cases} cases in {time.perf_counter() - start:.0f}s", flush=True)
    if n_cases < args.min_cases:
        print(f"only {n_cases} cases (< {args.min_cases}): raise --limit", file=sys.stderr)
        return 1

    cmd = run_command(model, work / "results", db, args.tasks, args.limit, cache)
    kills, attempts = [], 0
    start = time.perf_counter()
    while len(kills) < args.kills:
        attempts += 1
        stored = _count(db, path)
        left = n_cases - stored
        if left <= 1 or attempts > 3 * args.kills:
            print(f"cannot place more kills ({left} cases left after {attempts} runs)", file=sys.stderr)
            return 1
        share = max(1, left // (args.kills - len(kills) + 1))
        kill_after, delay = rng.randint(0, min(left - 1, 2 * share)), rng.uniform(0.0, 0.2)
        killed, done, todo = run_and_kill(cmd, kill_after, delay)
        problems = integrity_problems(db) if path.exists() else []
        if problems:
            print(f"kill {len(kills) + 1}: store inconsistent: {problems}", file=sys.stderr)
            return 1
        if killed:
            kills.append(done)
            print(f"kill {len(kills):2d}: after {done}/{todo} cases of this run (+{delay:.2f}s); "
                  f"{_count(db, path)} stored, consistent", flush=True)
    before = _count(db, path)
    final = subprocess.run(cmd, capture_output=True, text=True, env=run_env())
    if final.returncode != 0:
        print(final.stderr[-3000:], file=sys.stderr)
        return 1
    problems = integrity_problems(db) + _equal(keyed_content(db), keyed_content(ref_db))
    total = _count(db, path)
    print(f"{len(kills)} kills in {attempts} interrupted runs ({time.perf_counter() - start:.0f}s); "
          f"{before} cases stored before the final run, {total} after (reference {n_cases}); "
          f"{'IDENTICAL to the uninterrupted run' if not problems and total == n_cases else problems[:5]}")
    return 0 if not problems and total == n_cases else 1


if __name__ == "__main__":
    sys.exit(main())
