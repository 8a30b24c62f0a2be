"""Where the answer is (harness_xai/contrast/answer.py), on lm-eval's real task configs
(tests/fixtures) and the micro model's HFLM: spans agree with the tasks' own filters/extraction,
gold tokens with lm-eval's encoding, truncation with HFLM's own left truncation."""

from __future__ import annotations

import pytest

from fixtures.generative_run import MAX_GEN_TOKS
from harness_xai.contrast.answer import (LOCATORS, answer_span, generation_truncation, get_locator,
                                         gold_answers, gold_at, gold_tokens, locator_key,
                                         loglikelihood_truncation, needle_spans, register_locator,
                                         token_span)

#: task → (generation, the characters the task's scoring reads)
GENERATIONS = {
    "fx_mmlu_pro_biology": ("Golgi packages proteins. The answer is (E). Or the answer is (A).", "E"),
    "fx_bbh_cot_boolean_expressions": ("not True = False. So the answer is False.", "False"),
    "fx_bbh_boolean_expressions": (" False\n", " False\n"),
    "fx_minerva_math_algebra": ("We add: 2+3.\nFinal Answer: The final answer is $5$. I hope it is correct.",
                                "$5$"),
    "fx_babilong_qa1": ("  The most recent location of Mary is BATHROOM. Bye", "BATHROOM"),
    "fx_niah_single_1": (" 4281937. Also 1111111.", "4281937"),
    "fx_humaneval": ("    return a + b\n", "    return a + b\n"),
    "fx_ifeval": ("all lowercase words here.", "all lowercase words here."),
}


@pytest.mark.parametrize("name", sorted(GENERATIONS))
def test_answer_span_reads_what_the_task_scores(generative_run, name):
    task = generative_run.tasks[name]
    doc = list(task.eval_docs)[0]
    text, expected = GENERATIONS[name]
    span = answer_span(task, doc, text)
    assert span.found and span.reason is None, span
    assert span.text == expected == text[span.start:span.end], span


def test_minerva_span_is_what_its_own_extraction_returns(generative_run):
    task = generative_run.tasks["fx_minerva_math_algebra"]
    extract = task.config.process_results.__globals__["get_unnormalized_answer"]
    for text in ["Final Answer: The final answer is \\frac{3}{4}. I hope it is correct.",
                 "x\nFinal Answer: The final answer is 6", "no final answer"]:
        span = answer_span(task, {}, text)
        assert span.found == (extract(text) != "[invalidanswer]")
        if span.found:
            assert text[span.start:span.end] == extract(text)
        else:
            assert span.reason == "filter_no_match"


def test_spans_of_real_logged_samples_equal_the_filtered_responses(generative_run):
    """Every regex-filtered sample: found iff the filter matched, and then the same characters."""
    checked = 0
    for name in ("fx_mmlu_pro_biology", "fx_bbh_cot_boolean_expressions"):
        task = generative_run.tasks[name]
        docs = list(task.eval_docs)
        for s in generative_run.samples[name]:
            text, filtered = s["resps"][0][0], s["filtered_resps"][0]
            span = answer_span(task, docs[s["doc_id"]], text, s["filter"])
            assert span.found == (filtered != "[invalid]"), (name, text, filtered)
            assert span.text == filtered
            checked += 1
    # synthetic generations through the same filter code lm-eval runs
    task = generative_run.tasks["fx_mmlu_pro_biology"]
    for text in ["the answer is J", "The answer is (C) maybe", "answer is (B).", "nothing"]:
        ensemble = task._filters[0]
        resps = [[text]]
        for make in ensemble.filters:
            resps = list(make().apply(resps, [{}]))
        span = answer_span(task, {}, text, ensemble.name)
        assert span.text == resps[0] and span.found == (resps[0] != "[invalid]"), text
    assert checked >= 6


def test_gold_tokens_are_lm_evals_continuation_with_the_delimiter(generative_run):
    lm = generative_run.lm
    task = generative_run.tasks["fx_bbh_boolean_expressions"]
    sample = generative_run.samples["fx_bbh_boolean_expressions"][0]
    context = sample["arguments"][0][0]
    gold = gold_answers(task, list(task.eval_docs)[0])
    assert gold == ["False"]
    tokens = gold_tokens(lm, context, gold[0], task.config.target_delimiter)
    whole, ctx = lm.tok_encode(context + " False"), lm.tok_encode(context)
    assert tokens.context_ids == tuple(ctx) and tokens.ids == tuple(whole[len(ctx):])
    assert lm.tok_decode(list(tokens.ids)).startswith(" ") and tokens.text == " False"
    assert tokens.ids != tuple(lm.tok_encode("False"))  # never the bare string
    # a trailing context space moves into the continuation, as lm-eval's _encode_pair does
    assert gold_tokens(lm, "Answer: ", "12", "").ids == gold_tokens(lm, "Answer:", "12", " ").ids
    # in a generation: the gold replaces the model's answer after the model's own prefix
    mmlu = generative_run.tasks["fx_mmlu_pro_biology"]
    text = "Think. The answer is (A)."
    span = answer_span(mmlu, {}, text)
    at = gold_at(lm, "Q:", text, span, "E")
    assert at.context_ids == tuple(lm.tok_encode("Q:" + text[:span.start])) and at.text == "E"


def test_token_span_covers_exactly_the_answer_characters(generative_run):
    tok = generative_run.lm.tokenizer
    task = generative_run.tasks["fx_babilong_qa1"]
    text = "The most recent location of Mary is bathroom. Done."
    span = answer_span(task, {"target": "bathroom"}, text)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    first, last = token_span(tok, ids, span)
    covered = tok.decode(ids[first:last])
    assert "bathroom" in covered and "bathroom" not in tok.decode(ids[first + 1:last])
    assert "bathroom" not in tok.decode(ids[first:last - 1])


def test_truncation_matches_hflm_and_tells_whether_evidence_survived(generative_run):
    lm = generative_run.lm
    room = lm.max_length - MAX_GEN_TOKS
    seen = set()
    for name in ("fx_babilong_qa1", "fx_niah_single_1"):
        docs = list(generative_run.tasks[name].eval_docs)
        for s in generative_run.samples[name]:
            context, doc = s["arguments"][0][0], docs[s["doc_id"]]
            needles = needle_spans(doc, context)
            assert len(needles) == 1, (name, s["doc_id"], needles)
            (at, end), = needles
            fact = context[at:end]
            gold = (doc.get("outputs") or [doc.get("target")])[0]
            assert gold in fact and fact.endswith(".") and "\n" not in fact, fact
            trunc = generation_truncation(lm, context, MAX_GEN_TOKS, evidence=needles)
            ids = lm.tok_encode(context)
            fed = lm.tok_batch_encode([context], left_truncate_len=room)[0][0].tolist()
            assert fed == ids[trunc.cut:] and trunc.kept == len(fed) == min(len(ids), room)
            assert context[trunc.cut_chars:] == lm.tok_decode(ids[trunc.cut:])
            assert trunc.evidence_kept == ((at >= trunc.cut_chars),)
            assert trunc.evidence_kept[0] == (fact in lm.tok_decode(fed))
            seen.add(trunc.evidence_kept[0])
    assert seen == {True, False}  # short docs keep their facts, the over-long ones lose them


def test_loglikelihood_truncation_is_lm_evals_window(generative_run):
    lm = generative_run.lm
    context = generative_run.samples["fx_babilong_qa1"][-1]["arguments"][0][0]
    for continuation in (" office", " a much longer continuation of several words"):
        ctx, cont = lm._encode_pair(context, continuation)
        fed = (ctx + cont)[-(lm.max_length + 1):][:-1]
        trunc = loglikelihood_truncation(lm, context, continuation)
        assert trunc.kept == len(fed) - (len(cont) - 1) and trunc.total == len(ctx)
        assert fed[:trunc.kept] == ctx[trunc.cut:]


def test_locator_registry_refuses_taken_names_and_suggests(generative_run):
    key = locator_key(generative_run.tasks["fx_babilong_qa1"].config.process_results)
    assert key == "babilong/common_utils.py:process_results" and key in LOCATORS
    with pytest.raises(ValueError, match="already registered"):
        register_locator(key, lambda *a: None)
    with pytest.raises(KeyError, match="did you mean 'babilong/common_utils.py:process_results'"):
        get_locator("babilong/common_util.py:process_results")


def test_gsm8k_strict_and_flexible_filters(tmp_path):
    """gsm8k's two regex filters (group_select 0 and -1, alternation groups) give the filters' text."""
    from lm_eval.tasks import TaskManager, get_task_dict

    from fixtures.lm_eval_tasks import write_tasks

    tm = TaskManager(include_path=str(write_tasks(tmp_path)), include_defaults=False)
    task = get_task_dict(["fx_gsm8k"], tm)["fx_gsm8k"]
    generations = ["She has 3 + 4 = 7 eggs.\n#### 7", "So 12 then 1,200 and $15.", "#### -3.5 is it",
                   "no digits here", " 10 apples cost $20.\n#### 20\n\nQuestion: 5"]
    for ensemble in task._filters:
        for text in generations:
            resps = [[text]]
            for make in ensemble.filters:
                resps = list(make().apply(resps, [{}]))
            span = answer_span(task, {}, text, ensemble.name)
            assert span.text == resps[0], (ensemble.name, text, span)
            assert span.found == (resps[0] != "[invalid]")
            if span.found:
                assert text[span.start:span.end] == resps[0]
