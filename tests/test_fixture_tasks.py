"""The generative / long-context fixture tasks (tests/fixtures): lm-eval's own configs, local JSONL,
offline. Each evaluates with the micro model and logs its real primary metric for every sample."""

from __future__ import annotations

import json
import math

import pytest

from fixtures.lm_eval_tasks import DATA, GENERATIVE_TASKS
from fixtures.generative_run import MAX_GEN_TOKS

#: the key lm-eval logs per sample for the first entry of each task's metric_list
REAL_PRIMARY = {
    "fx_ifeval": "prompt_level_strict_acc",
    "fx_minerva_math_algebra": "exact_match",
    "fx_humaneval": "pass@1",  # metric_list names utils.pass_at_k, a dict-valued function
    "fx_mbpp": "pass_at_1",
    "fx_bbh_boolean_expressions": "exact_match",
    "fx_bbh_cot_boolean_expressions": "exact_match",
    "fx_mmlu_pro_biology": "exact_match",
    "fx_babilong_qa1": "acc",
    "fx_niah_single_1": "4096",  # RULER names the metric by the sequence length
}


def _test_rows(name: str) -> list[dict]:
    _, data_dir, splits = GENERATIVE_TASKS[name]
    split = "qa1" if "qa1" in splits else "train" if name == "fx_ifeval" else "test"
    path = DATA / data_dir / f"{splits[split]}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_fixture_task_logs_its_primary_metric_for_every_doc(generative_run):
    assert set(generative_run.samples) == set(GENERATIVE_TASKS) == set(REAL_PRIMARY)
    for name, samples in generative_run.samples.items():
        rows = _test_rows(name)
        expected = [r for r in rows if r.get("category", "biology") == "biology"]  # mmlu_pro's process_docs
        assert sorted(s["doc_id"] for s in samples) == list(range(len(expected))), name
        metric = REAL_PRIMARY[name]
        for s in samples:
            assert metric in s, (name, s["doc_id"], sorted(s))
            value = float(s[metric])
            assert not math.isnan(value) and 0.0 <= value <= 1.0, (name, value)
            assert s["resps"] and isinstance(s["resps"][0][0], str)


def test_fixture_docs_carry_unicode_script_and_an_over_long_prompt(generative_run):
    lm = generative_run.lm
    budget = lm.max_length - MAX_GEN_TOKS  # lm-eval keeps the last max_length - max_gen_toks tokens
    for name, samples in generative_run.samples.items():
        prompts = [s["arguments"][0][0] for s in samples]
        assert any("<script>" in p for p in prompts), name
        assert any(any(ord(ch) > 127 for ch in p) for p in prompts), name
        lengths = [len(lm.tok_encode(p)) for p in prompts]
        assert max(lengths) > budget, (name, lengths, budget)  # at least one doc is left-truncated


def test_code_tasks_score_the_canonical_solution_by_running_it(generative_run):
    """The offline code_eval executes the tests: the reference solution passes, a wrong one fails."""
    humaneval = generative_run.tasks["fx_humaneval"]
    for doc in humaneval.eval_docs:
        good = humaneval.process_results(doc, [[doc["prompt"] + doc["canonical_solution"]]])
        bad = humaneval.process_results(doc, [[doc["prompt"] + "    return None\n"]])
        assert good == {"pass@1": 1.0} and bad == {"pass@1": 0.0}, doc["task_id"]
    mbpp = generative_run.tasks["fx_mbpp"]
    for doc in mbpp.eval_docs:
        assert mbpp.process_results(doc, [doc["code"]]) == {"pass_at_1": 1.0}
        assert mbpp.process_results(doc, ["def nothing():\n  pass"]) == {"pass_at_1": 0.0}


@pytest.mark.parametrize("name", ["fx_babilong_qa1", "fx_niah_single_1"])
def test_long_context_tasks_read_local_docs_not_their_custom_dataset(generative_run, name):
    task = generative_run.tasks[name]
    docs = list(task.eval_docs)
    assert [d.get("target") or d.get("outputs") for d in docs] == [
        r.get("target") or r.get("outputs") for r in _test_rows(name)]
