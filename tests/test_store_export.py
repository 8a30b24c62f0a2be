"""Exports others read, validated against the consumers' published JSON Schemas (vendored in
tests/fixtures/schemas, see its README): Every Eval Ever aggregate + instance records
(`harness-xai export --format eee`) and each case's graph as circuit-tracer / Neuronpedia graph
JSON (`--format graph-json`), on DuckDB, SQLite and PostgreSQL; the exported values are the
store's."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from harness_xai.cli import main as cli_main
from harness_xai.records import DocOutcome, TaskSummary
from harness_xai.store import Store, run_sql
from test_store_support import backend, db, make_case, make_run  # noqa: F401

SCHEMAS = Path(__file__).parent / "fixtures" / "schemas"


def _schema(name: str) -> jsonschema.Validator:
    schema = json.loads((SCHEMAS / name).read_text("utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.fixture
def store(db: str) -> dict:
    with Store.open(db) as s:
        run_id = s.ensure_run(make_run(pretrained="/home/u/zoo/llama-s"))
        cases = {d: s.write_case(run_id, *make_case(doc_id=d, seed=d)) for d in (1, 22)}
        s.write_task_summaries(run_id, [TaskSummary("tiny_mc", "acc", 0.5, 4, 2, "multiple_choice", [
            DocOutcome(1, "dh1", "none", "acc", 0.0, 0), DocOutcome(22, "dh22", "none", "acc", 0.0, 0),
            DocOutcome(3, "dh3", "none", "acc", 1.0, 1), DocOutcome(4, "dh4", "none", "acc", None, None)])])
    return {"db": db, "run_id": run_id, "cases": cases}


def test_eee_records_validate_and_carry_the_store(store: dict, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "eee"
    assert cli_main(["export", "--format", "eee", "--db", store["db"], "--out", str(out)]) == 0
    assert "1 runs, 3 instances, 1 unscored" in capsys.readouterr().out
    rid = store["run_id"]
    agg = json.loads((out / f"run-{rid}.json").read_text("utf-8"))
    errors = list(_schema("eee_eval.schema.json").iter_errors(agg))
    assert errors == [], [e.message for e in errors]
    assert agg["model_info"]["id"] == "llama-s"
    assert [(r["evaluation_name"], r["score_details"]["score"]) for r in agg["evaluation_results"]] == [
        ("tiny_mc", 0.5)]
    validator = _schema("eee_instance_level_eval.schema.json")
    lines = (out / f"run-{rid}_samples.jsonl").read_text("utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    for record in records:
        errors = list(validator.iter_errors(record))
        assert errors == [], [e.message for e in errors]
        assert record["evaluation_id"] == agg["evaluation_id"]
    by_doc = {r["sample_id"]: r for r in records}
    assert set(by_doc) == {"1", "22", "3"}  # doc 4 has no notion of correct: no instance score
    assert by_doc["3"]["evaluation"] == {"score": 1.0, "is_correct": True}
    assert by_doc["3"]["metadata"]["text_stored"] == "false" and by_doc["3"]["input"]["raw"] == ""
    prompt, pred, gold, delta = run_sql(store["db"], "SELECT prompt, pred_text, gold_text, delta "
                                                     "FROM cases WHERE doc_id = 1")[1][0]
    wrong = by_doc["1"]
    assert wrong["evaluation"] == {"score": 0.0, "is_correct": False}
    assert wrong["input"] == {"raw": prompt, "reference": [gold]} and wrong["output"]["raw"] == [pred]
    assert float(wrong["metadata"]["harness_xai_delta"]) == pytest.approx(delta)
    top = run_sql(store["db"], "SELECT token FROM token_ranks WHERE case_id = :c AND relevance_rank = 1",
                  {"c": store["cases"][1]})[1][0][0]
    assert wrong["metadata"]["harness_xai_top_token"] == top
    bad = dict(wrong, evaluation={"score": "high", "is_correct": False})
    assert list(validator.iter_errors(bad))  # the check can fail


def test_graph_json_validates_and_links_the_stored_edges(store: dict, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "graphs"
    case_id = store["cases"][22]
    assert cli_main(["export", "--format", "graph-json", "--db", store["db"], "--out", str(out),
                     "--case", str(case_id)]) == 0
    assert [p.name for p in out.iterdir()] == [f"case-{case_id}.graph.json"]
    graph = json.loads((out / f"case-{case_id}.graph.json").read_text("utf-8"))
    validator = _schema("neuronpedia_graph.schema.json")
    errors = list(validator.iter_errors(graph))
    assert errors == [], [e.message for e in errors]
    ids = [n["node_id"] for n in graph["nodes"]]
    assert len(ids) == len(set(ids))
    assert all(l["source"] in ids and l["target"] in ids for l in graph["links"])
    tokens = [t for (t,) in run_sql(store["db"], "SELECT token FROM token_relevance WHERE case_id = :c "
                                                 "ORDER BY position", {"c": case_id})[1]]
    assert graph["metadata"]["prompt_tokens"] == tokens and graph["metadata"]["scan"] == "llama-s"
    edges = run_sql(store["db"], "SELECT weight FROM graph_edges WHERE case_id = :c", {"c": case_id})[1]
    logit = [n for n in graph["nodes"] if n["feature_type"] == "logit"]
    assert len(logit) == 1 and logit[0]["is_target_logit"]
    into_logit = [l for l in graph["links"] if l["target"] == logit[0]["node_id"]]
    assert len(graph["links"]) == len(edges) + len(into_logit) and into_logit
    assert sorted(l["weight"] for l in graph["links"] if l not in into_logit) == pytest.approx(
        sorted(w for (w,) in edges))
    assert list(validator.iter_errors({**graph, "links": [{"source": "x"}]}))  # the check can fail
    assert cli_main(["export", "--format", "graph-json", "--db", store["db"], "--out", str(out),
                     "--case", "999"]) == 2
    err = capsys.readouterr().err
    assert "--case 999" in err and len(err.strip().splitlines()) == 1


def test_json_exports_refuse_a_folder_of_other_files(store: dict, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """Like the parquet export: a non-empty folder that is not a previous JSON export is refused
    untouched (one line, exit 2); a previous export is written again."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for fmt in ("eee", "graph-json"):
        assert cli_main(["export", "--format", fmt, "--db", store["db"], "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert "non-empty directory" in err and "\n" not in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    again = tmp_path / "eee"
    for _ in range(2):
        assert cli_main(["export", "--format", "eee", "--db", store["db"], "--out", str(again)]) == 0
