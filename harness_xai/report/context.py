"""What a failure page says about the input beyond its tokens (pure Python, no I/O).

``cases.method_params`` (JSON) records how the contrast was built under ``"contrast"``; from it
and the stored tokens:

1. ``contrast_notes`` — the ``"contrast"`` object ({} when absent or unreadable).
2. ``truncation`` — lm-eval's left truncation: ``truncated_tokens`` tokens of the scored sequence
   did not fit ``max_length`` and were cut. The cut text is the stored prompt minus the text of
   the kept context tokens (found by aligning their end with the prompt's end); the segment the
   kept input starts in says which demos/parts were lost.
3. ``choice_options`` — multiple-input tasks (Winogrande): the two contexts differ only where
   the option is filled in; the options are the differing middles of the predicted context
   (``cases.prompt``) and the gold context (``gold_context``), widened to whole words.
4. ``generation`` — generation tasks: the model's generated text as far as the explanation
   goes (the ``generated`` tokens, then the explained wrong token), and the full raw generation
   when the case recorded it (``generation``; bytes that are not valid UTF-8 on their own,
   U+FFFD in the decoded text, shown as ``▯``).
"""

from __future__ import annotations

import json
from typing import Any

from harness_xai.report.tokens import BYTE_MARK, FFFD

CONTEXT_SEGMENTS = {"special", "instruction", "fewshot", "question", "option", None}
#: the model's own generated tokens (a thinking model's: reasoning, markers, answer)
GENERATED_SEGMENTS = {"generated", "reasoning", "think-marker", "answer"}


def contrast_notes(method_params: str | None) -> dict[str, Any]:
    """Step 1."""
    try:
        params = json.loads(method_params) if method_params else {}
    except (TypeError, ValueError):
        return {}
    notes = params.get("contrast") if isinstance(params, dict) else None
    return notes if isinstance(notes, dict) else {}


def truncation(prompt: str | None, notes: dict[str, Any], real: list[str | None],
               segments: list[str | None], start_label: str) -> dict[str, Any] | None:
    """Step 2: {"n_tokens", "text" (None when it cannot be aligned), "starts_in"} or None.
    ``real``: each token's text with byte pieces resolved (``tokens.resolve_tokens``; None for
    pieces no stored text explains — a character cut in half by the truncation)."""
    n = notes.get("truncated_tokens")
    if not isinstance(n, int) or n <= 0:
        return None
    context = [t for t, s in zip(real, segments) if s in CONTEXT_SEGMENTS and s != "special"]
    while context and context[0] in (None, ""):  # pieces of a character the cut split
        context.pop(0)
    cut = None
    if context and None not in context:
        body, tail = (prompt or "").rstrip(), "".join(context).rstrip()
        if tail and body.endswith(tail):
            cut = body[: len(body) - len(tail)]
    return {"n_tokens": n, "text": cut, "starts_in": start_label or "—"}


def _word_start(text: str, i: int) -> int:
    while i > 0 and not text[i - 1].isspace():
        i -= 1
    return i


def _word_end(text: str, j: int) -> int:
    while j < len(text) and not text[j].isspace() and text[j] not in ".,;:!?":
        j += 1
    return j


def choice_options(pred_context: str | None, notes: dict[str, Any]) -> tuple[str, str] | None:
    """Step 3: (predicted option, gold option) or None for single-context tasks."""
    gold_context = notes.get("gold_context")
    if not isinstance(gold_context, str) or not pred_context or gold_context == pred_context:
        return None
    a, b = pred_context, gold_context
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    j = 0
    while j < min(len(a), len(b)) - i and a[len(a) - 1 - j] == b[len(b) - 1 - j]:
        j += 1
    i = min(_word_start(a, i), _word_start(b, i))
    ea, eb = _word_end(a, len(a) - j), _word_end(b, len(b) - j)
    return a[i:ea].strip(), b[i:eb].strip()


def generation(notes: dict[str, Any], labels: list[str], segments: list[str | None],
               wrong_token: str | None) -> dict[str, Any] | None:
    """Step 4: {"prefix": generated text before the explained token, "wrong": that token,
    "raw": the full generation or None}; None when the input has no generated tokens and no
    generation was recorded."""
    prefix = "".join(label for label, s in zip(labels, segments) if s in GENERATED_SEGMENTS)
    raw = notes.get("generation") if isinstance(notes.get("generation"), str) else None
    if raw is not None:  # bytes the model emitted that are not valid UTF-8 on their own
        raw = raw.replace(FFFD, BYTE_MARK)
    if not prefix and raw is None and "generated_prefix" not in notes:
        return None
    return {"prefix": prefix, "wrong": wrong_token, "raw": raw}


#: contrast rule → what the gold side of the case is (the case page's label)
GOLD_KINDS = {
    "instruction-repair:full-target": "compliant edit (the closest response the task's "
                                      "instruction checks accept)",
    "reference-solution:full-target": "reference solution (passes the unit tests)",
    "invalid-extraction:full-target": "gold answer (the full target: no answer was extracted)",
    "first-error:rollout": "alternative that scored correct (rollout)",
}


def gold_kind(notes: dict[str, Any]) -> str:
    """The case page's label for the gold side (``GOLD_KINDS``; "gold answer" otherwise)."""
    return GOLD_KINDS.get(notes.get("rule"), "gold answer")


def instruction_repair(notes: dict[str, Any]) -> dict[str, Any] | None:
    """The IFEval line of the case page: the failed instructions and how the compliant edit
    (the gold side) was chosen; None for other rules."""
    info = notes.get("repair")
    if notes.get("rule") != "instruction-repair:full-target" or not isinstance(info, dict):
        return None
    return {"failed": [str(i) for i in info.get("failed", [])], "edits": info.get("edits"),
            "near_ties": info.get("near_ties", 0), "scored": info.get("verified")}
