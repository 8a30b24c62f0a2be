"""Scale-out: two CPU ranks (gloo) under torchrun / accelerate launch equal one process; the
protocol between ranks; budgets and resume; grouping into passes; shard files."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import torch

from harness_xai.cli import main
from harness_xai.distributed import Budget, plan, runner, shards
from harness_xai.errors import UserError
from harness_xai.records import PENDING, Case, Explanation, GraphRecord, RunRecord

TASKS = Path(__file__).resolve().parents[1] / "tasks"
TOL = 1e-5


# -- helpers ----------------------------------------------------------------------------------
def _run_args(model: Path, db: str, out: Path | None = None, limit: int = 12,
              tasks: str = "xai_arith,xai_kv,xai_kv_gen") -> list[str]:
    args = ["--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
            "--tasks", tasks, "--include_path", str(TASKS),
            "--device", "cpu", "--batch_size", "8", "--limit", str(limit),
            "--attribute", "--xai-db", db, "--xai-no-progress"]
    return args + (["--output_path", str(out), "--log_samples"] if out else [])


def _snapshot(url: str) -> dict:
    """Every table of a store keyed by content (unit keys instead of surrogate ids)."""
    from sqlalchemy import text

    from harness_xai.store.engine import make_engine
    from harness_xai.store.models import ALL_TABLES

    engine = make_engine(url, read_only=True)
    snap: dict = {}
    try:
        with engine.connect() as conn:
            snap["runs"] = {r.run_key: (r.model, r.model_args, r.tasks, r.method, r.config)
                            for r in conn.execute(text("SELECT * FROM runs"))}
            snap["task_results"] = {r.task: tuple(r)[1:] for r in
                                    conn.execute(text("SELECT * FROM task_results"))}
            snap["doc_outcomes"] = {
                (r["task"], r["doc_id"], r["doc_hash"], r["filter"]):
                {k: r[k] for k in ("metric", "value", "correct")}
                for r in conn.execute(text("SELECT * FROM doc_outcomes")).mappings()}
            unit = {}
            for r in conn.execute(text("SELECT * FROM cases")).mappings():
                unit[r["id"]] = (r["task"], r["doc_id"], r["doc_hash"], r["filter"])
                snap.setdefault("cases", {})[unit[r["id"]]] = {
                    k: v for k, v in r.items() if k not in ("id", "run_id")}
            for table in ALL_TABLES:
                if "case_id" not in table.c:
                    continue
                key_cols = [c.name for c in table.primary_key.columns if c.name != "case_id"]
                rows = {}
                for r in conn.execute(text(f"SELECT * FROM {table.name}")).mappings():
                    key = (unit[r["case_id"]], *(r[c] for c in key_cols))
                    rows[key] = {k: v for k, v in r.items() if k not in ("case_id", *key_cols)}
                snap[table.name] = rows
    finally:
        engine.dispose()
    return snap


def _close(a, b) -> bool:
    """Equal, floats ±TOL — also the floats inside a JSON column (``method_params`` records the
    contrast's Δ, which a rank's thread count may change in the last digits)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= TOL + TOL * abs(b)
    if isinstance(a, str) and isinstance(b, str) and a[:1] == b[:1] == "{" and a != b:
        try:
            return _close(json.loads(a), json.loads(b))
        except ValueError:
            return False
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_close, a, b))
    return a == b


def assert_same_store(got: dict, want: dict, only: set | None = None) -> None:
    """Same rows everywhere (``only``: restrict case tables to these unit keys); floats ±1e-5."""
    assert got["runs"].keys() == want["runs"].keys()
    assert got["task_results"] == want["task_results"]
    for table in want:
        if table in ("runs", "task_results"):
            continue
        unit = table in ("cases", "doc_outcomes")  # keyed by the unit key itself
        w = {k: v for k, v in want[table].items() if only is None or (k if unit else k[0]) in only}
        g = {k: v for k, v in got.get(table, {}).items()
             if only is None or (k if unit else k[0]) in only}
        assert g.keys() == w.keys(), table
        for key, row in w.items():
            bad = [c for c in row if not _close(g[key][c], row[c])]
            assert not bad, (table, key, {c: (g[key][c], row[c]) for c in bad})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(launcher: list[str], argv: list[str], env: dict | None = None):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", *launcher, "-m", "harness_xai", "run", *argv],
                          capture_output=True, text=True, timeout=400, env=environment)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output


@pytest.fixture(scope="module")
def reference(micro_model, tmp_path_factory):
    """One process: the store and lm-eval's samples every other run is compared with."""
    out = tmp_path_factory.mktemp("reference")
    url = f"duckdb:///{out / 'ref.duckdb'}"
    assert main(["run", *_run_args(micro_model, url, out / "results")]) == 0
    return _snapshot(url), out / "results"


def _samples(results: Path) -> dict:
    """task → sorted (doc_id, filter, metric values, logged responses) of lm-eval's samples."""
    found = {}
    for path in results.rglob("samples_*.jsonl"):
        task = re.match(r"samples_(.+)_\d{4}-", path.name).group(1)
        found[task] = sorted(((s["doc_id"], s["filter"], [s[m] for m in s["metrics"]],
                               [r[0] if isinstance(r, list) else r for r in s["filtered_resps"]])
                              for s in map(json.loads, path.read_text().splitlines())),
                             key=lambda row: row[:2])
    return found


def _same_samples(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for task in want:
        assert [g[:3] for g in got[task]] == [w[:3] for w in want[task]], task
        for g, w in zip(got[task], want[task]):  # log-likelihoods (other batching): ±1e-4
            assert all(a == b or abs(_number(a) - _number(b)) < 1e-4
                       for a, b in zip(g[3], w[3], strict=True)), (task, g, w)


def _number(text) -> float:
    try:
        return float(text)  # saved samples hold log-likelihoods as strings
    except (TypeError, ValueError):
        return math.inf


# -- two ranks end to end ---------------------------------------------------------------------
def test_torchrun_two_cpu_ranks_equal_one_process(micro_model, reference, tmp_path):
    """torchrun, 2 processes, Accelerate in multi-CPU mode (gloo): lm-eval shards and gathers
    the evaluation, the cases are split over both ranks, rank 1 writes a shard file that rank 0
    merges into the DuckDB store — which ends equal to the one-process store."""
    want, want_results = reference
    db = tmp_path / "two.duckdb"
    output = _launch(["torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                      str(_free_port())],
                     _run_args(micro_model, f"duckdb:///{db}", tmp_path / "results"),
                     env={"ACCELERATE_USE_CPU": "true"})
    assert "lm-eval evaluates data-parallel on 2 CPU processes" in output
    ranks = re.search(r"attributed \(attnlrp\) on 2 ranks \((\d+)/(\d+)\)", output)
    assert ranks and min(map(int, ranks.groups())) > 0, output[-2000:]
    _same_samples(_samples(tmp_path / "results"), _samples(want_results))  # gathered on rank 0
    # every evaluated doc's outcome, not only the failures, is stored once (by rank 0)
    assert len(want["doc_outcomes"]) > len(want["cases"])
    assert_same_store(_snapshot(f"duckdb:///{db}"), want)
    assert not (tmp_path / "two.duckdb.shards").exists()  # merged and removed


def test_accelerate_launch_two_ranks_write_postgres_directly(micro_model, reference):
    """accelerate launch, 2 processes: both ranks write the PostgreSQL store themselves
    (batched passes on), and it ends equal to the one-process store."""
    from harness_xai.store import pgtemp

    want, _ = reference
    url = pgtemp.fresh_database_url()
    output = _launch(["accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                      "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                      "--main_process_port", str(_free_port())],
                     [*_run_args(micro_model, url), "--xai-batch-size", "4"])
    ranks = re.search(r"on 2 ranks \((\d+)/(\d+)\)", output)
    assert ranks and min(map(int, ranks.groups())) > 0, output[-2000:]
    assert_same_store(_snapshot(url), want)


# -- the protocol between ranks, with a stand-in attribution --------------------------------
def _case(doc: int, n: int) -> Case:
    ids = tuple(range(1, n + 1))
    return Case(task="t", doc_id=doc, doc_hash=f"h{doc}", prompt_hash="p", target_hash="g",
                filter="none", metric="acc", status=PENDING, prompt=f"doc {doc}", token_ids=ids,
                tokens=tuple(map(str, ids)), wrong_token_id=1, gold_token_id=2, position=n,
                output_type="multiple_choice")


def _fake_explanation(case: Case) -> Explanation:
    """Values computed from the doc id (a stand-in for the engine)."""
    rel = (np.arange(len(case.token_ids)) * 0.5 + case.doc_id).astype(np.float32)
    return Explanation(method="fake", delta=float(case.doc_id), token_relevance=rel,
                       layer_relevance=np.stack([rel, -rel]))


def _fake_worker(options: dict, calls: list | None = None) -> runner.CaseWorker:
    def explain(cases: list[Case]) -> list[Explanation]:
        out = []
        for case in cases:
            if case.doc_id in options.get("fail", ()):
                raise RuntimeError(f"boom on doc {case.doc_id}")
            if calls is not None:
                calls.append(case.doc_id)
            out.append(_fake_explanation(case))
        return out
    return runner.CaseWorker(explain=explain)


def _run_record() -> RunRecord:
    return RunRecord(run_key="k", model="hf", model_args="", pretrained=None, revision=None,
                     model_type="llama", n_params=1, tasks=["t"], method="fake",
                     lm_eval_version="x", harness_xai_version="x")


def _stored_docs(url: str) -> dict[int, tuple]:
    from harness_xai.store import run_sql

    return {d: (s, r) for d, s, r in run_sql(url, "SELECT doc_id, status, skip_reason "
                                                   "FROM cases")[1]}


def _protocol_rank(rank: int, port: int, db: str, out: str) -> None:
    """One rank of ``test_two_rank_protocol`` (spawned): three runs on a file store."""
    import torch.distributed as dist

    from harness_xai.distributed import World, explain_cases, follow
    from harness_xai.store import Store

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    world = World.detect()
    cases = lambda: [_case(d, 3 + d % 7) for d in range(12)]  # noqa: E731
    share1 = plan.balance([3 + d % 7 for d in range(12)], 2)[1]
    log = {}
    calls: list[int] = []
    # 1. rank 0 fails before planning: rank 1 is told to stop instead of waiting
    if world.leader:
        try:
            with world.leading():
                raise UserError("store refused")
        except UserError:
            log["abort"] = "raised"
    else:
        follow(world, _fake_worker)
        log["abort"] = "returned"
    # 2. rank 1 fails half-way through its share
    options = {"method": "attnlrp", "fail": [share1[len(share1) // 2]]}
    if world.leader:
        with Store.open(db) as store:
            run_id = store.ensure_run(_run_record())
            try:
                explain_cases(store, run_id, cases(), lambda o: _fake_worker(o, calls),
                                options, world=world, progress=False)
            except RuntimeError as err:
                log["error"] = str(err)
    else:
        follow(world, lambda o: _fake_worker(o, calls), progress=False)
    log["calls_1"] = sorted(calls)
    calls.clear()
    # 3. the same run again, no failure: only what is missing is attributed
    if world.leader:
        with Store.open(db) as store:
            outcome = explain_cases(store, store.ensure_run(_run_record()), cases(),
                                      lambda o: _fake_worker(o, calls), {"method": "attnlrp"},
                                      world=world, progress=False)
            log["outcome"] = [outcome.attributed, outcome.already_stored, outcome.per_rank]
    else:
        follow(world, lambda o: _fake_worker(o, calls), progress=False)
    log["calls_2"] = sorted(calls)
    Path(out, f"rank{rank}.json").write_text(json.dumps(log))
    dist.destroy_process_group()


def test_two_rank_protocol(tmp_path):
    """Abort before the plan, a failing rank (reported by rank 0 after the finished cases of
    both ranks are stored), and a re-run that attributes exactly the rest — two gloo ranks."""
    import torch.multiprocessing as mp

    db = str(tmp_path / "proto.sqlite")
    mp.start_processes(_protocol_rank, args=(_free_port(), db, str(tmp_path)), nprocs=2,
                       join=True, start_method="spawn")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["abort"], r1["abort"]) == ("raised", "returned")
    costs = [3 + d % 7 for d in range(12)]
    share0, share1 = plan.balance(costs, 2)
    fail = share1[len(share1) // 2]
    assert r0["calls_1"] == share0
    assert r1["calls_1"] == [d for d in share1 if d < fail]  # stopped at its failure
    assert "rank 1" in r0["error"] and f"boom on doc {fail}" in r0["error"]
    stored_first = set(share0) | {d for d in share1 if d < fail}
    left = sorted(set(range(12)) - stored_first)
    assert sorted(r0["calls_2"] + r1["calls_2"]) == left  # the re-run did only the rest
    assert r0["outcome"][:2] == [len(left), len(stored_first)]
    assert _stored_docs(f"sqlite:///{db}") == {d: ("attributed", None) for d in range(12)}
    assert not list(tmp_path.glob("*.shards/*"))


def test_one_process_budget_leftover_shards_and_errors(tmp_path, monkeypatch):
    """``explain_cases`` on one rank: a shard left by a killed rank is merged first (its cases
    are not attributed again), max-tokens skips are written, max-cases and the time budget leave
    cases unwritten, an attribution error keeps the cases finished before it."""
    from harness_xai.store import Store

    db = tmp_path / "one.sqlite"
    cases = lambda: [_case(d, 2 + d) for d in range(10)]  # noqa: E731 — doc d has 2+d tokens
    with Store.open(str(db)) as store:
        run_id = store.ensure_run(_run_record())
        killed = cases()[:2]
        writer = shards.ShardWriter(shards.shard_path(shards.shard_dir(db), run_id, 1, "x"),
                                    run_id, 1)
        for case in killed:
            writer.write_case(case, _fake_explanation(case))
        writer.close()
        calls: list[int] = []
        ticks = iter(range(1000))
        monkeypatch.setattr(runner, "clock", lambda: float(next(ticks)))
        outcome = runner.explain_cases(
            store, run_id, cases(), lambda o: _fake_worker(o, calls), {"method": "attnlrp"},
            budget=Budget(max_tokens=9, max_cases=5, seconds=2.5), progress=False)
        # docs 0, 1 from the shard; 8, 9 too long; docs 2..6 planned, clock ticks 1, 2 → 2 done
        assert calls == [2, 3]
        assert (outcome.attributed, outcome.already_stored, outcome.left) == (2, 2, 4)
        assert dict(outcome.skipped) == {plan.MAX_TOKENS_REASON: 2}
        monkeypatch.setattr(runner, "clock", time.monotonic)
        calls.clear()
        with pytest.raises(RuntimeError, match="boom on doc 6"):
            runner.explain_cases(store, run_id, cases(), lambda o: _fake_worker({"fail": [6]},
                                                                                  calls),
                                   {"method": "attnlrp"}, progress=False)
        assert calls == [4, 5]
    stored = _stored_docs(f"sqlite:///{db}")
    assert stored == {**{d: ("attributed", None) for d in range(6)},
                      8: ("skipped", "budget:max-tokens"), 9: ("skipped", "budget:max-tokens")}
    assert not shards.shard_dir(db).exists() or not list(shards.shard_dir(db).iterdir())


# -- budgets through the command line ---------------------------------------------------------
def test_budget_options_then_resume_to_the_reference(micro_model, reference, tmp_path, capsys):
    want, _ = reference
    url = f"duckdb:///{tmp_path / 'budget.duckdb'}"
    lengths = {k: v["n_tokens"] for k, v in want["cases"].items() if v["n_tokens"]}
    limit = sorted(lengths.values())[len(lengths) // 2]  # about half the cases are longer
    too_long = {k for k, n in lengths.items() if n > limit}
    assert main(["run", *_run_args(micro_model, url), "--xai-max-tokens", str(limit),
                 "--xai-max-cases", "3"]) == 0
    line = capsys.readouterr().out
    pending = len([k for k, v in want["cases"].items() if v["status"] == "attributed"])
    assert f"{pending - len(too_long) - 3} left for a re-run (budget)" in line
    first = _snapshot(url)
    assert sum(v["status"] == "attributed" for v in first["cases"].values()) == 3
    assert {k for k, v in first["cases"].items()
            if v["skip_reason"] == "budget:max-tokens"} == too_long
    # the re-run (batched passes) attributes exactly the rest
    assert main(["run", *_run_args(micro_model, url), "--xai-max-tokens", str(limit),
                 "--xai-batch-size", "auto"]) == 0
    assert "already stored" in capsys.readouterr().out
    final = _snapshot(url)
    assert final["cases"].keys() == want["cases"].keys()
    assert_same_store(final, want, only=set(want["cases"]) - too_long)


def test_time_budget_zero_writes_nothing_and_a_rerun_resumes(micro_model, tmp_path, capsys):
    url = f"duckdb:///{tmp_path / 'time.duckdb'}"
    assert main(["run", *_run_args(micro_model, url, limit=8, tasks="xai_arith"),
                 "--xai-time-budget", "0"]) == 0
    line = capsys.readouterr().out
    left = int(re.search(r"(\d+) left for a re-run", line).group(1))
    assert left > 0 and "→ 0 attributed" in line
    assert not _snapshot(url).get("token_relevance")
    assert main(["run", *_run_args(micro_model, url, limit=8, tasks="xai_arith")]) == 0
    assert f"→ {left} attributed" in capsys.readouterr().out


def test_bad_budget_values_are_one_line_errors(micro_model, tmp_path, capsys):
    for flag, value in (("--xai-batch-size", "0"), ("--xai-batch-size", "lots"),
                        ("--xai-max-tokens", "-1"),
                        ("--xai-time-budget", "nan"), ("--xai-max-cases", "-3")):
        argv = ["run", *_run_args(micro_model, str(tmp_path / "x.duckdb")), flag, value]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0], err
    assert not (tmp_path / "x.duckdb").exists()
    with pytest.raises(UserError):
        Budget(batch_size=True)


# -- pieces -----------------------------------------------------------------------------------
def test_balance_is_greedy_longest_first():
    costs = [7, 3, 9, 1, 4, 4, 8, 2]
    # longest first onto the least loaded: 9→r0, 8→r1, 7→r1, 4→r0, 4→r0, 3→r1, 2→r0, 1→r1
    shares = plan.balance(costs, 2)
    assert shares == [[2, 4, 5, 7], [0, 1, 3, 6]]
    assert [sum(costs[i] for i in s) for s in shares] == [19, 19]
    rng = np.random.default_rng(0)
    for n_ranks, n in product((1, 2, 3), (0, 1, 5, 8)):
        c = [int(x) for x in rng.integers(1, 100, n)]
        got = plan.balance(c, n_ranks)
        assert sorted(i for s in got for i in s) == list(range(n))
        makespan = max(sum(c[i] for i in s) for s in got)
        best = min((max(sum(x for x, r in zip(c, assign) if r == k) for k in range(n_ranks))
                    for assign in product(range(n_ranks), repeat=n)), default=0)
        assert makespan <= (4 / 3 - 1 / (3 * n_ranks)) * best + 1e-9  # Graham's LPT bound


def test_passes_group_similar_lengths_within_limits():
    lengths = [5, 40, 6, 7, 39, 100, 5]
    assert plan.passes(lengths, 1) == [[0], [1], [2], [3], [4], [5], [6]]  # in order
    assert plan.passes(lengths, 2, max_tokens=1) == [[0], [6], [2], [3], [4], [1], [5]]
    assert plan.passes(lengths, 3) == [[0, 6, 2], [3, 4, 1], [5]]
    assert plan.passes(lengths, 8, max_tokens=120) == [[0, 6, 2, 3], [4, 1], [5]]
    assert sorted(i for b in plan.passes(lengths, 4) for i in b) == list(range(7))


def test_auto_passes_hold_the_rows_that_fit():
    """``auto``: a pass grows while ``rows_for(n_max)`` allows (no fixed token cap); without an
    estimator (a model that cannot share passes) one case each."""
    lengths = [5, 40, 6, 7, 39, 100, 5, 41]
    rows_for = lambda n: 500 // n  # noqa: E731 — 100 rows of 5 tokens, 12 of 41, 5 of 100
    assert plan.passes(lengths, "auto", rows_for=rows_for) == [[0, 6, 2, 3, 4, 1, 7], [5]]
    assert plan.passes(lengths, "auto", rows_for=lambda n: 2) == [[0, 6], [2, 3], [4, 1],
                                                                   [7, 5]]
    assert plan.passes(lengths, "auto") == [[i] for i in range(8)]
    assert plan.resolve_batch_size(None, on_cuda=True) == "auto"
    assert plan.resolve_batch_size(None, on_cuda=False) == 1
    assert plan.resolve_batch_size(3, on_cuda=True) == 3


def test_batch_size_option_values():
    assert Budget.from_args({"xai_batch_size": "auto"}).batch_size == "auto"
    assert Budget.from_args({"xai_batch_size": " AUTO"}).batch_size == "auto"
    assert Budget.from_args({"xai_batch_size": "8"}).batch_size == 8
    assert Budget.from_args({}).batch_size is None
    for bad in ("lots", "0", "-2", "2.5", ""):
        with pytest.raises(UserError, match=r"^--xai-batch-size must be a whole number >= 1 "
                                            r"or auto, got "):
            Budget.from_args({"xai_batch_size": bad})


_PEAK = '''
import ctypes, json, sys, torch
sys.path.insert(0, "tests")
from harness_xai.distributed.memory import pass_bytes
from harness_xai.lrp import explain
from harness_xai.records import TokenTarget
from transformers import AutoConfig, AutoModelForCausalLM
family, d, layers, inter, vocab, heads, kv, n, rows, states = json.loads(sys.argv[1])
torch.manual_seed(0)
extra = {{"num_key_value_heads": kv}} if family != "gpt_neox" else {{}}
config = AutoConfig.for_model(family, vocab_size=vocab, hidden_size=d, num_hidden_layers=layers,
                              intermediate_size=inter, num_attention_heads=heads,
                              max_position_embeddings=n + 1, tie_word_embeddings=False, **extra)
config._attn_implementation = "sdpa"
model = AutoModelForCausalLM.from_config(config).eval()
explain(model, [TokenTarget(list(range(3, 40)), 1, 2)], "attnlrp")  # warm-up
items = [TokenTarget(torch.randint(3, vocab, (n - r,)).tolist(), 1, 2) for r in range(rows)]
def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))
ctypes.CDLL("libc.so.6").malloc_trim(0)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status("VmRSS")
explain(model, items, "attnlrp", states=states)
print(json.dumps([status("VmHWM") - base, pass_bytes(model, n, rows, states)]))
'''


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux peak RSS")
@pytest.mark.parametrize("shape", [
    ("llama", 256, 8, 1024, 2048, 8, 4, 1024, 4, True),
    ("llama", 512, 4, 1536, 8192, 8, 8, 512, 6, True),
    ("gpt_neox", 256, 4, 1024, 2048, 8, 8, 2048, 2, False),
    ("gpt_neox", 256, 4, 3072, 2048, 8, 8, 2048, 2, True),
], ids=["llama-8x256", "llama-4x512", "neox-nostates", "neox-wide-mlp"])
def test_auto_batch_estimate_bounds_the_measured_peak(shape):
    """``memory.pass_bytes`` (the ``auto`` batch size's estimate) ≥ the measured peak resident
    memory growth of that pass, and at most 2.5× it (a fresh process per shape)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _PEAK.format(), json.dumps(shape)], env=env,
                         capture_output=True, text=True, timeout=600,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    measured, estimate = json.loads(out.stdout.strip().splitlines()[-1])
    assert measured > 50 << 20  # the pass really ran at this size
    print(f"measured {measured / 2**20:.0f} MiB, estimate {estimate / 2**20:.0f} MiB, "
          f"×{estimate / measured:.2f}")
    assert measured <= estimate <= 2.5 * measured, (measured / 2**20, estimate / 2**20)


def test_rows_that_fit_follow_free_memory():
    """R = ⌊(0.8 · free − fixed) / per-row bytes⌋ clipped to [1, 64]; halving the free memory
    (after the fixed part) halves R; more tokens, fewer rows."""
    from tiny_models import tiny_model

    from harness_xai.distributed import memory

    model = tiny_model("llama")
    one, fixed = memory.pass_bytes(model, 512, 1), memory.pass_bytes(model, 512, 0)
    row = one - fixed
    free = int((fixed + 20 * row) / memory.FRACTION) + 1
    assert memory.rows_that_fit(model, 512, free=free) == 20
    assert memory.rows_that_fit(model, 512, free=int((fixed + 10 * row) / 0.8) + 1) == 10
    assert memory.rows_that_fit(model, 4096, free=free) < 20
    assert memory.rows_that_fit(model, 512, free=0) == 1
    assert memory.rows_that_fit(model, 512, free=1 << 50) == memory.MAX_ROWS
    assert memory.pass_bytes(model, 512, 3, states=False) < memory.pass_bytes(model, 512, 3)
    eager = tiny_model("llama", attn="eager")
    assert memory.pass_bytes(eager, 2048, 1) - memory.pass_bytes(model, 2048, 1) == \
        2 * eager.config.num_hidden_layers * 4 * 4 * 2048 * 2048  # L·b·2·H·n per token × n


def test_shard_file_round_trip_torn_tail_and_restricted_unpickling(tmp_path):
    from dataclasses import replace

    case = replace(_case(3, 4), built={"note": {"x": [1, 2.5, None]}})
    ex = replace(_fake_explanation(case), state_relevance={"mid": np.ones((2, 4), np.float32)},
                 head_relevance=np.zeros((2, 4, 4), np.float32),
                 graph=GraphRecord(node_layers=["emb", "1"],
                                   node_relevance=np.ones((2, 4), np.float32),
                                   source_layer=np.zeros(1, np.int32),
                                   source_position=np.ones(1, np.int32),
                                   target_layer=np.ones(1, np.int32),
                                   target_position=np.ones(1, np.int32),
                                   weight=np.full(1, 0.5, np.float32)))
    other = _case(4, 2).skipped("tie-with-gold")
    path = shards.shard_path(tmp_path, 9, 1, "n")
    with shards.ShardWriter(path, 9, 1) as writer:
        assert shards.leftover_shards(tmp_path, 9) == []  # held by a live writer
        writer.write_case(case, ex)
        writer.write_case(other, None)
    assert shards.leftover_shards(tmp_path, 9) == [path] and shards.leftover_shards(tmp_path, 8) == []
    back = list(shards.read_shard(path))
    assert [c.unit_key for c, _ in back] == [case.unit_key, other.unit_key]
    assert back[0][0] == case and back[1] == (other, None)
    np.testing.assert_array_equal(back[0][1].token_relevance, ex.token_relevance)
    np.testing.assert_array_equal(back[0][1].graph.weight, ex.graph.weight)
    assert back[0][1].state_relevance["mid"].dtype == np.float32
    assert back[0][0].built == case.built
    data = path.read_bytes()
    path.write_bytes(data[:-5])  # killed while writing the last case
    assert [c.doc_id for c, _ in shards.read_shard(path)] == [3]
    import pickle
    import struct
    import zlib

    evil = pickle.dumps(os.system)
    path.write_bytes(data + struct.pack("<QI", len(evil), zlib.crc32(evil)) + evil)
    with pytest.raises(pickle.UnpicklingError, match="disallowed"):
        list(shards.read_shard(path))


def test_launch_checks_refuse_tensor_parallel_and_shard_cpu_evaluation():
    """``prepare_launch``: a tensor-parallel model is refused before lm-eval computes anything;
    an HFLM holding a multi-process CPU accelerator gets its rank and world size (lm-eval's own
    sharding then runs as on GPUs); batched passes stay off for multi-device models."""
    from types import SimpleNamespace

    from harness_xai.distributed import prepare_launch

    with pytest.raises(UserError, match="tensor-parallel"):
        prepare_launch(SimpleNamespace(model=SimpleNamespace(tp_size=2)))
    accelerator = SimpleNamespace(num_processes=3, process_index=2,
                                  device=torch.device("cpu"))
    lm = SimpleNamespace(model=SimpleNamespace(tp_size=None), accelerator=accelerator,
                         _rank=0, _world_size=1)
    prepare_launch(lm)
    assert (lm._rank, lm._world_size) == (2, 3)
    single = SimpleNamespace(model=None, _rank=0, _world_size=1)  # no accelerator: unchanged
    prepare_launch(single)
    assert (single._rank, single._world_size) == (0, 1)
    from harness_xai.lrp import get_method
    from harness_xai.lrp.engine import batchable

    split = SimpleNamespace(hf_device_map={"model.layers.0": 0, "model.layers.1": 1})
    assert not batchable(split, get_method("attnlrp"))
    assert batchable(object(), get_method("attnlrp"))
    assert not batchable(object(), get_method("integrated-gradients"))
