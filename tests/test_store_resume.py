"""Reliability of a real `harness-xai run --attribute` against the store (DuckDB, the default):
an identical second run does zero attribution passes and leaves every table identical (every
document's outcome in doc_outcomes included); a run
SIGKILLed at random points during attribution (≥ 3 kills, ≥ 20 cases) resumes to exactly the
result of an uninterrupted run, with no partial case, orphan row or duplicate at any point.
A run SIGKILLed at random moments before attribution (model loading, lm-eval's evaluation; the
store is already open) leaves a store the re-run completes to the same result.
The bench-sized variant (25 kills, 200 cases) is bench/bench_resume.py."""

from __future__ import annotations

import os
import random
import re
import select
import subprocess
import time
from pathlib import Path

import pytest

import harness_xai.pipeline as pipeline
from harness_xai.cli import main as cli_main
from harness_xai.store import run_sql
from test_store_support import (dump, integrity_problems, keyed_content, run_and_kill, run_command,
                                run_env, slow_attribution_env)

TASKS = "xai_arith,xai_kv"
LIMIT = 20


@pytest.fixture(scope="module")
def reference(micro_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str], int]:
    """An uninterrupted run (in-process): its database, argv and number of cases."""
    out = tmp_path_factory.mktemp("reference")
    db = f"duckdb:///{out / 'ref.duckdb'}"
    argv = run_command(micro_model, out / "results", db, TASKS, LIMIT, out / "cache")[3:] + ["--xai-no-progress"]
    assert cli_main(argv) == 0
    (n_cases,) = run_sql(db, "SELECT count(*) FROM cases")[1][0]
    assert n_cases >= 20, f"the micro model failed only {n_cases} samples: raise LIMIT"
    return db, argv, n_cases, out / "cache"


def test_identical_second_run_does_nothing(reference, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    db, argv, n_cases, _ = reference
    before = dump(db)
    (n_samples,) = run_sql(db, "SELECT sum(n_samples) FROM task_results")[1][0]
    assert len(before["doc_outcomes"]) == n_samples > n_cases  # every document, not only the cases
    passes: list[object] = []
    real = pipeline.explain_objectives  # every engine pass (forward + backward) goes through it
    monkeypatch.setattr(pipeline, "explain_objectives",
                        lambda model, objectives, *a, **k: passes.append(objectives) or real(model, objectives, *a, **k))
    capsys.readouterr()
    assert cli_main(argv) == 0
    assert passes == []  # zero attribution passes
    assert dump(db) == before  # every table, every column (ids and timestamps included)
    assert f"{n_cases} already stored" in capsys.readouterr().out


def _same(a: dict[str, list[tuple]], b: dict[str, list[tuple]]) -> None:
    """Equal contents; floats (relevance, Δℓ, log-likelihoods) within float tolerance."""
    assert a.keys() == b.keys()
    for table in a:
        assert len(a[table]) == len(b[table]), table
        for row_a, row_b in zip(a[table], b[table]):
            assert len(row_a) == len(row_b)
            for x, y in zip(row_a, row_b):
                if isinstance(x, float) and isinstance(y, float):
                    assert x == pytest.approx(y, rel=1e-5, abs=1e-6), (table, row_a, row_b)
                else:
                    assert x == y, (table, row_a, row_b)


def test_kill_9_during_attribution_then_resume(reference, micro_model: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    ref_db, _, n_cases, cache = reference
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    db = f"duckdb:///{tmp_path / 'resumed.duckdb'}"
    cmd = run_command(micro_model, tmp_path / "results", db, TASKS, LIMIT, cache)
    kills: list[tuple[int, float]] = []
    slow = slow_attribution_env(tmp_path / "site", 0.03)
    with (tmp_path / "site" / "sitecustomize.py").open("a") as site:
        site.write("\nimport harness_xai.distributed.runner as _runner\n_runner.WRITE_BATCH = 1\n")
    for _attempt in range(8):
        if len(kills) >= 3:
            break
        stored = run_sql(db, "SELECT count(*) FROM cases")[1][0][0] if (tmp_path / "resumed.duckdb").exists() else 0
        kill_after, delay = rng.randint(0, max(0, (n_cases - stored) // 4)), rng.uniform(0.0, 0.2)
        # each engine pass sleeps 30 ms and each case is its own transaction (the runner writes
        # several per transaction otherwise): on an idle machine the micro model attributes a case
        # in a few ms, and the run would often end, or store nothing, before the kill lands
        killed, done, todo = run_and_kill(cmd, kill_after, delay, env=slow)
        assert integrity_problems(db) == [], (seed, kills)  # never a partial case, orphan or duplicate
        if killed:
            kills.append((done, delay))
            assert todo == n_cases - stored, (seed, "a resumed run must only attribute the missing cases")
    assert len(kills) >= 3, (seed, kills)
    before_final = run_sql(db, "SELECT count(*) FROM cases")[1][0][0]
    assert 0 < before_final < n_cases, (seed, kills)
    capsys.readouterr()
    assert cli_main(cmd[3:] + ["--xai-no-progress"]) == 0  # the finishing run (in-process: no startup cost)
    summary = capsys.readouterr().out
    assert f"{n_cases} incorrect → {n_cases - before_final} attributed" in summary, summary
    assert f"{before_final} already stored" in summary, summary
    assert integrity_problems(db) == []
    assert run_sql(db, "SELECT count(*), count(DISTINCT doc_id || task) FROM cases")[1] == [(n_cases, n_cases)]
    _same(keyed_content(db), keyed_content(ref_db))  # equal to the uninterrupted run


def _kill_at(cmd: list[str], delay: float) -> bytes:
    """Start ``cmd``, SIGKILL it ``delay`` s later (stderr drained meanwhile); its stderr."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=run_env())
    buf, deadline = b"", time.monotonic() + delay
    try:
        while (left := deadline - time.monotonic()) > 0:
            if select.select([proc.stderr], [], [], min(left, 0.1))[0]:
                chunk = os.read(proc.stderr.fileno(), 65536)
                if not chunk:
                    break
                buf = (buf + chunk)[-8192:]
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    return buf


def test_kill_9_during_evaluation_then_rerun(reference, micro_model: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    """kill -9 at random moments before attribution (model loading, lm-eval's evaluation): the
    store (opened before evaluation) holds no partial anything, no temporary file is left that
    the next run does not clear, and the re-run equals an uninterrupted run."""
    ref_db, _, n_cases, cache = reference
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    path = tmp_path / "evalkill.duckdb"
    db = f"duckdb:///{path}"
    cmd = run_command(micro_model, tmp_path / "results", db, TASKS, LIMIT, cache)
    delays = sorted(rng.uniform(0.5, 12.0) for _ in range(3))
    for delay in delays:
        err = _kill_at(cmd, delay)
        assert not re.search(rb"\d+/\d+ cases", err) or path.exists(), (seed, delay)
        if path.exists():
            assert integrity_problems(db) == [], (seed, delay)
    capsys.readouterr()
    assert cli_main(cmd[3:] + ["--xai-no-progress"]) == 0
    assert f"{n_cases} incorrect" in capsys.readouterr().out
    assert integrity_problems(db) == []
    assert [p.name for p in tmp_path.iterdir() if ".migrating-" in p.name] == []
    _same(keyed_content(db), keyed_content(ref_db))
