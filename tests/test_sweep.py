"""`harness-xai sweep`: a micro zoo (2 architectures, 2 sizes, 3 checkpoints) swept into DuckDB."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness_xai import cli
from harness_xai.errors import UserError
from harness_xai.store import run_sql
from harness_xai.identity import checkpoint_step
from harness_xai.sweep import sweep_main
from harness_xai.zoo import build_zoo

#: the zoo family's architectures and data, a few steps each (seconds)
MICRO = dict(steps=4, kv_only_steps=2, checkpoints=(0, 2, 4), kv_batch=4, arith_batch=4,
             tokenizer_texts=1000, kv_records=(4, 8))
MODELS = ("llama-s", "neox-m")
TASKS = "xai_kv,xai_arith"
RUN_FLAGS = ["--device", "cpu", "--batch_size", "8", "--limit", "4", "--xai-no-progress"]


@pytest.fixture(scope="module", autouse=True)
def task_index_once():
    """lm-eval's task index is built once for the module (each sweep builds it once anyway)."""
    from harness_xai.sweep import _task_index_once

    with _task_index_once():
        yield


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    build_zoo(root, MODELS, progress=False, **MICRO)
    return root


def _sweep(zoo: Path, db: Path, *extra: str, flags=RUN_FLAGS) -> int:
    return sweep_main(["--zoo", str(zoo), "--models", ",".join(MODELS), "--tasks", TASKS,
                       "--xai-db", str(db), *extra, "--", *flags])


def _runs(db: Path) -> list[dict]:
    cols, rows = run_sql(str(db), "SELECT id, pretrained, model_args, model_type, n_params, step "
                                  "FROM runs ORDER BY id")
    return [dict(zip(cols, row)) for row in rows]


@pytest.fixture(scope="module")
def swept(zoo, tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("sweep") / "sweep.duckdb"
    assert _sweep(zoo, db) == 0
    return db


def test_sweep_records_every_model_and_checkpoint_with_size_and_step(swept, zoo):
    runs = _runs(swept)
    assert len(runs) == len(MODELS) * len(MICRO["checkpoints"])
    by_model: dict[str, list[dict]] = {}
    for run in runs:
        by_model.setdefault(Path(run["pretrained"]).name, []).append(run)
    assert sorted(by_model) == sorted(MODELS)
    for name, model_runs in by_model.items():
        assert sorted(r["step"] for r in model_runs) == list(MICRO["checkpoints"])
        assert {json.loads(r["model_args"])["subfolder"] for r in model_runs} == {
            f"step{s}" for s in MICRO["checkpoints"]}
        assert len({r["n_params"] for r in model_runs}) == 1
    assert {r["model_type"] for r in runs} == {"llama", "gpt_neox"}
    sizes = {name: rs[0]["n_params"] for name, rs in by_model.items()}
    assert sizes["llama-s"] < sizes["neox-m"]
    # checkpoints are the saved weights: step 0 differs from the final step
    import torch
    from safetensors.torch import load_file

    first = load_file(zoo / "llama-s" / "step0" / "model.safetensors")
    last = load_file(zoo / "llama-s" / "step4" / "model.safetensors")
    assert any(not torch.equal(first[k], last[k]) for k in first)


def test_every_run_is_complete_in_the_store(swept):
    _, rows = run_sql(str(swept), "SELECT t.run_id, t.task, t.n_samples, t.n_incorrect, "
                                  "(SELECT count(*) FROM cases c WHERE c.run_id = t.run_id "
                                  "AND c.task = t.task) FROM task_results t")
    assert len(rows) == len(MODELS) * len(MICRO["checkpoints"]) * 2
    assert all(n_samples == 4 and stored == n_incorrect for _, _, n_samples, n_incorrect, stored
               in rows)
    assert sum(r[3] for r in rows) > 0  # micro models do get answers wrong


def test_second_sweep_does_no_work(swept, zoo, monkeypatch, capsys):
    before = _runs(swept)
    _, cases_before = run_sql(str(swept), "SELECT count(*) FROM cases")
    import harness_xai.pipeline as pipeline

    monkeypatch.setattr(pipeline, "run_main", lambda argv: pytest.fail(f"re-evaluated {argv}"))
    assert _sweep(zoo, swept) == 0
    out = capsys.readouterr().out
    assert out.count("finished in the store, skipped") == len(before)
    assert "0 evaluated" in out
    assert _runs(swept) == before
    assert run_sql(str(swept), "SELECT count(*) FROM cases")[1] == cases_before


def test_unfinished_or_different_cells_run_again(swept, zoo, monkeypatch, tmp_path):
    import shutil

    import sqlalchemy as sa

    db = tmp_path / "copy.duckdb"
    shutil.copy(swept, db)
    runs = _runs(db)
    target = next(r for r in runs if r["step"] == 2 and r["model_type"] == "llama")
    engine = sa.create_engine(f"duckdb:///{db}")
    with engine.begin() as conn:  # a cell interrupted during attribution: a case is missing
        case_id = conn.execute(sa.text(
            "SELECT id FROM cases WHERE run_id = :r ORDER BY id DESC LIMIT 1"),
            {"r": target["id"]}).scalar_one()
        children = conn.execute(sa.text(
            "SELECT DISTINCT c.table_name FROM information_schema.columns c JOIN "
            "information_schema.tables t ON t.table_name = c.table_name WHERE c.column_name = "
            "'case_id' AND t.table_type = 'BASE TABLE' AND c.table_name <> 'graphs'")
        ).scalars().all()
        for table in [*children, "graphs"]:  # fixed schema names, not user text
            conn.execute(sa.text(f"DELETE FROM {table} WHERE case_id = :c"), {"c": case_id})
    with engine.begin() as conn:  # DuckDB checks foreign keys against the transaction's start
        conn.execute(sa.text("DELETE FROM cases WHERE id = :c"), {"c": case_id})
    engine.dispose()
    calls: list[list[str]] = []
    import harness_xai.pipeline as pipeline

    real_run = pipeline.run_main
    monkeypatch.setattr(pipeline, "run_main", lambda argv: calls.append(argv) or real_run(argv))
    assert _sweep(zoo, db) == 0
    assert len(calls) == 1 and "subfolder=step2" in calls[0][calls[0].index("--model_args") + 1]
    assert Path(target["pretrained"]).as_posix() in calls[0][calls[0].index("--model_args") + 1]
    assert _runs(db) == runs  # the same run row, completed
    _, rows = run_sql(str(db), "SELECT count(*) FROM cases WHERE run_id = :r", {"r": target["id"]})
    assert rows[0][0] >= 1
    # another --limit is another run: only the chosen checkpoint is evaluated
    calls.clear()
    limit_3 = ["--device", "cpu", "--batch_size", "8", "--limit", "3", "--xai-no-progress"]
    assert _sweep(zoo, db, "--checkpoints", "4", flags=limit_3) == 0
    assert len(calls) == len(MODELS)
    assert len(_runs(db)) == len(runs) + len(MODELS)


def test_checkpoint_step_from_revision_or_trainer_state(zoo):
    assert checkpoint_step("EleutherAI/pythia-160m", "step3000") == 3000
    assert checkpoint_step("allenai/OLMo-1B", "step20000-tokens84B") == 20000
    assert checkpoint_step("EleutherAI/pythia-160m", "main") is None
    assert checkpoint_step(str(zoo / "llama-s"), "main", "step2") == 2
    assert checkpoint_step(str(zoo / "llama-s" / "step0")) == 0
    assert checkpoint_step(str(zoo / "llama-s")) == MICRO["steps"]  # the final model
    assert checkpoint_step(str(zoo / "llama-s"), "step2") == MICRO["steps"]  # ignored locally
    assert checkpoint_step(str(zoo / "missing")) is None


def test_bad_input_fails_before_any_work(zoo, tmp_path, monkeypatch):
    import harness_xai.pipeline as pipeline

    monkeypatch.setattr(pipeline, "run_main", lambda argv: pytest.fail("ran"))
    db = tmp_path / "x.duckdb"
    with pytest.raises(UserError, match="neither a zoo model"):
        sweep_main(["--zoo", str(zoo), "--models", "llama-q", "--xai-db", str(db)])
    with pytest.raises(UserError, match="no checkpoint step 7"):
        sweep_main(["--zoo", str(zoo), "--models", "llama-s", "--checkpoints", "0,7",
                    "--xai-db", str(db)])
    with pytest.raises(UserError, match="set by the sweep"):
        sweep_main(["--zoo", str(zoo), "--models", "llama-s", "--xai-db", str(db), "--",
                    "--tasks", "xai_kv"])
    with pytest.raises(UserError, match="bad run flag"):
        sweep_main(["--zoo", str(zoo), "--models", "llama-s", "--xai-db", str(db), "--",
                    "--no-such-flag"])
    assert not db.exists()
    assert cli.main(["sweep", "--zoo", str(tmp_path), "--xai-db", str(db)]) == 2  # empty zoo


def test_dry_run_lists_the_cells(zoo, tmp_path, capsys):
    db = tmp_path / "x.duckdb"
    assert sweep_main(["--zoo", str(zoo), "--models", "neox-m", "--checkpoints", "final",
                       "--xai-db", str(db), "--dry-run", "--", "--limit", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("neox-m@step4: harness-xai run --model hf")
    assert "subfolder=step4" in out[0] and "--limit 2" in out[0] and not db.exists()


def test_revision_on_a_local_directory_is_refused(zoo, tmp_path, capsys):
    """transformers would silently load the final model: the run stops with a pointer instead."""
    from harness_xai.zoo import tasks_dir

    db = tmp_path / "x.duckdb"
    err = cli.main(["run", "--model", "hf", "--model_args",
                    f"pretrained={zoo / 'llama-s'},revision=step2", "--tasks", "xai_kv",
                    "--include_path", str(tasks_dir()), "--attribute", "--xai-db", str(db)])
    assert err == 2 and not db.exists()
    assert "subfolder=step2" in capsys.readouterr().err


def test_sweep_adds_to_another_programs_database_only_when_asked(zoo, tmp_path, monkeypatch):
    """A foreign database is refused before any cell runs, untouched, with the sweep's spelling of
    the fix; with ``-- --xai-db-init`` the schema is added beside the other tables and every cell
    gets the flag."""
    import hashlib
    import sqlite3

    import harness_xai.pipeline as pipeline

    db = tmp_path / "theirs.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)")
    conn.execute("INSERT INTO accounts VALUES (1, 'alice')")
    conn.commit()
    conn.close()
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    calls = []
    monkeypatch.setattr(pipeline, "run_main", lambda argv: calls.append(argv) or 0)
    args = ["--zoo", str(zoo), "--models", "llama-s", "--checkpoints", "final", "--xai-db", str(db)]
    with pytest.raises(UserError, match=r"another program.*sweep … -- --xai-db-init"):
        sweep_main(args)
    assert not calls and hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert sweep_main([*args, "--", "--xai-db-init"]) == 0
    assert len(calls) == 1 and "--xai-db-init" in calls[0]
    tables = {t for (t,) in sqlite3.connect(db).execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"accounts", "runs", "cases"} <= tables
