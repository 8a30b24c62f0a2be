"""Reasoning / answer segmentation (harness_xai/contrast/reasoning.py), checked against lm-eval's
own post-processing of thinking models' generations."""

from __future__ import annotations

import pytest

from harness_xai.contrast.reasoning import (ANSWER, MARKER, REASONING, reasoning_steps, split_reasoning,
                                            split_reasoning_ids, step_relevance, token_labels)

TEXTS = [
    "<think>We need 3+4. That is 7! Check: 7-4=3.</think>\n\nThe answer is 7.",
    "<think>first</think> draft </think>  final «Zoë» <script>",  # lm-eval keeps after the last
    "no thinking at all, just 12",
    "<think>still thinking when the budget ran out. Next step",
    "reasoning without an opening tag.\nSecond line</think>Answer: B",
]


@pytest.mark.parametrize("text", TEXTS)
def test_answer_is_what_lm_eval_scores(text):
    from lm_eval.models.utils import postprocess_generated_text

    split = split_reasoning(text)
    scored = postprocess_generated_text(text, None, "</think>")
    assert text[split.answer[0]:split.answer[1]] == scored
    assert split.closed == ("</think>" in text)
    if split.reasoning is not None:
        reasoning = text[split.reasoning[0]:split.reasoning[1]]
        assert "<think>" not in reasoning and (not split.closed or "</think>" not in reasoning[-8:])
        for s, e in split.steps:
            assert split.reasoning[0] <= s < e <= split.reasoning[1] and text[s:e] == text[s:e].strip()


def test_steps_by_sentence_and_by_line():
    text = TEXTS[0]
    split = split_reasoning(text)
    assert [text[s:e] for s, e in split.steps] == ["We need 3+4.", "That is 7!", "Check: 7-4=3."]
    lines = "a first line. still first\n\n  second line  \nthird"
    assert [lines[s:e] for s, e in reasoning_steps(lines, (0, len(lines)), "line")] == [
        "a first line. still first", "second line", "third"]
    assert split_reasoning(TEXTS[2]).reasoning is None and split_reasoning(TEXTS[2]).steps == ()
    unclosed = split_reasoning(TEXTS[3])
    assert unclosed.reasoning == (len("<think>"), len(TEXTS[3])) and unclosed.answer == (0, len(TEXTS[3]))
    with pytest.raises(ValueError, match="supported: sentence, line"):
        reasoning_steps(text, (0, 3), "paragraph")


def test_token_labels_and_step_sums(micro_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(micro_model))
    text = TEXTS[0]
    split = split_reasoning(text)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    labels, step_of = token_labels(tok, ids, split)
    assert len(labels) == len(step_of) == len(ids)
    assert labels[0] == MARKER and labels[-1] == ANSWER and REASONING in labels
    pieces = {kind: "".join(tok.decode([i]) for i, lab in zip(ids, labels) if lab == kind)
              for kind in (REASONING, ANSWER)}
    assert "3+4" in pieces[REASONING] and "answer is 7" in pieces[ANSWER]
    assert "answer" not in pieces[REASONING] and "Check" not in pieces[ANSWER]
    # each step's tokens decode to a text that contains the step
    for n, (s, e) in enumerate(split.steps):
        assert text[s:e] in tok.decode([i for i, st in zip(ids, step_of) if st == n])
    ones = step_relevance([1.0] * len(ids), step_of, len(split.steps))
    assert sum(ones) == sum(st is not None for st in step_of) and all(v > 0 for v in ones)
    with pytest.raises(ValueError):
        step_relevance([1.0], step_of, len(split.steps))


def test_integer_think_end_token_splits_at_its_last_occurrence():
    assert split_reasoning_ids([5, 9, 7, 9, 3, 4], 9) == ((0, 3), (4, 6))
    assert split_reasoning_ids([5, 6], 9) == (None, (0, 2))


# --- labels of generated ids (generated_segments) ---------------------------------------------

def _char_decode(table: dict[int, str]):
    return lambda ids: "".join(table[i] for i in ids)


def test_generated_segments_integer_marker_that_decodes_to_nothing():
    """An integer think_end whose token the decode drops (a special token): the token is the
    marker all the same, the answer starts after it (lstripped), every reasoning token has a step."""
    from harness_xai.contrast.reasoning import generated_segments

    table = {1: "<think>", 2: " a", 3: ".", 4: " b", 5: ".", 9: "", 6: " ", 7: "18"}
    ids = [1, 2, 3, 4, 5, 9, 6, 7]
    parts = generated_segments(_char_decode(table), ids, 9)
    assert parts.closed and parts.text[parts.answer_start:] == "18"
    assert [lab for lab, _ in parts.labels] == ["think-marker"] + ["reasoning"] * 4 + \
        ["think-marker", "think-marker", "answer"]
    assert [st for _, st in parts.labels] == [None, 0, 0, 1, 1, None, None, None]
    assert parts.steps == ("a.", "b.")
    # the same generation with a string marker (a visible token) gives the same labels
    table[9] = "</think>"
    assert generated_segments(_char_decode(table), ids, "</think>").labels == parts.labels


def test_generated_segments_unclosed_and_without_reasoning():
    """No think_end: lm-eval scores the whole (lstripped) text; an opened trace is reasoning,
    a text that never opened one is all answer."""
    from lm_eval.models.utils import postprocess_generated_text

    from harness_xai.contrast.reasoning import generated_segments, scored_text_view

    table = {1: "<think>", 2: " a", 3: ".", 4: "\n", 5: "b", 8: " ", 7: "18"}
    for end in ("</think>", 99):
        parts = generated_segments(_char_decode(table), [1, 2, 3, 4, 5], end)
        assert not parts.closed and parts.answer_start == 0
        assert [lab for lab, _ in parts.labels] == ["think-marker"] + ["reasoning"] * 4
        assert [st for _, st in parts.labels] == [None, 0, 0, 0, 1]
        plain = generated_segments(_char_decode(table), [8, 7], end)
        assert {lab for lab, _ in plain.labels} == {"answer"} and plain.answer_start == 1
        scored = postprocess_generated_text(plain.text, None, "</think>")
        assert plain.text[plain.answer_start:] == scored
        assert scored_text_view(plain, scored) == plain.text
        assert scored_text_view(plain, "17") is None


# --- end to end: a thinking model through lm-eval's HFLM and harness_xai.evaluate ---------------

#: THOUGHT cut by hand into its parts, each with the whitespace after it (the part whitespace
#: joins); reasoning steps by sentence / line: the oracle for every generated token's label
PIECES = [("<think>", "think-marker", None), (" Add 9 & 8. ", "reasoning", 0),
          ("Check <it>.\n", "reasoning", 1), ("So <17>.", "reasoning", 2),
          ("</think> ", "think-marker", None), ("#### 17", "answer", None)]


@pytest.fixture(scope="module")
def thinking(micro_model, tmp_path_factory):
    """{mode: (sqlite URL, lm-eval results)} of attributed runs of the thinking model on the
    GSM8K-format tasks: think_end_token as a string, as the token id, with sequence contrasts,
    and (string) with a generation budget that ends inside the reasoning."""
    import harness_xai
    from lm_eval.tasks import TaskManager, get_task_dict
    from thinking_model import TASK, TASK_NO_MATCH, build_thinking_model, write_thinking_tasks
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("thinking")
    tm = TaskManager(include_path=str(write_thinking_tasks(root / "tasks")), include_defaults=False)
    task = get_task_dict([TASK], tm)[TASK]
    model = build_thinking_model(micro_model, root / "model",
                                 [task.doc_to_text(d) for d in task.test_docs()])
    marker_id = AutoTokenizer.from_pretrained(str(model)).convert_tokens_to_ids("</think>")
    runs = {}
    for mode, end, max_gen in (("string", "</think>", 64), ("id", marker_id, 64),
                               ("sequence", "</think>", 64), ("unclosed", "</think>", 12),
                               ("line", "</think>", 64)):
        url = f"sqlite:///{root / mode}.sqlite"
        results = harness_xai.evaluate(
            model="hf", model_args=f"pretrained={model},dtype=float32,think_end_token={end}",
            tasks=[TASK, TASK_NO_MATCH], task_manager=tm, device="cpu", num_fewshot=0,
            gen_kwargs=f"max_gen_toks={max_gen}", attribute=True, db=url, progress=False,
            contrast="sequence" if mode == "sequence" else "token",
            reasoning_steps="line" if mode == "line" else "sentence")
        runs[mode] = (url, results)
    return {"runs": runs, "model": model, "root": root, "marker_id": marker_id}


def _cases(url: str):
    import json

    from harness_xai.store import run_sql

    cols, rows = run_sql(url, "SELECT id, task, doc_id, filter, status, skip_reason, position, "
                              "wrong_token, gold_token, delta, method_params FROM cases ORDER BY id")
    out = []
    for row in rows:
        case = dict(zip(cols, row))
        case["notes"] = json.loads(case["method_params"])["contrast"]
        tcols, tokens = run_sql(url, "SELECT position, token_id, relevance, segment, segment_index "
                                     "FROM token_relevance WHERE case_id = :c ORDER BY position",
                                {"c": case["id"]})
        case["tokens"] = [dict(zip(tcols, t)) for t in tokens]
        case["metrics"] = dict(run_sql(url, "SELECT name, value FROM case_metrics WHERE "
                                            "case_id = :c", {"c": case["id"]})[1])
        out.append(case)
    return out


def _oracle_labels(tok, ids: list[int]) -> list[tuple[str, int | None]]:
    """Each generated token's (segment, step) by the first character it decodes to, in PIECES."""
    from thinking_model import THOUGHT

    assert "".join(p for p, _, _ in PIECES) == THOUGHT
    chars = [(lab, st) for text, lab, st in PIECES for _ in text]
    out, at = [], 0
    for i in ids:
        piece = tok.decode([i])
        assert THOUGHT.startswith(piece, at), (piece, at)
        out.append(chars[at])
        at += len(piece)
    return out


@pytest.mark.parametrize("mode", ["string", "id", "sequence", "unclosed"])
def test_thinking_cases_are_built_and_labelled(thinking, mode):
    from thinking_model import TASK, THOUGHT
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(thinking["model"]))
    url, results = thinking["runs"][mode]
    samples = results["samples"][TASK]
    closed = mode != "unclosed"
    # lm-eval logged only the answer (closed) or the whole cut trace (unclosed)
    assert {s["resps"][0][0] for s in samples} == ({"#### 17"} if closed else {THOUGHT[:20]})
    cases = _cases(url)
    by_task = results["xai"]["by_task"]
    assert sum(c["cases"] for c in by_task.values()) == len(cases) == 9  # 3 docs × (2 + 1 filters)
    assert all(c["status"] == "attributed" for c in cases), [c["skip_reason"] for c in cases]
    assert all(c["delta"] > 0 for c in cases)  # the explained Δ favours what the model wrote
    think_start = tok.convert_tokens_to_ids("<think>")
    for case in cases:
        notes, tokens = case["notes"], case["tokens"]
        assert notes["thinking"]["closed"] is closed
        assert notes["generation"] == (THOUGHT if closed else THOUGHT[:20])
        ids = [t["token_id"] for t in tokens]
        # the first generated token (the prompts never hold <think>); none when the contrast is
        # at the generation's first token (unclosed, strict filter: the whole text vs the target)
        start = ids.index(think_start) if think_start in ids else len(ids)
        assert start < len(ids) or (not closed and case["filter"] == "strict-match")
        assert all(t["segment"] not in ("reasoning", "think-marker", "answer")
                   for t in tokens[:start])
        got = [(t["segment"], t["segment_index"]) for t in tokens[start:]]
        assert got == _oracle_labels(tok, ids[start:])
        if not closed:
            assert "answer" not in {lab for lab, _ in got}


def test_answer_contrast_lies_after_the_think_marker(thinking):
    """Closed thinking: the answer-span contrast is the final answer's token (" 17" vs the gold),
    after </think>; a filter that finds no answer compares from the answer's start, the whole
    reasoning as context; the integer marker gives the same cases as the string one."""
    from thinking_model import TASK, TASK_NO_MATCH, THOUGHT

    string, by_id = (_cases(thinking["runs"][m][0]) for m in ("string", "id"))
    answer_at = THOUGHT.index("#### 17")
    for case in string:
        marker = next(t["position"] for t in case["tokens"]
                      if t["token_id"] == thinking["marker_id"])
        answer = [t["position"] for t in case["tokens"] if t["segment"] == "answer"]
        assert case["position"] > marker
        if case["task"] == TASK:
            assert case["notes"]["rule"] == "answer-span" and case["wrong_token"] == " 17"
            assert case["notes"]["answer_start"] == THOUGHT.index("17", answer_at)
            assert answer and case["position"] == answer[-1] + 1
        else:
            assert case["task"] == TASK_NO_MATCH
            assert case["notes"]["rule"] == "invalid-extraction:full-target"
            assert case["notes"]["answer_start"] == answer_at and not answer
            assert case["wrong_token"] == "#"
        assert case["notes"]["thinking"]["answer_start"] == answer_at
    key = lambda c: (c["task"], c["doc_id"], c["filter"], c["position"], c["wrong_token"],
                     c["gold_token"], [(t["segment"], t["segment_index"]) for t in c["tokens"]])
    assert [key(c) for c in string] == [key(c) for c in by_id]


def test_unclosed_thinking_contrast_lands_inside_the_reasoning(thinking):
    """No </think> within the budget: lm-eval scores the whole text, so the flexible filter
    finds "8." inside the reasoning and the contrast is that token; the strict one finds
    nothing and the whole generation is compared with the reference from its first token."""
    cases = _cases(thinking["runs"]["unclosed"][0])
    flexible = [c for c in cases if c["filter"] == "flexible-extract" and c["task"] == "fx_think_gsm8k"]
    assert flexible
    for case in flexible:
        assert case["notes"]["rule"] == "answer-span" and case["wrong_token"] == " 8"
        assert case["tokens"][-1]["segment"] == "reasoning"
    for case in cases:
        if case["filter"] == "strict-match":
            assert case["notes"]["rule"] == "invalid-extraction:full-target"
            assert case["wrong_token"] == "<think>" and case["notes"]["answer_start"] == 0


def test_step_relevance_is_conserved_and_the_top_step_stored(thinking):
    """Per step: Σ relevance of its tokens (brute force over the stored tokens) = the analysis'
    step sums; every reasoning token has a step, so the steps add up to the reasoning segment;
    the stored reasoning.top_step is the step with the largest sum."""
    from harness_xai.analysis.reasoning import step_totals

    n = 0
    for mode in ("string", "unclosed"):
        for case in _cases(thinking["runs"][mode][0]):
            tokens = case["tokens"]
            reasoning = [t for t in tokens if t["segment"] == "reasoning"]
            if not reasoning:
                assert not any(k.startswith("reasoning.") for k in case["metrics"])
                continue
            brute: dict[int, float] = {}
            for t in reasoning:
                brute[t["segment_index"]] = brute.get(t["segment_index"], 0.0) + t["relevance"]
            totals = step_totals([t["relevance"] for t in tokens], [t["segment"] for t in tokens],
                                 [t["segment_index"] for t in tokens])
            assert list(totals) == sorted(brute)
            for step, (total, _) in totals.items():
                assert total == pytest.approx(brute[step], abs=1e-9)
            assert sum(brute.values()) == pytest.approx(sum(t["relevance"] for t in reasoning),
                                                        abs=1e-9)
            top = max(brute, key=brute.get)
            m = case["metrics"]
            assert m["reasoning.top_step"] == top and m["reasoning.n_steps"] == len(brute)
            assert m["reasoning.top_step.total"] == pytest.approx(brute[top], abs=1e-9)
            share = sum(abs(t["relevance"]) for t in reasoning if t["segment_index"] == top) / \
                sum(abs(t["relevance"]) for t in tokens)
            assert m["reasoning.top_step.share"] == pytest.approx(share, abs=1e-9)
            n += 1
    assert n >= 12  # 9 closed + the unclosed flexible ones


def test_case_page_names_the_reasoning_step_escaped(thinking):
    import html
    import re

    from harness_xai.report import render_report

    out = thinking["root"] / "report"
    url = thinking["runs"]["string"][0]
    render_report(url, out)
    steps = ["Add 9 & 8.", "Check <it>.", "So <17>."]
    for case in _cases(url):
        page = next(out.glob(f"run-*/case-{case['id']}.html")).read_text(encoding="utf-8")
        line = re.search(r'<p class="small oneline" id="reasoning-line">(.*?)</p>', page, re.S)
        assert line, case["id"]
        top = int(case["metrics"]["reasoning.top_step"])
        text = line.group(1)
        assert f"step {top + 1} of 3" in text
        assert html.escape(steps[top], quote=False) in text and steps[top] not in text
        share = case["metrics"]["reasoning.top_step.share"]
        assert f"{100 * share:.0f}% of Σ|R|" in text
        assert "<it>" not in page and "<17>" not in page


def test_generated_labels_for_any_builder():
    """The helper a builder (the rollout path too) calls on generated ids: ``generated`` without
    a think_end_token, the reasoning segments with one."""
    from harness_xai.contrast.reasoning import generated_labels

    table = {1: "<think>", 2: " a", 3: ".", 9: "</think>", 7: " 18"}

    class LM:
        think_end_token = None

        def tok_decode(self, ids):
            return "".join(table[i] for i in ids)

    lm = LM()
    assert generated_labels(lm, [1, 2, 3, 9, 7]) == [("generated", None)] * 5
    lm.think_end_token = "</think>"
    assert generated_labels(lm, [1, 2, 3, 9, 7]) == [
        ("think-marker", None), ("reasoning", 0), ("reasoning", 0), ("think-marker", None),
        ("answer", None)]
    lm.think_end_token = 9
    assert generated_labels(lm, [1, 2, 3]) == [("think-marker", None), ("reasoning", 0),
                                              ("reasoning", 0)]


def test_reasoning_steps_by_line(thinking):
    """``--xai-reasoning-steps line``: the same generation's reasoning is cut at line breaks (two
    steps: the first line holds two sentences), every reasoning token carries the index of the line
    that holds it; the default cuts sentences (three steps). A bad value is one line, before a run."""
    from thinking_model import THOUGHT

    from harness_xai.config import RunConfig
    from harness_xai.errors import UserError

    reasoning = THOUGHT[len("<think>"):THOUGHT.index("</think>")]
    lines = [line.strip() for line in reasoning.split("\n")]
    for mode, want in (("line", lines), ("string", ["Add 9 & 8.", "Check <it>.", "So <17>."])):
        cases = _cases(thinking["runs"][mode][0])
        assert cases
        for case in cases:
            assert case["notes"]["thinking"]["steps"] == want
            steps = {t["segment_index"] for t in case["tokens"] if t["segment"] == "reasoning"}
            assert steps <= set(range(len(want))) and steps
    with pytest.raises(UserError, match="--xai-reasoning-steps 'paragraph': use one of sentence, line"):
        RunConfig.create(reasoning_steps="paragraph")
    assert RunConfig.create(reasoning_steps="line").identity()["reasoning_steps"] == "line"
    assert "reasoning_steps" not in RunConfig.create().identity()
