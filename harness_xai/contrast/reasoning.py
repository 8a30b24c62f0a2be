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
    if end < 0:  # lm-eval scores the whole text (lstripped) when no think_end is found
        reasoning = (start, len(text)) if markers else None
        lead = len(text) - len(text.lstrip())
        split = ReasoningSplit(reasoning, (lead, len(text)), tuple(markers), False)
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


# --- labels of a thinking model's generated tokens (records.SEGMENTS) ----------------------------

#: ``records.SEGMENTS`` label of each part
SEGMENT_OF = {REASONING: "reasoning", MARKER: "think-marker", ANSWER: "answer"}


@dataclass(frozen=True)
class GeneratedSegments:
    """Segments of one raw generation (``generated_segments``)."""

    text: str  # decode of every generated id (the raw generation, reasoning included)
    labels: tuple[tuple[str, int | None], ...]  # (n_gen,) (segment, reasoning step or None)
    steps: tuple[str, ...]  # text of each reasoning step
    answer_start: int  # character where the text lm-eval scores starts (after lstrip)
    closed: bool  # the model closed its reasoning (a think_end was found)

    def notes(self, think_end: str | int) -> dict:
        """What a case records about it (``method_params["contrast"]["thinking"]``)."""
        return {"think_end_token": think_end, "closed": self.closed, "steps": list(self.steps),
                "answer_start": self.answer_start,
                "n_reasoning_tokens": sum(lab == "reasoning" for lab, _ in self.labels)}


def generated_segments(decode, ids: Sequence[int], think_end: str | int,
                       think_start: str | None = "<think>", steps: str = "sentence",
                       prefixes: Sequence[str] | None = None) -> GeneratedSegments:
    """Label each generated token ``reasoning`` (with its step index) / ``think-marker`` /
    ``answer`` as lm-eval's HFLM scores the generation for ``think_end_token=think_end``:

    1. text = ``decode(ids)``; token k covers characters ``[len(decode(ids[:k])),
       len(decode(ids[:k+1])))`` (``prefixes``: those decodings, when the caller has them).
    2. A string ``think_end``: ``split_reasoning`` on the text (answer after its last occurrence).
       An integer one: reasoning = tokens before its last occurrence, that token the marker, the
       answer from the first non-space character after it (lm-eval decodes and lstrips them).
    3. A token takes its part by character overlap (``token_labels``); a token with no part
       (whitespace between parts) joins the part before it; a reasoning token between steps
       joins the step before it (the first step when none is before), so every reasoning token
       has a step and per-step sums add up to the reasoning's sum.
    Unclosed thinking (no ``think_end``): lm-eval scores the whole text; an opened trace
    (``think_start`` present) is still labelled reasoning, a text without one is all answer.
    This is also what the rollout path calls for a generated prefix it makes a case input of.
    """
    ids = list(ids)
    prefixes = list(prefixes) if prefixes is not None else \
        [decode(ids[:k]) for k in range(len(ids) + 1)]
    text, bounds = prefixes[-1], [len(p) for p in prefixes]
    forced = None
    if isinstance(think_end, str):
        split = split_reasoning(text, think_end, think_start, steps)
    else:
        split, forced = _split_by_id(text, ids, bounds, int(think_end), think_start, steps)
    labels: list[tuple[str, int | None]] = []
    for k in range(len(ids)):
        s, e = bounds[k], max(bounds[k + 1], bounds[k] + 1)
        part = MARKER if k == forced else _label(split, s, e)
        step = next((i for i, (a, b) in enumerate(split.steps) if s < b and e > a), None) \
            if part == REASONING else None
        if part is None:  # whitespace between parts joins the part before it
            part = next((p for p in (_part(lab) for lab, _ in reversed(labels)) if p), None) \
                or (REASONING if split.reasoning else ANSWER)
        if part == REASONING and step is None and split.steps:
            step = next((st for lab, st in reversed(labels) if st is not None), 0)
        labels.append((SEGMENT_OF[part], step if part == REASONING else None))
    return GeneratedSegments(text, tuple(labels), tuple(text[a:b] for a, b in split.steps),
                             split.answer[0], split.closed)


def generated_labels(lm, ids: Sequence[int], prefixes: Sequence[str] | None = None,
                     steps: str = "sentence") -> list[tuple[str, int | None]]:
    """Segment labels (``records.SEGMENTS``) of the generated ``ids`` that become part of a case
    input: ``generated`` for every token when the HFLM has no ``think_end_token``, else
    ``generated_segments`` (reasoning step / think-marker / answer). For any builder that puts
    the model's own generated prefix into a case (the first-error rollouts as well)."""
    think_end = getattr(lm, "think_end_token", None)
    if think_end is None:
        return [("generated", None)] * len(ids)
    return list(generated_segments(lm.tok_decode, ids, think_end, prefixes=prefixes,
                                   steps=steps).labels)


def _part(segment: str) -> str | None:
    return next((p for p, s in SEGMENT_OF.items() if s == segment), None)


def _split_by_id(text: str, ids: list[int], bounds: list[int], think_end: int,
                 think_start: str | None, by: str) -> tuple[ReasoningSplit, int | None]:
    """Step 2 for an integer ``think_end``: the split, and the index of the marker token."""
    span, _ = split_reasoning_ids(ids, think_end)
    if span is None:  # unclosed: the string rule without an end finds an opened trace, if any
        return split_reasoning(text, "", think_start, by), None
    last = span[1]
    end, after = bounds[last], bounds[last + 1]
    opened = text.find(think_start, 0, end) if think_start else -1
    markers = [(opened, opened + len(think_start))] if opened >= 0 else []
    start = opened + len(think_start) if opened >= 0 else 0
    rest = text[after:]
    answer = (after + len(rest) - len(rest.lstrip()), len(text))
    markers.append((end, after))
    return ReasoningSplit((start, end), answer, tuple(markers), True,
                          reasoning_steps(text, (start, end), by)), last


def scored_text_view(parts: GeneratedSegments, scored: str) -> str | None:
    """The raw generation up to the end of what lm-eval scored: ``text[:answer_start] + scored``
    when the post-processed response ``scored`` (logged ``resps``: the answer, stop sequences
    cut) starts at ``answer_start``; None when it does not (the answer cannot be placed)."""
    if not parts.text.startswith(scored, parts.answer_start):
        return None
    return parts.text[: parts.answer_start] + scored
