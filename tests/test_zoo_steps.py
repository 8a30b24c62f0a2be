"""``xai_steps`` (multi-step arithmetic written out) and planted first errors on a zoo model.

Oracles: every doc's solution is recomputed from its prompt; lm-eval's own task object (YAML +
regex filter + exact_match, through ``task_scorer``) accepts the written-out solution and rejects
one with a wrong step; on a trained steps model, the rollout localiser returns the planted position
exactly where a brute force over every position × alternative says it is the earliest flip."""

from __future__ import annotations

import re

import pytest

from harness_xai.zoo import steps, tasks_dir
from harness_xai.zoo.taskgen import to_jsonl

STEP = re.compile(r" (\d+) ([+-]) (\d+) = (\d+)")


def test_committed_docs_are_regenerated_byte_for_byte():
    committed = (tasks_dir() / "xai_steps" / "test.jsonl").read_text(encoding="utf-8")
    assert committed == to_jsonl(steps.test_docs())


def test_solutions_recompute_from_the_prompt_step_by_step():
    docs = steps.test_docs()
    assert len({d["prompt"] for d in docs}) == len(docs) == steps.N_TEST
    assert {d["n_steps"] for d in docs} == {2, 3, 4}
    for doc in docs:
        tokens = doc["prompt"].removeprefix("Q: ").removesuffix(" =").split(" ")
        operands, ops = [int(x) for x in tokens[0::2]], tokens[1::2]
        assert len(set(operands)) == len(operands) and all(1 <= x <= 9 for x in operands)
        body, answer = doc["solution"].split(" #### ")
        parts = body.split(" ;")
        assert len(parts) == len(ops) == doc["n_steps"]
        value = operands[0]
        for k, (part, op, x) in enumerate(zip(parts, ops, operands[1:])):
            a, sign, b, result = STEP.fullmatch(part).groups()
            value = value + x if op == "+" else value - x
            assert (int(a), sign, int(b), int(result)) == (
                int(parts[k - 1].rsplit(" ", 1)[1]) if k else operands[0], op, x, value)
            assert value >= 0
            start, end = doc["result_spans"][k]
            assert doc["solution"][start:end] == result
        assert answer == doc["target"] == str(value) == steps.extract_answer(doc["solution"])


def test_training_docs_never_repeat_a_test_prompt():
    import itertools

    test = {d["prompt"] for d in steps.test_docs()}
    train = [d["prompt"] for d in itertools.islice(steps.train_docs(11), 5000)]
    assert not test & set(train)
    assert len(set(train)) > 1000  # a stream, not a handful of docs


def test_steps_tokenizer_makes_every_step_six_tokens():
    from harness_xai.zoo.steps_train import StepsSpec, encode, steps_tokenizer

    tokenizer = steps_tokenizer(StepsSpec())
    for doc in steps.test_docs()[:40]:
        ids = tokenizer(doc["solution"], add_special_tokens=False)["input_ids"]
        assert len(ids) == 6 * doc["n_steps"] + 1  # " ;" closes a step, " ####" the last one
        pieces = [tokenizer.decode([i]) for i in ids]
        assert "".join(pieces) == doc["solution"]
        assert pieces[-2:] == [" ####", f" {doc['target']}"]
    ids, mask = encode(tokenizer, steps.test_docs()[:3])
    for row, doc in zip(range(3), steps.test_docs()[:3]):
        n_prompt = len(tokenizer(doc["prompt"], add_special_tokens=False)["input_ids"])
        n_solution = len(tokenizer(doc["solution"], add_special_tokens=False)["input_ids"])
        assert mask[row].nonzero().flatten().tolist() == list(
            range(n_prompt - 1, n_prompt + n_solution))  # solution tokens and the EOS


@pytest.fixture(scope="module")
def task():
    from lm_eval.tasks import TaskManager, get_task_dict

    return get_task_dict(["xai_steps"], TaskManager(include_path=str(tasks_dir())))["xai_steps"]


def test_yaml_loads_and_scores_written_out_solutions_like_gsm8k(task):
    from harness_xai.contrast.rollouts import task_scorer

    assert task.OUTPUT_TYPE == "generate_until"
    assert [f.name for f in task._filters] == ["strict-match"]
    docs = list(task.test_docs())
    assert len(docs) == steps.N_TEST
    doc = docs[0]
    assert task.doc_to_text(doc) == doc["prompt"] and task.doc_to_target(doc) == doc["target"]
    score = task_scorer(task, doc)
    right, value = doc["solution"], int(doc["target"])
    assert score(right)
    wrong_last = right.rsplit(" ", 1)[0] + f" {value + 1}"
    assert not score(wrong_last)
    start, end = doc["result_spans"][0]  # a wrong first step that propagates to the answer
    assert not score(right[:start] + str(int(right[start:end]) + 1) + " #### " + str(value + 1))
    assert score(f" #### {value} #### {value + 1}")  # the first "#### N" counts
    assert not score(right.replace(" ####", " ;"))  # no answer marker: invalid extraction


@pytest.mark.slow
def test_planted_error_is_localised_where_brute_force_puts_the_first_flip(tmp_path, task):
    """A trained steps model (short schedule): planted cases on docs it solves as written. For
    each: t* flips (restoring the model's token gives its correct generation back); first_error
    with a budget that covers every position returns the brute-force earliest flip; where that is
    t* (at least one case), it returns exactly t* and the model's own token as the alternative."""
    from harness_xai.zoo.steps_train import StepsSpec
    from harness_xai.zoo.threads import torch_threads

    with torch_threads(1):  # a tiny model: more threads only wait on each other under load
        _planted_cases_are_localised(tmp_path, task, StepsSpec(steps=400))


def _planted_cases_are_localised(tmp_path, task, spec) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness_xai.contrast.rollouts import first_error, greedy_continue, task_scorer
    from harness_xai.zoo import plant
    from harness_xai.zoo.build import build_steps_model

    path = build_steps_model(tmp_path, spec, progress=False)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    until = task.config.generation_kwargs["until"]
    docs = list(task.test_docs())[:64]
    eos = tokenizer.eos_token_id
    gens = greedy_continue(model, [tokenizer(d["prompt"], add_special_tokens=False)["input_ids"]
                                   for d in docs], 40, eos, (eos,))
    scorers = [task_scorer(task, d) for d in docs]
    cases, _ = plant.plant_cases(model, tokenizer, docs, gens, scorers, 6, 1, until, 40)
    assert len(cases) >= 3, "the short-schedule model solves too few docs as written"
    checked = 0
    for case in cases:
        score = scorers[case.doc_index]
        assert case.ids[:case.position] == tuple(gens[case.doc_index][:case.position])
        assert not score(case.text)
        flip = plant.earliest_flip(model, tokenizer, case.prompt_ids, case.ids, score, 3, 40,
                                   until)
        assert case.position in flip.flipping_positions
        assert flip.position is not None and flip.position <= case.position
        result = first_error(model, tokenizer, case.prompt_ids, case.ids, score, top_k=3,
                             max_rollouts=2 * len(case.ids), max_rollout_tokens=40,
                             until=until, eos_token_id=eos)
        assert result.position == flip.position and result.alternative in flip.alternatives
        if flip.position == case.position:  # the planted step is the earliest flip: found there,
            assert result.alternative == case.model_token  # with the model's own token back
            checked += 1
    assert checked >= 1, f"no case among {len(cases)} where t* is the earliest flip"


def test_step_positions_point_at_each_steps_operand_and_result():
    import random

    from harness_xai.zoo import plant
    from harness_xai.zoo.steps_train import StepsSpec, steps_tokenizer

    tokenizer = steps_tokenizer(StepsSpec())
    rng = random.Random(0)
    for doc in steps.test_docs():
        ids = tokenizer(doc["solution"], add_special_tokens=False)["input_ids"]
        positions = plant.step_positions(tokenizer, ids, doc)
        assert len(positions) == doc["n_steps"]
        for k, where in enumerate(positions):
            start, end = doc["result_spans"][k]
            assert tokenizer.decode([ids[where["result"]]]) == " " + doc["solution"][start:end]
            assert tokenizer.decode([ids[where["operand"]]]) == f" {doc['operands'][k + 1]}"
            wrong = plant.wrong_number(tokenizer, doc["solution"][start:end], rng)
            assert wrong != ids[where["result"]]
            assert 1 <= abs(int(tokenizer.decode([wrong])) - int(doc["solution"][start:end])) <= 3
    with pytest.raises(ValueError, match="not the doc's solution"):
        plant.step_positions(tokenizer, ids[:-1], doc)
