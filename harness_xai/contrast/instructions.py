"""Compliant edits of a response that failed instruction checks (IFEval): the gold of rule
``instruction-repair:full-target``.

An instruction-following metric (``prompt_level_strict_acc`` …) compares no reference answer, so
there is no gold token. What the checks define instead is the set of compliant responses. The
gold is the compliant response closest to the model's own choice:

1. The failed instructions of the sample: the logged per-instruction flags
   (``inst_level_strict_acc`` / ``inst_level_loose_acc``, as the metric is strict or loose).
   One with no registered repair → skip ``no-repair:<instruction id, ':' as '.'>``; a repair
   that proposes nothing → ``no-edit:<id>``.
2. Each failed instruction's repair proposes edits of the scored response ``text``:
   an insertion at every generated-token boundary ``at`` (keywords, title, placeholders, P.S. …),
   a truncation at every boundary (``end_checker``: text[:p] + end phrase; "less than" N words or
   sentences: text[:p], after which the gold is the end of the response), or one rewrite
   (lowercase, no commas, JSON string, quotation marks). The other failed instructions are then
   repaired at the end of that edit, or where it starts (a keyword before an end phrase),
   whichever lm-eval's own checks of both accept, so the edits' union covers every position of
   every instruction without a product.
3. ``generation.generation_case`` writes each edit in the model's own tokens (the model's ids up to
   the last boundary the edit keeps, then the edit's tokenisation, then end-of-sequence: a repaired
   response is complete), orders the edits by Δ = logit[model token] − logit[edit token] at their
   first differing token (one forward), leaves out those below the near-tie floor (the model
   was indifferent there: not a decision to explain), and takes the first that the task's own filters,
   ``process_results`` and metric score correct (``rollouts.task_scorer``), verifying at most
   ``MAX_VERIFIED``; none → skip ``no-compliant-edit:<metric>``; a repair or the scoring that
   raises → ``repair-failed`` with the error. So the contrast is the token where
   the model came closest to a response its checks accept, and a response built there passes them.

Repairs are registered by instruction id like the other extension points
(``register_instruction_repair``; a taken id is refused unless ``overwrite=True``). Not repaired
(reasoned skip): ``language:response_language``, ``length_constraints:number_paragraphs``,
``length_constraints:nth_paragraph_first_word``, ``combination:two_responses`` — no edit of the
response's wording is small and generic enough to stand for "the model's alternative".
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from harness_xai.contrast.scoring import NEAR_TIE, common_prefix
from harness_xai.registry import Registry

#: repair(text, kwargs, at) -> candidate texts, earliest position first
Repair = Callable[[str, dict, Sequence[int]], list[str]]
INSTRUCTION_REPAIRS: Registry[Repair] = Registry(
    "instruction repair", "Register one with harness_xai.contrast.register_instruction_repair.")
#: edits scored by the task per case, in Δ order (each is one process_results call)
MAX_VERIFIED = 64
RULE = "instruction-repair:full-target"


def register_instruction_repair(instruction_id: str, repair: Repair, *,
                                overwrite: bool = False) -> Repair:
    """Use ``repair`` for failures of ``instruction_id`` (an IFEval ``instruction_id_list`` entry)."""
    return INSTRUCTION_REPAIRS.register(instruction_id, repair, overwrite=overwrite)


@dataclass(frozen=True)
class Edits:
    texts: tuple[str, ...]  # candidate compliant responses (unverified), deduplicated
    failed: tuple[str, ...]  # the failed instruction ids
    reason: str | None = None  # a skip reason when there is nothing to try
    error: str | None = None  # what raised, for ``repair-failed``

    def notes(self) -> dict:
        return {"failed": list(self.failed), "edits": len(self.texts),
                **({"error": self.error} if self.error else {})}


def is_instruction_doc(doc) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("instruction_id_list"), list) \
        and isinstance(doc.get("kwargs"), list)


def propose_edits(sample: dict, metric: str, text: str, dec: Sequence[str], full: str,
                  shift: int = 0) -> Edits:
    """Step 2 at the generated-token boundaries of the scored text ``text`` (``dec``: prefix
    decodings of the generated ids, ``full`` their whole decoding, ``shift``: where the scored
    text starts in it). A repair or check that raises (e.g. a doc whose kwargs lack an
    argument) gives the skip ``repair-failed`` with the error, never a lost run."""
    at = sorted({len(d) - shift for d in dec
                 if full.startswith(d) and shift <= len(d) <= shift + len(text)})
    try:
        return compliant_edits(sample, metric, text, at)
    except Exception as exc:  # a finished evaluation is never lost to one doc's arguments
        return Edits((), (), "repair-failed", f"{type(exc).__name__}: {exc}"[:300])


def own_tokens(lm, dec: Sequence[str], ids: Sequence[int], k: int, full: str):
    """Step 3: ``tokens(written)``, the tokens of ``written`` (the generation up to token k,
    then an edit) from token k on: the model's ids as far as their decoding is a prefix of it,
    the rest tokenised, then end-of-sequence (an edited response is complete). O(log n) per edit
    besides the tokenisation: the kept ids end at the last clean token boundary before the first
    character where ``written`` leaves ``full``."""
    eos = lm.eot_token_id
    stop = next((i for i in range(k, len(ids)) if ids[i] == eos), len(ids))  # ids[k:stop]: no EOS
    cuts = [i for i in range(k, stop + 1) if full.startswith(dec[i])]  # clean boundaries
    ends = [len(dec[i]) for i in cuts]  # non-decreasing

    def tokens(written: str) -> list[int]:
        i = cuts[max(0, bisect_right(ends, common_prefix(full, written)) - 1)]
        rest = written[len(dec[i]):]
        return list(ids[k:i]) + (lm.tok_encode(rest, add_special_tokens=False) if rest else []) + [eos]

    return tokens


def closest_accepted(ranked: Sequence[tuple[float, tuple]], score: Callable[[str], bool],
                     metric: str) -> tuple[tuple | None, dict, str | None]:
    """Step 3's choice: ``ranked`` = (Δ, (edit, edit ids, j)) smallest Δ first; the first edit
    with Δ ≥ ``NEAR_TIE`` that ``score`` (the task's own scoring) accepts, at most
    ``MAX_VERIFIED`` scored. Returns (option or None, notes, skip reason)."""
    decisive = [item for item in ranked if item[0] >= NEAR_TIE]
    tried = decisive[:MAX_VERIFIED]
    try:
        chosen = next((item for item in tried if score(item[1][0])), None)
    except Exception as exc:  # the task's scoring raised on an edit
        return None, {"error": f"{type(exc).__name__}: {exc}"[:300]}, "repair-failed"
    info = {"near_ties": len(ranked) - len(decisive),
            "verified": tried.index(chosen) + 1 if chosen else len(tried)}
    if not decisive:
        return None, info, "near-tie"
    if chosen is None:
        return None, info, f"no-compliant-edit:{metric}"
    return chosen[1], info, None


def compliant_edits(sample: dict, metric: str, text: str, at: Sequence[int]) -> Edits:
    """Steps 1–2 for one logged sample whose scored response is ``text``."""
    doc = sample["doc"]
    ids, kwargs = doc["instruction_id_list"], doc["kwargs"]
    flags = sample.get("inst_level_loose_acc" if "loose" in metric else "inst_level_strict_acc")
    if not isinstance(flags, list) or len(flags) != len(ids):
        flags = [False] * len(ids)  # unknown: every instruction is repaired (verified after)
    failed = [(iid, _arguments(kw)) for iid, kw, ok in zip(ids, kwargs, flags) if not ok]
    names = tuple(iid for iid, _ in failed)
    missing = [iid for iid in names if iid not in INSTRUCTION_REPAIRS]
    if missing:
        return Edits((), names, "no-repair:" + missing[0].replace(":", "."))
    out: dict[str, None] = {}
    checks = _Checks(doc)
    for i, (iid, args) in enumerate(failed):
        for edit in INSTRUCTION_REPAIRS[iid](text, args, at):
            for other, other_args in failed[:i] + failed[i + 1:]:
                edit = _also(edit, common_prefix(text, edit), (iid, args), (other, other_args),
                             checks)
                if edit is None:
                    break
            if edit is not None and edit != text:
                out[edit] = None
    if not names:
        return Edits((), names, "no-failed-instruction")
    return Edits(tuple(out), names, None if out else "no-edit:" + names[0].replace(":", "."))


def _also(edit: str, q: int, first: tuple, other: tuple, checks: "_Checks") -> str | None:
    """``edit`` (by instruction ``first``, changing the text from character q on) with ``other``
    repaired too: at the end of the edit, else at q (before what ``first`` wrote there; a keyword
    must precede an end phrase), whichever passes both instructions' checks."""
    options: list[str] = []
    for pos in (len(edit), q):
        got = INSTRUCTION_REPAIRS[other[0]](edit, other[1], [pos])
        if got and got[-1] not in options:
            options.append(got[-1])
    if len(options) < 2:
        return options[0] if options else None
    return next((o for o in options if checks(*first, o) and checks(*other, o)), options[0])


class _Checks:
    """lm-eval's own IFEval check of one instruction (True when the id is not lm-eval's)."""

    def __init__(self, doc: dict) -> None:
        self.prompt, self.built = doc.get("prompt", ""), {}

    def __call__(self, instruction_id: str, args: dict, text: str) -> bool:
        key = (instruction_id, repr(sorted(args.items())))
        if key not in self.built:
            self.built[key] = self._build(instruction_id, args)
        check = self.built[key]
        return check is None or (bool(text.strip()) and bool(check(text)))

    def _build(self, instruction_id: str, args: dict):
        try:
            from lm_eval.tasks.ifeval.instructions_registry import INSTRUCTION_DICT
        except ImportError:
            return None
        if instruction_id not in INSTRUCTION_DICT:
            return None
        instruction = INSTRUCTION_DICT[instruction_id](instruction_id)
        instruction.build_description(**args)
        described = instruction.get_instruction_args()
        if described and "prompt" in described:
            instruction.build_description(prompt=self.prompt)
        return instruction.check_following


def _arguments(kwargs: dict) -> dict:
    """The instruction's arguments as lm-eval passes them (None values dropped)."""
    return {k: v for k, v in (kwargs or {}).items() if v}


# --- edits ---------------------------------------------------------------------------------------

def insert(text: str, p: int, piece: str) -> str:
    """``piece`` inserted at character ``p`` as a word of its own (a space where none is)."""
    left = "" if p == 0 or text[p - 1].isspace() else " "
    right = "" if p == len(text) or text[p].isspace() else " "
    return text[:p] + left + piece + right + text[p:]


def inserted(piece: str) -> Repair:
    """An insertion of ``piece`` (a function of the arguments) at every position."""
    return lambda text, args, at: [insert(text, p, piece(text, args)) for p in at]


def appended(piece: Callable[[str, dict], str]) -> Repair:
    """An insertion at the end only: "at least N words/sentences" fails where the model stopped."""
    return lambda text, args, at: [insert(text, len(text), piece(text, args))]


def _truncations(count: Callable[[str], int], limit: int, text: str, at: Sequence[int]) -> list[str]:
    """text[:p] for every position whose prefix counts below ``limit`` (counts grow with p)."""
    return [text[:p] for p in at if 0 < p < len(text) and count(text[:p]) < limit]


def _delete_from(text: str, pattern: str, keep: int, flags=re.IGNORECASE) -> str:
    """``text`` without the matches of ``pattern`` after the first ``keep`` (and a space before)."""
    matches = list(re.finditer(pattern, text, flags))[max(keep, 0):]
    for m in reversed(matches):
        start = m.start() - 1 if m.start() > 0 and text[m.start() - 1] == " " else m.start()
        text = text[:start] + text[m.end():]
    return text


def _count_words(text: str) -> int:  # lm-eval's count_words: nltk RegexpTokenizer(r"\w+")
    return len(re.findall(r"\w+", text))


def _count_sentences(text: str) -> int:
    from lm_eval.tasks.ifeval.instructions_util import count_sentences

    return count_sentences(text)


def _less(args: dict, relation: str = "relation") -> bool:
    return args.get(relation) == "less than"


def keyword_frequency(text, args, at):
    keyword, n = args["keyword"], int(args["frequency"])
    if _less(args):
        return [_delete_from(text, keyword, n - 1)]
    return [insert(text, p, " ".join([keyword] * n)) for p in at]


def forbidden_words(text, args, at):
    for word in args["forbidden_words"]:
        text = _delete_from(text, r"\b" + word + r"\b", 0)
    return [text]


def letter_frequency(text, args, at):
    letter, n = args["letter"], int(args["let_frequency"])
    if _less(args, "let_relation"):
        return [_delete_from(text, re.escape(letter), n - 1)]
    return [insert(text, p, letter * n) for p in at]


def number_words(text, args, at):
    n = int(args["num_words"])
    if _less(args):
        return _truncations(_count_words, n, text, at)
    return appended(lambda t, a: " ".join(["more"] * max(1, n - _count_words(t))))(text, args, at)


def number_sentences(text, args, at):
    n = int(args["num_sentences"])
    if _less(args):
        return _truncations(_count_sentences, n, text, at)
    return appended(lambda t, a: " ".join(["More."] * max(1, n - _count_sentences(t))))(text, args, at)


def end_phrase(text, args, at):
    return [insert(text[:p], p, args["end_phrase"].strip()) for p in at]


def quotation(text, args, at):
    body = text.strip()
    lead = text[: len(text) - len(text.lstrip())]
    if not body.startswith('"'):
        body = '"' + body
    if len(body) < 2 or not body.endswith('"'):
        body += '"'
    return [lead + body]


def capital_word_frequency(text, args, at):
    n = int(args["capital_frequency"])
    if _less(args, "capital_relation"):
        caps = [m for m in re.finditer(r"\S+", text) if m.group().isupper()][max(n - 1, 0):]
        for m in reversed(caps):
            text = text[:m.start()] + m.group().lower() + text[m.end():]
        return [text]
    return [insert(text, p, " ".join(["NOTE"] * n)) for p in at]


def repeat_prompt(text, args, at):
    prompt = args["prompt_to_repeat"].strip()
    lead = len(text) - len(text.lstrip())
    body, n = text[lead:].lower(), 0
    while n < min(len(body), len(prompt)) and body[n] == prompt[n].lower():
        n += 1
    return [text[: lead + n] + prompt[n:] + "\n" + text[lead + n:].lstrip()]


def bullet_lists(text, args, at):
    n = int(args["num_bullets"])
    lines = list(re.finditer(r"^\s*(\*[^\*]|-).*$", text, flags=re.MULTILINE))
    if len(lines) > n:  # the bullets after the n-th lose their marker
        for m in reversed(lines[n:]):
            body = m.group().lstrip()
            text = text[:m.start()] + body[1:].lstrip() + text[m.end():]
        return [text]
    piece = "".join("\n* item" for _ in range(n - len(lines))) + "\n"
    return [text[:p] + piece + text[p:].lstrip(" ") for p in at]


def multiple_sections(text, args, at):
    marker, n = args["section_spliter"].strip(), int(args["num_sections"])
    return [insert(text, p, " ".join(f"{marker} {i}" for i in range(1, n + 1))) for p in at]


BUILT_IN: dict[str, Repair] = {
    "keywords:existence": inserted(
        lambda t, a: " ".join(k for k in a["keywords"] if not re.search(k, t, re.IGNORECASE))),
    "keywords:frequency": keyword_frequency,
    "keywords:forbidden_words": forbidden_words,
    "keywords:letter_frequency": letter_frequency,
    "length_constraints:number_words": number_words,
    "length_constraints:number_sentences": number_sentences,
    "detectable_content:number_placeholders": inserted(
        lambda t, a: " ".join(["[placeholder]"] * int(a["num_placeholders"]))),
    "detectable_content:postscript": inserted(lambda t, a: "\n" + a["postscript_marker"].strip()),
    "detectable_format:number_bullet_lists": bullet_lists,
    "detectable_format:constrained_response": inserted(lambda t, a: "My answer is yes."),
    "detectable_format:number_highlighted_sections": inserted(
        lambda t, a: " ".join(["*highlighted*"] * int(a["num_highlights"]))),
    "detectable_format:multiple_sections": multiple_sections,
    "detectable_format:json_format": lambda text, args, at: [json.dumps(text)],
    "detectable_format:title": inserted(lambda t, a: "<<Title>>"),
    "combination:repeat_prompt": repeat_prompt,
    "startend:end_checker": end_phrase,
    "startend:quotation": quotation,
    "change_case:english_lowercase": lambda text, args, at: [text.lower()],
    "change_case:english_capital": lambda text, args, at: [text.upper()],
    "change_case:capital_word_frequency": capital_word_frequency,
    "punctuation:no_comma": lambda text, args, at: [text.replace(",", "")],
}
for _name, _repair in BUILT_IN.items():
    register_instruction_repair(_name, _repair)
