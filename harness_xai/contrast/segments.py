"""Segment label of every input token: which part of lm-eval's prompt it came from.

Labels (``records.SEGMENTS``): ``instruction`` (system instruction, task description),
``fewshot`` (demonstration j: its question and answer), ``question`` (the current document's
text, generation prefix), ``option`` (answer option i written inside the question, or the option
filled into a multiple-input context), ``continuation`` (tokens of the scored continuation before
the contrast position), ``generated`` (the model's own generated prefix), ``special`` (BOS /
prefix token, tokenizer special tokens, chat-template markup). A thinking model's generated
prefix (HFLM ``think_end_token``) is ``reasoning`` (index: the reasoning step), ``think-marker``
(``<think>`` / ``</think>``) and ``answer`` instead of ``generated`` (``contrast.reasoning``).

Algorithm for a context string (multiple-input tasks: the option is the part of the choice's
context that differs from the other choices, widened to whole words):
1. Pieces, in prompt order, rebuilt with lm-eval's own task methods from the ``PromptRecord`` of
   that context (``harness.prompts``): system instruction, description, for each few-shot doc
   ``doc_to_text`` and the answer ``build_qa_turn`` writes, the current ``doc_to_text`` and the
   generation prefix.
2. Each piece is searched in the context from the end of the previous one (exact text, then
   stripped); a found piece labels its characters.
3. Options inside the question: a list of strings (``doc_to_choice`` or a list-valued doc field)
   whose every item is found in order, each filling the rest of a line after a label of at most
   5 characters ("A. ", "(b) "); the longest such list wins, each line is labelled ``option i``.
4. Unlabelled characters: a whitespace-only run joins the piece before it (delimiters); any other
   run is template markup → ``special``.
5. Tokens get character spans from the tokenizer's offsets mapping (the encoding must reproduce
   the scored ids; otherwise spans come from incremental decoding). A token takes the label of
   its first non-whitespace character; special-token ids and empty spans are ``special``.
Without a record (e.g. lm-eval's request cache was used) the few-shot region is the text between
the instruction and the last occurrence of the current question, labelled ``fewshot`` with index
``None``.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness_xai.contrast.scoring import common_prefix
from harness_xai.lmeval_hook.prompts import PromptRecord

Label = tuple[str, "int | None"]
SPECIAL: Label = ("special", None)


@dataclass
class Piece:
    text: str
    label: str
    index: int | None = None


def prompt_pieces(task, record: PromptRecord) -> list[Piece]:
    """Step 1: the texts lm-eval joined into the context, in order."""
    from lm_eval.api.utils import maybe_delimit

    doc = record.doc
    pieces: list[Piece] = []
    if record.system_instruction:
        pieces.append(Piece(record.system_instruction, "instruction"))
    description = task.resolve_field(doc, task.config.description) or ""
    if description:
        pieces.append(Piece(description, "instruction"))
    fs_cfg = task.fewshot_cfg
    for j, fs_doc in enumerate(record.fewshot_docs or []):
        q = task.doc_to_text(fs_doc, fs_cfg.doc_to_text)
        c = task.doc_to_choice(fs_doc, fs_cfg.doc_to_choice) if fs_cfg.doc_to_choice else None
        a = task.doc_to_target(fs_doc, fs_cfg.doc_to_target)
        if task.multiple_input:
            q, c = c[q], None
        if isinstance(q, str):
            pieces.append(Piece(q, "fewshot", j))
        if a is not None and a != "":
            answer = c[a] if (c and isinstance(a, int)) else a[0] if isinstance(a, list) else a
            gen_prefix = task.resolve_field(fs_doc, fs_cfg.gen_prefix)
            if isinstance(answer, str):
                pieces.append(Piece(maybe_delimit(gen_prefix, answer, delimiter=" "), "fewshot", j))
    return pieces


def context_labels(task, context: str, record: PromptRecord | None, doc: dict,
                   choice_index: int | None = None) -> list[Label]:
    """(label, index) for every character of ``context`` (steps 1–4)."""
    labels: list[Label | None] = [None] * len(context)
    if record is not None:
        pieces = prompt_pieces(task, record)
        gen_prefix = record.gen_prefix
    else:
        description = task.resolve_field(doc, task.config.description) or ""
        pieces = [Piece(description, "instruction")] if description else []
        gen_prefix = task.doc_to_prefix(doc)
    cursor = 0
    for piece in pieces:
        cursor = _place(context, piece, cursor, labels)
    question, options = _current_question(task, doc, choice_index)
    start = None
    for text in dict.fromkeys((question, (question or "").strip())):  # templates may trim
        if text:
            # without a record the demos are unknown: the question is its last occurrence
            at = context.rfind(text, cursor) if record is None else context.find(text, cursor)
            if at >= 0:
                question, start = text, at
                break
    if start is not None:
        if record is None:  # the text between the instruction and the question: demos
            for i in range(cursor, start):
                if not context[i].isspace():
                    labels[i] = ("fewshot", None)
        end = start + len(question)
        for i in range(start, end):
            labels[i] = ("question", None)
        for (s, e), index in options(context, start, end):
            for i in range(s, e):
                labels[i] = ("option", index)
        cursor = end
    if gen_prefix:
        cursor = _place(context, Piece(gen_prefix, "question"), cursor, labels)
    return _fill_gaps(context, labels)


def token_labels(tokenizer, text: str, ids: list[int], char_labels: list[Label]) -> list[Label]:
    """Step 5: one label per token of ``ids``, the tokenization of (a suffix of) ``text`` or of
    ``text`` without its trailing whitespace (lm-eval moves it into the continuation)."""
    spans = _token_spans(tokenizer, text, ids)
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    out: list[Label] = []
    for tok, span in zip(ids, spans):
        if tok in special_ids or span is None or span[0] >= span[1]:
            out.append(SPECIAL)
            continue
        s, e = span
        chars = [i for i in range(s, min(e, len(text))) if not text[i].isspace()] or [s]
        out.append(char_labels[chars[0]] if chars[0] < len(char_labels) else SPECIAL)
    return out


def split(labels: list[Label]) -> tuple[list[str], list[int | None]]:
    return [lab for lab, _ in labels], [idx for _, idx in labels]


# --- helpers -------------------------------------------------------------------------------

def _find(context: str, text: str, cursor: int) -> int | None:
    at = context.find(text, cursor)
    return at if at >= 0 else None


def _place(context: str, piece: Piece, cursor: int, labels: list) -> int:
    for text in (piece.text, piece.text.strip()):
        if not text:
            continue
        at = _find(context, text, cursor)
        if at is not None:
            for i in range(at, at + len(text)):
                labels[i] = (piece.label, piece.index)
            return at + len(text)
    return cursor


def _current_question(task, doc: dict, choice_index: int | None):
    """The current document's question text and a function locating its options."""
    text = task.doc_to_text(doc)
    if task.multiple_input:  # the question is the choice's own context; its option is the tail
        contexts = task.doc_to_choice(doc)
        index = choice_index if choice_index is not None else text
        question = contexts[index]
        common = min((common_prefix(question, other) for k, other in enumerate(contexts)
                      if k != index), default=len(question))
        if 0 < common < len(question) and not question[common - 1].isspace():
            common = max(question.rfind(" ", 0, common) + 1, 0)  # whole words: "Ju|stin"
        return question, lambda ctx, s, e: [((s + common, e), index)] if common < e - s else []
    if not isinstance(text, str):
        return None, None
    lists = _option_lists(task, doc)
    return text, lambda ctx, s, e: _locate_options(ctx, s, e, lists)


def _option_lists(task, doc: dict) -> list[list[str]]:
    lists = []
    if task.config.doc_to_choice is not None:
        try:
            lists.append(list(task.doc_to_choice(doc)))
        except Exception:
            pass
    values = list(doc.values()) if isinstance(doc, dict) else []
    for value in values:
        for candidate in ([value] + (list(value.values()) if isinstance(value, dict) else [])):
            if isinstance(candidate, list) and len(candidate) >= 2 and all(
                    isinstance(x, str) and x.strip() for x in candidate):
                lists.append(candidate)
    return lists


def _locate_options(context: str, start: int, end: int, lists: list[list[str]]
                    ) -> list[tuple[tuple[int, int], int]]:
    best: list[tuple[tuple[int, int], int]] = []
    best_size = 0
    for options in lists:
        spans, cursor = [], start
        for i, option in enumerate(options):
            at = context.find(option, cursor, end)
            line = max(context.rfind("\n", start, at) + 1, start) if at >= 0 else start
            stop = context.find("\n", at + len(option), end) if at >= 0 else -1
            rest = context[at + len(option): stop if stop >= 0 else end]
            if at < 0 or at - line > 5 or rest.strip():
                spans = None
                break
            spans.append(((line, at + len(option)), i))
            cursor = at + len(option)
        size = sum(e - s for (s, e), _ in spans) if spans else 0
        if spans and size > best_size:
            best, best_size = spans, size
    return best


def _fill_gaps(context: str, labels: list[Label | None]) -> list[Label]:
    out: list[Label] = []
    i, n = 0, len(context)
    while i < n:
        if labels[i] is not None:
            out.append(labels[i])
            i += 1
            continue
        j = i
        while j < n and labels[j] is None:
            j += 1
        run = context[i:j]
        if run.isspace():
            before = out[-1] if out else (labels[j] if j < n else None)
            fill = before or SPECIAL
        else:
            fill = SPECIAL
        out.extend([fill] * (j - i))
        i = j
    return out


def _token_spans(tokenizer, text: str, ids: list[int]) -> list[tuple[int, int] | None]:
    """Character span of each token of ``ids`` in ``text`` (``ids`` may be a left-truncated
    suffix of the full tokenization)."""
    for candidate in dict.fromkeys((text, text.rstrip())):
        for add_special in (False, True):
            try:
                enc = tokenizer(candidate, add_special_tokens=add_special,
                                return_offsets_mapping=True)
            except (NotImplementedError, TypeError, ValueError):
                break
            full, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
            if len(full) >= len(ids) and full[len(full) - len(ids):] == list(ids):
                return [tuple(o) for o in offsets[len(full) - len(ids):]]
    return _decode_spans(tokenizer, text, ids)


def _decode_spans(tokenizer, text: str, ids: list[int]) -> list[tuple[int, int] | None]:
    """Fallback: spans by incremental decoding, aligned to the end of ``text``."""
    decoded = tokenizer.decode(ids, skip_special_tokens=False)
    body = text if text.endswith(decoded) else text.rstrip()
    base = len(body) - len(decoded) if body.endswith(decoded) else None
    spans: list[tuple[int, int] | None] = []
    prev = 0
    for k in range(1, len(ids) + 1):
        cur = len(tokenizer.decode(ids[:k], skip_special_tokens=False))
        spans.append(None if base is None else (base + prev, base + cur))
        prev = cur
    return spans
