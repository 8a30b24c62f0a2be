"""Reasoning and answer segments of a thinking model's raw generation (issue #14, item 4).

lm-eval (0.4.13) strips the reasoning before scoring: with a string ``think_end_token`` the scored
text is ``generation.split(think_end_token)[-1].lstrip()``; with a token id, the tokens after its
*last* occurrence (then ``lstrip``). Logged ``resps`` therefore hold only the answer; these helpers
work on the raw (regenerated) text or ids and mark, consistently with that rule:

- ``reasoning``: after an opening ``<think>`` (when present) up to the last ``think_end``;
- ``marker``: the ``think_start`` / ``think_end`` strings themselves;
- ``answer``: what lm-eval scores (the whole text when the model never closed its thinking;
  then ``closed`` is False and an opened trace still counts as reasoning).

Reasoning is cut into steps (sentences or non-blank lines) so relevance can be summed per step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

REASONING, ANSWER, MARKER = "reasoning", "answer", "marker"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass(frozen=True)
class ReasoningSplit:
    reasoning: tuple[int, int] | None  # character span of the reasoning text
    answer: tuple[int, int]  # character span lm-eval scores
    markers: tuple[tuple[int, int], ...]  # think_start / think_end occurrences
    closed: bool  # a think_end was found
    steps: tuple[tuple[int, int], ...] = ()  # reasoning steps (character spans, stripped)


def split_reasoning(text: str, think_end: str = "</think>", think_start: str | None = "<think>",
                    steps: str = "sentence") -> ReasoningSplit:
    """Segment ``text`` as lm-eval's ``postprocess_generated_text`` would score it."""
    end = text.rfind(think_end) if think_end else -1
    opened = text.find(think_start) if think_start else -1
    markers = []
    if opened >= 0 and (end < 0 or opened < end):
        markers.append((opened, opened + len(think_start)))
        start = opened + len(think_start)
    else:
        start = 0
    if end < 0:
        reasoning = (start, len(text)) if markers else None
        split = ReasoningSplit(reasoning, (0, len(text)), tuple(markers), False)
    else:
        markers.append((end, end + len(think_end)))
        after = end + len(think_end)
        answer_start = after + len(text[after:]) - len(text[after:].lstrip())
        split = ReasoningSplit((start, end), (answer_start, len(text)), tuple(markers), True)
    if split.reasoning is None:
        return split
    return ReasoningSplit(split.reasoning, split.answer, split.markers, split.closed,
                          reasoning_steps(text, split.reasoning, steps))


def reasoning_steps(text: str, span: tuple[int, int], by: str = "sentence") -> tuple[tuple[int, int], ...]:
    """Non-empty steps of ``text[span]``: sentences (end punctuation or line breaks) or lines."""
    if by not in ("sentence", "line"):
        raise ValueError(f"reasoning steps by {by!r}: supported: sentence, line")
    pattern = _SENTENCE_END if by == "sentence" else re.compile(r"\n+")
    out, cursor = [], span[0]
    piece = text[span[0]:span[1]]
    for m in [*pattern.finditer(piece), None]:
        stop = span[0] + (m.start() if m else len(piece))
        chunk = text[cursor:stop]
        if chunk.strip():
            s = cursor + len(chunk) - len(chunk.lstrip())
            out.append((s, s + len(chunk.strip())))
        if m:
            cursor = span[0] + m.end()
    return tuple(out)


def token_labels(tokenizer, ids: Sequence[int], split: ReasoningSplit) -> tuple[list[str | None], list[int | None]]:
    """Per generated token: its segment (reasoning / marker / answer / None for the whitespace
    between) and its reasoning-step index (None outside steps), by decoded character offsets."""
    bounds = [len(tokenizer.decode(list(ids[:k]))) for k in range(len(ids) + 1)]
    labels, step_of = [], []
    for k in range(len(ids)):
        s, e = bounds[k], max(bounds[k + 1], bounds[k] + 1)
        labels.append(_label(split, s, e))
        step_of.append(next((i for i, (a, b) in enumerate(split.steps) if s < b and e > a), None)
                       if labels[-1] == REASONING else None)
    return labels, step_of


def split_reasoning_ids(ids: Sequence[int], think_end_id: int) -> tuple[tuple[int, int] | None, tuple[int, int]]:
    """Integer ``think_end_token`` (HFLM): reasoning = tokens before its last occurrence, answer =
    tokens after it (lm-eval also lstrips the decoded answer). Spans are token index ranges."""
    last = max((i for i, t in enumerate(ids) if t == think_end_id), default=None)
    if last is None:
        return None, (0, len(ids))
    return (0, last), (last + 1, len(ids))


def step_relevance(relevance: Sequence[float], step_of: Sequence[int | None], n_steps: int) -> list[float]:
    """Sum of token relevance per reasoning step (tokens outside every step are left out)."""
    if len(relevance) != len(step_of):
        raise ValueError(f"{len(relevance)} relevance values for {len(step_of)} tokens")
    sums = [0.0] * n_steps
    for value, step in zip(relevance, step_of):
        if step is not None:
            sums[step] += float(value)
    return sums


def _label(split: ReasoningSplit, s: int, e: int) -> str | None:
    def overlaps(span):
        return span is not None and s < span[1] and e > span[0]

    if any(overlaps(m) for m in split.markers):
        return MARKER
    if split.closed and overlaps(split.answer):
        return ANSWER
    if overlaps(split.reasoning):
        return REASONING
    return ANSWER if overlaps(split.answer) else None
