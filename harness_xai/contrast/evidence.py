"""Evidence positions: which attributed input tokens hold the evidence the answer needs.

A task may record, per doc, where the evidence sits: ``evidence_span`` = ``[start, end]`` (or a
list of such pairs), character offsets into the doc's prompt text as ``doc_to_text`` returns it
(the bundled ``xai_kv`` docs: the queried record's value). Any task whose docs carry the field
gets ``Case.evidence_positions``; other tasks get ``[]``.

Algorithm (``evidence_positions``):
1. Read the spans; malformed values (not integer pairs with 0 <= start < end <= len(text))
   give no evidence. ``text = task.doc_to_text(doc)`` must be a string (multiple-input tasks,
   whose ``doc_to_text`` is an index, get none).
2. Locate the current doc's text in the context string: its LAST occurrence (instruction and
   few-shot demonstrations come before the current question; a demo holding the same text is
   therefore never picked). Templates may trim the text: then the stripped text is searched and
   the spans are shifted by the removed leading whitespace.
3. Character spans of the context tokens (``segments._token_spans``: the tokenizer's offsets of
   the scored ids, which may be a left-truncated suffix of the context's encoding).
4. A token is evidence iff its span overlaps a non-whitespace character of an evidence span
   (" 73" overlaps the value "73"). Positions are shifted into the attributed input
   (``token_ids = ids[offset:…]``) and kept if they fall inside it.
Errors never lose a finished evaluation: any failure gives ``[]``.

Long-context benchmark docs carry no ``evidence_span``: RULER's needles and babilong's supporting
fact are found as context sentences (``answer.needle_spans``) and mapped by steps 3–4
(``sentence_positions``); the evidence there is the whole sentence.
"""

from __future__ import annotations

from collections.abc import Sequence

from harness_xai.contrast import segments as seg

FIELD = "evidence_span"


def doc_spans(doc: dict, text_length: int) -> list[tuple[int, int]]:
    """Step 1: the doc's evidence spans as (start, end) pairs inside ``[0, text_length]``."""
    raw = doc.get(FIELD) if isinstance(doc, dict) else None
    if raw is None:
        return []
    pairs = [raw] if _is_pair(raw) else list(raw) if isinstance(raw, (list, tuple)) else []
    spans = []
    for pair in pairs:
        if not _is_pair(pair):
            return []
        s, e = int(pair[0]), int(pair[1])
        if not 0 <= s < e <= text_length:
            return []
        spans.append((s, e))
    return spans


def _is_pair(value) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value))


def locate_text(context: str, text: str) -> int | None:
    """Step 2: offset in ``context`` of character 0 of ``text`` (its last occurrence)."""
    if text and (at := context.rfind(text)) >= 0:
        return at
    stripped = text.strip()
    if stripped and (at := context.rfind(stripped)) >= 0:
        return at - (len(text) - len(text.lstrip()))
    return None


def span_positions(tokenizer, context: str, ctx_ids: Sequence[int],
                   spans: list[tuple[int, int]]) -> list[int]:
    """Steps 3–4 on context character spans: indices into ``ctx_ids`` of the evidence tokens."""
    wanted = {i for s, e in spans for i in range(max(s, 0), min(e, len(context)))
              if not context[i].isspace()}
    if not wanted:
        return []
    token_spans = seg._token_spans(tokenizer, context, list(ctx_ids))
    return [k for k, span in enumerate(token_spans)
            if span is not None and any(i in wanted for i in range(span[0], span[1]))]


def evidence_positions(tokenizer, task, doc: dict, context: str, ctx_ids: Sequence[int],
                       offset: int = 0, n_input: int | None = None) -> list[int]:
    """Evidence positions in the attributed input ``ids[offset:offset + n_input]`` whose first
    ``len(ctx_ids)`` ids are the encoding of ``context`` (module docstring)."""
    try:
        if not isinstance(doc, dict) or FIELD not in doc or not context:
            return []
        text = task.doc_to_text(doc)
        if not isinstance(text, str):
            return []
        spans = doc_spans(doc, len(text))
        at = locate_text(context, text) if spans else None
        if at is None:
            return []
        found = span_positions(tokenizer, context, ctx_ids, [(at + s, at + e) for s, e in spans])
        limit = len(ctx_ids) - offset if n_input is None else n_input
        return [k - offset for k in found if 0 <= k - offset < limit]
    except Exception:  # evidence must never lose a finished evaluation
        return []


def sentence_positions(tokenizer, context: str, ctx_ids: Sequence[int],
                       spans: list[tuple[int, int]], offset: int = 0,
                       n_input: int | None = None) -> list[int]:
    """Steps 3–4 for evidence given as context character spans (RULER needles, babilong facts):
    positions in the attributed input ``ids[offset:offset + n_input]``."""
    try:
        found = span_positions(tokenizer, context, ctx_ids, spans)
        limit = len(ctx_ids) - offset if n_input is None else n_input
        return [k - offset for k in found if 0 <= k - offset < limit]
    except Exception:  # evidence must never lose a finished evaluation
        return []
