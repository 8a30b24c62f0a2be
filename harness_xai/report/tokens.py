"""Readable labels for stored tokens (pure Python, no I/O).

The store keeps each token decoded alone (``token_relevance.token``). With a byte-level BPE a
character of several UTF-8 bytes can be split over tokens; decoded alone each piece reads U+FFFD
("cr��me"). The report shows the character instead, without a tokenizer:

1. ``byte_groups`` — maximal runs of consecutive tokens that contain U+FFFD (the pieces of one or
   more split characters).
2. ``_resolve`` — the real text of a run: its pieces with every U+FFFD run turned into a pattern
   for 1…k non-ASCII characters (k = number of U+FFFD), anchored by the clean tokens just before
   and after it, searched in the texts the case stores (prompt, answers, generation). No match →
   the pieces are shown with a visible byte marker ``▯`` instead of U+FFFD.
3. ``visible`` — whitespace and control characters made visible: a token of spaces only as
   ``␣``, newline ``↵`` (the line still breaks), tab ``⇥``, other C0/DEL controls as their
   Unicode control pictures (U+2400…), an empty token as ``∅``.
4. ``display_tokens`` — per token: the label to show and the group it belongs to. The first
   token of a run carries the run's whole resolved text, the others an empty label (the page
   draws the run as one span whose hover lists every exact piece).
"""

from __future__ import annotations

import re
from typing import Iterable

FFFD = "\ufffd"
BYTE_MARK = "▯"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f]")


def visible(token: str | None) -> str:
    """Step 3: ``token`` with whitespace-only and control characters shown visibly."""
    if token is None or token == "":
        return "∅"
    if token.strip(" ") == "":
        return "␣" * len(token)
    out = _CONTROL.sub(lambda m: chr(0x2421) if m.group() == "\x7f" else chr(0x2400 + ord(m.group())),
                       token)
    out = out.replace("\r\n", "␍↵\n").replace("\r", "␍").replace("\n", "↵\n").replace("\t", "⇥\t")
    return out.replace(FFFD, BYTE_MARK)


def byte_groups(tokens: list[str | None]) -> list[tuple[int, int]]:
    """Step 1: [start, end) of each maximal run of tokens containing U+FFFD."""
    groups, i, n = [], 0, len(tokens)
    while i < n:
        if tokens[i] and FFFD in tokens[i]:
            j = i
            while j < n and tokens[j] and FFFD in tokens[j]:
                j += 1
            groups.append((i, j))
            i = j
        else:
            i += 1
    return groups


def _pattern(pieces: list[str]) -> str:
    out = []
    for part in re.split(f"({FFFD}+)", "".join(pieces)):
        if part.startswith(FFFD):
            out.append(f"[^\\x00-\\x7f]{{1,{len(part)}}}?")
        elif part:
            out.append(re.escape(part))
    return "".join(out)


def _resolve(tokens: list[str | None], start: int, end: int, texts: list[str]) -> str | None:
    """Step 2: the real text of tokens[start:end], or None when no stored text explains it."""
    before = "".join(t or "" for t in tokens[max(0, start - 3):start] if t and FFFD not in t)
    after = tokens[end] if end < len(tokens) and tokens[end] and FFFD not in tokens[end] else ""
    body = _pattern([t or "" for t in tokens[start:end]])
    for anchors in ((before, after), ("", after), (before, ""), ("", "")):
        if anchors == ("", "") and not re.search(r"[^\ufffd\s]", "".join(tokens[start:end])):
            # bare byte pieces with no anchor would match any non-ASCII text
            break
        regex = re.compile(re.escape(anchors[0]) + f"({body})" + (
            f"(?={re.escape(anchors[1])})" if anchors[1] else ""))
        for text in texts:
            m = regex.search(text)
            if m:
                return m.group(1)
    return None


def resolve_tokens(tokens: list[str | None], texts: Iterable[str | None]
                   ) -> tuple[list[str | None], list[int]]:
    """Steps 1–2: (text per token with each byte-piece run's real text on its first token, ""
    on the others and None on all when unresolved; group id per token: index of the run's
    first token)."""
    haystack = [t for t in texts if t]
    real: list[str | None] = list(tokens)
    group = list(range(len(tokens)))
    for start, end in byte_groups(tokens):
        found = _resolve(tokens, start, end, haystack)
        for k in range(start, end):
            group[k] = start
            real[k] = None if found is None else (found if k == start else "")
    return real, group


def labels_of(tokens: list[str | None], real: list[str | None], group: list[int]) -> list[str]:
    """Step 4 from ``resolve_tokens``' output: the label to show per token."""
    labels = [visible(t) for t in tokens]
    for k, g in enumerate(group):
        if g != k:
            labels[k] = ""
        elif tokens[k] and FFFD in tokens[k]:  # the first piece of a run
            end = k + 1
            while end < len(group) and group[end] == k:
                end += 1
            labels[k] = visible(real[k] if real[k] is not None
                                else "".join(t or "" for t in tokens[k:end]))
    return labels


def display_tokens(tokens: list[str | None], texts: Iterable[str | None]) -> tuple[list[str], list[int]]:
    """Step 4: (label per token, group id per token: index of the run's first token)."""
    real, group = resolve_tokens(tokens, texts)
    return labels_of(tokens, real, group), group
