"""Failure detection from the task's own metrics (harness_xai/contrast/decision.py) on lm-eval's real
task configs (tests/fixtures): real logged samples of the micro model, and synthetic samples scored
by each task's own process_results / metric functions."""

from __future__ import annotations

import math

import pytest

from harness_xai.contrast.decision import (CORRECT, INCORRECT, UNSCORED, metric_choices,
                                           primary_metric, tally, verdict, verdicts)
from harness_xai.errors import UserError
from test_fixture_tasks import REAL_PRIMARY

#: per task: (doc index, a response the task's scoring accepts, one it rejects) — raw generations,
#: passed through the task's own filters before process_results, like lm-eval does
RESPONSES = {
    "fx_ifeval": (0, "A quiet note about Zoë. It has no pause marks at all.", "A note, with a comma."),
    "fx_minerva_math_algebra": (0, "We add.\nFinal Answer: The final answer is $5$. I hope it is correct.",
                                "We add.\nFinal Answer: The final answer is $7$. I hope it is correct."),
    "fx_humaneval": (0, "    return a + b\n", "    return a - b\n"),
    "fx_mbpp": (0, "def double(x):\n  return 2 * x\n", "def double(x):\n  return x\n"),
    "fx_bbh_boolean_expressions": (0, "False", "True"),
    "fx_bbh_cot_boolean_expressions": (0, "not True is False. So the answer is False.",
                                       "not True is False. So the answer is True."),
    "fx_mmlu_pro_biology": (0, "Golgi packages proteins. The answer is (E).", "The answer is (A)."),
    "fx_babilong_qa1": (0, "The most recent location of Mary is bathroom.",
                        "The most recent location of Mary is hallway."),
    "fx_niah_single_1": (0, " 4281937.", " 1234567."),
}


def _scored(task, doc_id: int, response: str) -> dict:
    """A sample as lm-eval logs it: the task's filters, then its process_results."""
    from lm_eval.api.instance import Instance

    doc = list(task.eval_docs)[doc_id]
    filters = task._filters
    outcome = {}
    for f in filters[:1]:
        inst = Instance("generate_until", doc, ("", {}), idx=0, metadata=(task.config.task, doc_id, 1))
        inst.resps = [response]
        f.apply([inst])
        outcome = task.process_results(doc, [inst.filtered_resps[f.name]])
        return {"doc_id": doc_id, "filter": f.name, "metrics": list(outcome), **outcome}
    raise AssertionError("task without filters")


@pytest.mark.parametrize("name", sorted(REAL_PRIMARY))
def test_primary_metric_of_real_configs_from_real_samples(generative_run, name):
    task, samples = generative_run.tasks[name], generative_run.samples[name]
    primary = primary_metric(task, name, samples)
    assert primary.name == REAL_PRIMARY[name] and primary.higher_is_better
    assert primary.kind == ("fraction" if name == "fx_niah_single_1" else "binary")
    assert primary.threshold == 1.0
    outcomes = verdicts(task, samples, name)
    counts = tally(name, outcomes)
    assert sum(counts.values()) == len(samples)
    assert {k[:2] for k in counts} == {(name, REAL_PRIMARY[name])}
    assert counts.get((name, REAL_PRIMARY[name], INCORRECT, None), 0) == sum(
        float(s[REAL_PRIMARY[name]]) < 1.0 for s in samples)
    for s, v in zip(samples, outcomes):
        assert v.outcome in (CORRECT, INCORRECT) and v.reason is None, (name, v)
        assert (v.outcome == CORRECT) == (float(s[primary.name]) == 1.0)
        assert (v.doc_id, v.filter, v.metric) == (s["doc_id"], s["filter"], primary.name)


@pytest.mark.parametrize("name", sorted(RESPONSES))
def test_verdict_follows_the_tasks_own_scoring(generative_run, name):
    task = generative_run.tasks[name]
    doc_id, good, bad = RESPONSES[name]
    right, wrong = _scored(task, doc_id, good), _scored(task, doc_id, bad)
    primary = primary_metric(task, name, [right, wrong])
    assert primary.name == REAL_PRIMARY[name]
    assert verdict(primary, right).outcome == CORRECT, right
    assert verdict(primary, wrong).outcome == INCORRECT, wrong


def test_bad_metric_and_threshold_are_one_line_user_errors(generative_run):
    task, samples = generative_run.tasks["fx_humaneval"], generative_run.samples["fx_humaneval"]
    with pytest.raises(UserError) as err:
        primary_metric(task, "fx_humaneval", samples, metric="acc")
    message = str(err.value)
    assert "\n" not in message and "'fx_humaneval'" in message and "'acc'" in message
    assert message.endswith("supported: pass@1")
    with pytest.raises(UserError) as err:
        primary_metric(task, "fx_humaneval", samples, threshold=0.5)
    assert "\n" not in str(err.value) and "binary" in str(err.value) and "pass@1" in str(err.value)
    ifeval = generative_run.tasks["fx_ifeval"]
    with pytest.raises(UserError, match="non-binary metrics of this task: inst_level_strict_acc, inst_level_loose_acc$"):
        primary_metric(ifeval, "fx_ifeval", generative_run.samples["fx_ifeval"], threshold=0.5)
    assert metric_choices(ifeval)[:4] == ["prompt_level_strict_acc", "inst_level_strict_acc",
                                          "prompt_level_loose_acc", "inst_level_loose_acc"]


def test_user_metric_fraction_threshold_and_unscored_reasons(generative_run):
    ifeval = generative_run.tasks["fx_ifeval"]
    base = {"doc_id": 0, "filter": "none"}
    inst = primary_metric(ifeval, "fx_ifeval", metric="inst_level_strict_acc")
    assert inst.kind == "fraction" and inst.threshold == 1.0
    half = {**base, "inst_level_strict_acc": [True, False]}
    assert verdict(inst, half).outcome == INCORRECT and verdict(inst, half).value == 0.5
    lenient = primary_metric(ifeval, "fx_ifeval", metric="inst_level_strict_acc", threshold=0.5)
    assert verdict(lenient, half).outcome == CORRECT
    niah = primary_metric(generative_run.tasks["fx_niah_single_1"], "fx_niah_single_1")
    assert niah.name == "4096"  # no samples: the first of the metric_list
    reasons = [verdict(niah, {**base, **extra}).reason for extra in
               ({}, {"4096": -1.0}, {"4096": math.nan}, {"4096": "n/a"}, {"4096": "1.0"}, {"4096": "True"})]
    assert reasons == ["metric_missing", "metric_out_of_range", "metric_nan", "metric_not_numeric", None, None]
    # RULER logs -1 under every length a doc is not: the length the docs have decides
    mixed = [{**base, "doc_id": i, "4096": -1.0, "8192": float(i % 2)} for i in range(4)]
    assert primary_metric(generative_run.tasks["fx_niah_single_1"], samples=mixed).name == "8192"


@pytest.fixture(scope="module")
def mc_tasks(tmp_path_factory):
    from lm_eval.tasks import TaskManager, get_task_dict

    from fixtures.lm_eval_tasks import write_tasks

    root = write_tasks(tmp_path_factory.mktemp("mc"))
    return get_task_dict(["fx_arc_easy", "fx_lambada_openai"], TaskManager(include_path=str(root),
                                                                            include_defaults=False))


def test_multiple_choice_and_lower_is_better_scores(mc_tasks):
    arc, lambada = mc_tasks["fx_arc_easy"], mc_tasks["fx_lambada_openai"]
    acc = primary_metric(arc, "fx_arc_easy")
    assert (acc.name, acc.kind, acc.threshold) == ("acc", "binary", 1.0)
    assert primary_metric(arc, metric="acc_norm").name == "acc_norm"
    # perplexity leads LAMBADA's metric_list but decides nothing without a threshold: acc does
    assert primary_metric(lambada, "fx_lambada_openai").name == "acc"
    with pytest.raises(UserError, match="binary.*non-binary metrics of this task: perplexity$"):
        primary_metric(lambada, "fx_lambada_openai", threshold=5.0)  # --xai-metric perplexity
    ppl = primary_metric(lambada, "fx_lambada_openai", metric="perplexity")
    assert (ppl.name, ppl.higher_is_better, ppl.kind, ppl.threshold) == ("perplexity", False, "score", None)
    sample = {"doc_id": 3, "filter": "none", "perplexity": 4.0, "acc": 1}
    assert verdict(ppl, sample).reason == "no_threshold"
    assert verdict(primary_metric(lambada, metric="perplexity", threshold=5.0), sample).outcome == CORRECT
    assert verdict(primary_metric(lambada, metric="perplexity", threshold=3.0), sample).outcome == INCORRECT
    with pytest.raises(UserError, match="'fx_lambada_openai'.*supported: perplexity, acc"):
        primary_metric(lambada, "fx_lambada_openai", metric="bleu")
