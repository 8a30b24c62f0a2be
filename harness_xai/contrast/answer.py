"""Where the answer is (issue #14, item 0): in the generation, in tokens, and in the context.

- ``answer_span``: the characters of a generation that the task's own scoring reads. Filters are
  followed step by step (``regex`` with its ``group_select`` and group rules, ``take_first``,
  ``remove_whitespace``, case changes; ``custom`` keeps the whole text), then the extraction a
  task does inside ``process_results`` (registered per function: MATH's "Final Answer: … I hope
  it is correct." through the task module's own ``get_unnormalized_answer``, babilong's and RULER's
  case-insensitive substring match, IFEval's checks over the whole response).
- ``gold_tokens`` / ``gold_at``: the gold answer tokenized as the model would have continued,
  through the HFLM instance's ``_encode_pair`` (target delimiter, trailing context spaces moved to
  the continuation: " 12", never "12"). DESIGN 2.3.
- ``generation_truncation`` / ``loglikelihood_truncation``: how many context tokens lm-eval cut
  (left truncation to ``max_length - max_gen_toks``, or ``(ctx+cont)[-(max_length+1):][:-1]``)
  and which given evidence character spans of the context survived.
"""

from __future__ import annotations

import re

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

#: reasons an answer is not located
NO_MATCH, UNKNOWN_FILTER, UNKNOWN_EXTRACTION = "filter_no_match", "unknown_filter", "unknown_extraction"


@dataclass(frozen=True)
class AnswerSpan:
    """``text[start:end]`` is what the task scored; ``found`` False when its extraction failed."""

    start: int
    end: int
    text: str
    how: str  # e.g. "regex:answer is \(?([A-J])\)?", "minerva_final_answer", "whole"
    found: bool = True
    reason: str | None = None


@dataclass(frozen=True)
class GoldTokens:
    context_ids: tuple[int, ...]  # as lm-eval encodes the context (before the answer)
    ids: tuple[int, ...]  # the gold continuation, as the model would have produced it
    text: str  # the continuation text (with its delimiter / moved spaces)


@dataclass(frozen=True)
class Truncation:
    total: int  # context tokens before truncation
    kept: int  # context tokens the model saw
    cut: int  # tokens cut from the left
    cut_chars: int  # characters of the context before the first kept token
    evidence_kept: tuple[bool, ...] = ()  # per given evidence span: entirely after the cut


# --- the answer in the generation ---------------------------------------------------------------

#: extraction done inside process_results, by "<dir>/<file>:<function>" under lm_eval/tasks
Locator = Callable[[Callable, dict, str], AnswerSpan]
LOCATORS: dict[str, Locator] = {}


def register_locator(key: str, locator: Locator | None = None, overwrite: bool = False):
    """Register how a ``process_results`` function finds its answer (usable as a decorator)."""
    def add(fn: Locator) -> Locator:
        if key in LOCATORS and not overwrite:
            raise ValueError(f"answer locator {key!r} is already registered (overwrite=True replaces it)")
        LOCATORS[key] = fn
        return fn
    return add(locator) if locator is not None else add


def get_locator(key: str) -> Locator:
    if key not in LOCATORS:
        close = difflib.get_close_matches(key, LOCATORS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise KeyError(f"no answer locator {key!r}; {hint}supported: {', '.join(sorted(LOCATORS))}")
    return LOCATORS[key]


def locator_key(fn: Callable) -> str:
    """``minerva_math/utils.py:process_results`` for a function defined under lm_eval/tasks."""
    path = Path(fn.__code__.co_filename).resolve()
    parts = path.parts
    tail = parts[parts.index("tasks") + 1:] if "tasks" in parts else parts[-1:]
    return f"{'/'.join(tail)}:{fn.__name__}"


def answer_span(task, doc: dict, generation: str, filter_name: str | None = None) -> AnswerSpan:
    """The part of ``generation`` the task scores for ``doc`` under filter ``filter_name``."""
    span = _filtered_span(task, generation, filter_name)
    scorer = getattr(task.config, "process_results", None)
    if not callable(scorer) or not span.found:
        return span
    inner_text = generation[span.start:span.end]
    try:
        inner = get_locator(locator_key(scorer))(scorer, doc, inner_text)
    except KeyError:
        return AnswerSpan(span.start, span.end, span.text, span.how, True, UNKNOWN_EXTRACTION)
    return AnswerSpan(span.start + inner.start, span.start + inner.end, inner.text,
                      f"{span.how}+{inner.how}" if span.how != "whole" else inner.how,
                      inner.found, inner.reason)


def _filtered_span(task, text: str, filter_name: str | None) -> AnswerSpan:
    ensembles = {e.name: e for e in getattr(task, "_filters", None) or ()}
    ensemble = ensembles.get(filter_name) if filter_name else next(iter(ensembles.values()), None)
    start, end, how = 0, len(text), []
    for make in (ensemble.filters if ensemble else ()):
        step = make()
        kind = type(step).__name__
        if kind in ("TakeFirstFilter", "LowercaseFilter", "UppercaseFilter"):
            continue
        if kind == "WhitespaceFilter":
            start += len(text[start:end]) - len(text[start:end].lstrip(" "))
            continue
        if kind == "CustomFilter":
            how.append("custom")
            continue
        if kind == "RegexFilter":
            located = _regex_span(step.regex, step.group_select, text[start:end])
            how.append(f"regex:{step.regex.pattern}")
            if located is None:
                return AnswerSpan(start, start, step.fallback, ";".join(how), False, NO_MATCH)
            start, end = start + located[0], start + located[1]
            continue
        return AnswerSpan(start, end, text[start:end], ";".join([*how, kind]), True, UNKNOWN_FILTER)
    return AnswerSpan(start, end, text[start:end], ";".join(how) or "whole")


def _regex_span(regex, group_select: int, text: str) -> tuple[int, int] | None:
    """The characters RegexFilter returns: findall()[group_select], first non-empty group, strip."""
    matches = list(regex.finditer(text))
    if not matches:
        return None
    m = matches[group_select]
    if regex.groups == 0:
        s, e = m.span()
    elif regex.groups == 1:
        s, e = m.span(1)
    else:
        groups = [i for i in range(1, regex.groups + 1) if m.group(i)]
        if not groups:
            return None
        s, e = m.span(groups[0])
    piece = text[s:e]
    return s + len(piece) - len(piece.lstrip()), e - len(piece) + len(piece.rstrip())


def _stripped(text: str, start: int, end: int) -> tuple[int, int]:
    piece = text[start:end]
    return start + len(piece) - len(piece.lstrip()), end - len(piece) + len(piece.rstrip())


@register_locator("minerva_math/utils.py:process_results")
def _minerva_final_answer(scorer, doc, text: str) -> AnswerSpan:
    """The task's own get_unnormalized_answer, located after the last "Final Answer:" marker."""
    extract = scorer.__globals__["get_unnormalized_answer"]
    answer = extract(text)
    marker = "Final Answer: The final answer is"
    at = text.find(marker)
    where = text.find(answer, at + len(marker)) if at >= 0 and answer else -1
    if where < 0:
        return AnswerSpan(0, 0, answer, "minerva_final_answer", False, NO_MATCH)
    return AnswerSpan(where, where + len(answer), answer, "minerva_final_answer")


def _substring(targets: list[str], text: str, how: str) -> AnswerSpan:
    """Case-insensitive substring match on the stripped text (babilong, RULER): first target found."""
    lowered = text.lower()
    for target in targets:
        at = lowered.find(target.strip().lower()) if target.strip() else -1
        if at >= 0:
            n = len(target.strip())
            return AnswerSpan(at, at + n, text[at:at + n], how)
    s, e = _stripped(text, 0, len(text))
    return AnswerSpan(s, e, text[s:e], how, False, NO_MATCH)


@register_locator("babilong/common_utils.py:process_results")
def _babilong(scorer, doc, text: str) -> AnswerSpan:
    return _substring([doc.get("target", "")], text, "substring")


@register_locator("ruler/common_utils.py:process_results")
@register_locator("ruler/common_utils.py:process_results_part")
def _ruler(scorer, doc, text: str) -> AnswerSpan:
    return _substring(list(doc.get("outputs") or ()), text, "substring")


@register_locator("ifeval/utils.py:process_results")
def _whole_response(scorer, doc, text: str) -> AnswerSpan:
    return AnswerSpan(0, len(text), text, "whole_response")


# --- gold tokens --------------------------------------------------------------------------------

def gold_tokens(lm, context: str, gold: str, delimiter: str = " ") -> GoldTokens:
    """``delimiter + gold`` encoded after ``context`` exactly as lm-eval scores a continuation."""
    ctx_ids, cont_ids = lm._encode_pair(context, delimiter + gold)
    return GoldTokens(tuple(ctx_ids), tuple(cont_ids), delimiter + gold)


def gold_at(lm, context: str, generation: str, span: AnswerSpan, gold: str) -> GoldTokens:
    """The gold answer in place of the model's, after the model's own text before the span."""
    return gold_tokens(lm, context + generation[:span.start], gold, delimiter="")


def gold_answers(task, doc: dict) -> list[str]:
    """The gold answer strings the task's scoring compares against."""
    for key in ("outputs",):  # RULER: every needle value
        if isinstance(doc.get(key), list):
            return [str(v) for v in doc[key]]
    if "answer" in doc and callable(getattr(task.config, "process_results", None)) \
            and locator_key(task.config.process_results).startswith("minerva_math/"):
        return [str(doc["answer"])]
    target = task.doc_to_target(doc)
    if isinstance(target, int) and getattr(task.config, "doc_to_choice", None):
        return [task.doc_to_choice(doc)[target]]
    return [str(t) for t in target] if isinstance(target, list) else [str(target)]


def token_span(tokenizer, ids, span: AnswerSpan) -> tuple[int, int]:
    """[first, last+1) of the generated ``ids`` whose decoded characters overlap the span."""
    bounds = [len(tokenizer.decode(list(ids[:k]))) for k in range(len(ids) + 1)]
    first = next((k for k in range(len(ids)) if bounds[k + 1] > span.start), len(ids))
    last = next((k for k in range(len(ids)) if bounds[k + 1] >= span.end), len(ids) - 1)
    return first, max(first, last + 1)


def needle_spans(doc: dict, context: str) -> tuple[tuple[int, int], ...]:
    """Evidence in a long-context prompt (character spans of whole sentences):

    - RULER: every sentence holding a value of the doc's ``outputs`` (the needles);
    - babilong (``target`` and ``question``): the supporting fact = the LAST sentence that states
      the target and names the question's subject (its capitalised words: "Where is Mary?" →
      "Mary"); when no sentence names the subject (multi-fact tasks), the last sentence stating
      the target. Last, because few-shot examples come before the doc's own text.
    Best effort: exact string search; nothing found → ()."""
    spans = []
    for value in [str(v) for v in doc.get("outputs") or () if str(v)]:
        at = context.find(value)
        while at >= 0:
            spans.append(_sentence(context, at, len(value)))
            at = context.find(value, at + 1)
    target = doc.get("target")
    if not spans and isinstance(target, str) and target.strip():
        value = target.strip()
        found = [_sentence(context, m.start(), len(value))
                 for m in re.finditer(re.escape(value), context)]
        subjects = _subjects(doc.get("question"))
        naming = [s for s in found if subjects and any(
            re.search(rf"\b{re.escape(w)}\b", context[s[0]:s[1]]) for w in subjects)]
        if naming or found:
            spans.append((naming or found)[-1])
    return tuple(sorted(set(spans)))


def _subjects(question) -> list[str]:
    """Capitalised words of a question except its first word ("Where is Mary?" → ["Mary"])."""
    if not isinstance(question, str):
        return []
    words = re.findall(r"\w+", question)
    return [w for w in words[1:] if w[:1].isupper()]


def _sentence(text: str, at: int, n: int) -> tuple[int, int]:
    dot, line = text.rfind(". ", 0, at), text.rfind("\n", 0, at)
    start = max(dot + 2 if dot >= 0 else 0, line + 1)
    stop = text.find(".", at + n)
    return start, (stop + 1 if stop >= 0 else at + n)


# --- left truncation ----------------------------------------------------------------------------

def generation_truncation(lm, context: str, max_gen_toks: int,
                          evidence: tuple[tuple[int, int], ...] = ()) -> Truncation:
    """generate_until keeps the last ``max_length - max_gen_toks`` context tokens (HFLM)."""
    ids = lm.tok_encode(context)
    return _truncation(lm, context, ids, lm.max_length - max_gen_toks, evidence)


def loglikelihood_truncation(lm, context: str, continuation: str,
                             evidence: tuple[tuple[int, int], ...] = ()) -> Truncation:
    """loglikelihood feeds ``(ctx+cont)[-(max_length+1):][:-1]``: context kept = what remains."""
    ctx_ids, cont_ids = lm._encode_pair(context, continuation)
    room = lm.max_length + 1 - len(cont_ids)
    return _truncation(lm, context, ctx_ids, max(room, 0), evidence)


def _truncation(lm, context: str, ids, room: int, evidence) -> Truncation:
    ids = list(ids)
    cut = max(len(ids) - room, 0)
    cut_chars = _chars_before(lm.tokenizer, context, ids, cut)
    kept = tuple(start >= cut_chars for start, _ in evidence)
    return Truncation(len(ids), len(ids) - cut, cut, cut_chars, kept)


def _chars_before(tokenizer, context: str, ids: list[int], cut: int) -> int:
    """Characters of ``context`` covered by the first ``cut`` tokens (special tokens excluded)."""
    if cut == 0:
        return 0
    if cut >= len(ids):
        return len(context)
    kept_text = tokenizer.decode(ids[cut:], skip_special_tokens=True)
    if context.endswith(kept_text):
        return len(context) - len(kept_text)
    prefix = tokenizer.decode(ids[:cut], skip_special_tokens=True)  # lossy tokenizers: best effort
    return min(len(prefix), len(context))
