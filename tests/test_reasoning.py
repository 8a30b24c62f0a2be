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
