"""Deterministic generators of the bundled synthetic tasks (test docs and training corpus).

Every doc is a plain dict that lm-eval reads from JSONL. The ``prompt`` field is exactly what the
task YAML's ``doc_to_text`` returns, so character spans stored in a doc index into lm-eval's
prompt text directly.

Tasks
  xai_kv      key→value retrieval, multiple choice. ``" hi 65 ba 83 ne 84 gu 81. ne"`` with
              choices ``["09", "54", "83", "84"]`` (target delimiter " " → continuation
              " 84"). Keys are consonant+vowel syllables, values two-digit numbers, both
              unique within a doc and each a single BPE token; the distractors are values of
              other records of the same context. The queried record sits uniformly anywhere in
              the context; ``evidence_span`` is the character span of its value inside
              ``prompt``, ``record_span`` that of the whole record (``"ne 84"``).
  xai_kv_gen  the same docs, generate_until; the target is the value string.
  xai_arith   addition of 2–5 single digits, multiple choice: ``"3+5+8="`` with choices such
              as ``["16", "15", "17", "6"]`` (gold ±1, ±2, ±10); ``operand_spans`` locate the
              digits; prompts are distinct. Every operand is evidence for the sum, so
              ``evidence_span`` lists all of them (the same pairs as ``operand_spans``).
  xai_steps   multi-step arithmetic written out step by step, generate_until, GSM8K-style
              ``#### N`` answer (``steps.py``; its own model, ``steps_train.py``).

Format notes (measured while building the zoo model): records are exactly two tokens
(key, value) with no separators and no header; a constant header token (``"kv:"``) or separators
inside the record list delayed the formation of the tiny model's retrieval circuit far beyond the
training budget.

Algorithm (per doc, ``random.Random(seed)`` shared along one stream so output is reproducible)
  1. draw the size (records / operands) from the split's range;
  2. draw keys and values without replacement (kv) or the operands (arith);
  3. build the prompt and record spans while concatenating;
  4. draw distractors and shuffle them with the gold answer; store the gold index.
Test docs use ``TEST_SEED``; the training corpus uses ``TRAIN_SEED`` and skips any doc whose
prompt is a test prompt, so train and test never overlap. Fields that draw nothing from the
generator (spans such as ``evidence_span``) can be added without changing any prompt, the training
stream, or the zoo trained on it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TEST_SEED = 20261124
TRAIN_SEED = 7
N_TEST = {"xai_kv": 160, "xai_arith": 160}
#: records per xai_kv doc: test spans short and long contexts; training stops short of the longest
KV_TEST_RECORDS = (4, 75)
KV_TRAIN_RECORDS = (4, 12)
ARITH_OPERANDS = (2, 5)
TASK_NAMES = ("xai_kv", "xai_kv_gen", "xai_arith", "xai_steps")
#: keys: consonant+vowel syllables (each one BPE token); values: two-digit numbers
KEYS = [c + v for c in "bdfghklmnprstvz" for v in "aeiou"]
QUERY_SEP = "."

Doc = dict[str, Any]


def kv_doc(rng: random.Random, n_records: int) -> Doc:
    """One key→value retrieval doc with ``n_records`` records (4 ≤ n ≤ len(KEYS))."""
    keys = rng.sample(KEYS, n_records)
    values = [f"{v:02d}" for v in rng.sample(range(100), n_records)]
    evidence = rng.randrange(n_records)
    prompt = ""
    spans: list[tuple[int, int, int]] = []  # (record start, value start, record end)
    for key, value in zip(keys, values):
        start = len(prompt) + 1
        prompt += f" {key} {value}"
        spans.append((start, len(prompt) - len(value), len(prompt)))
    query = keys[evidence]
    prompt += f"{QUERY_SEP} {query}"
    gold = values[evidence]
    others = [v for i, v in enumerate(values) if i != evidence]
    choices = rng.sample(others, min(3, len(others))) + [gold]
    rng.shuffle(choices)
    rec_start, val_start, rec_end = spans[evidence]
    assert prompt[val_start:rec_end] == gold and prompt[rec_start:rec_end] == f"{query} {gold}"
    return {
        "prompt": prompt, "query": query, "choices": choices, "gold": choices.index(gold),
        "target": gold, "n_records": n_records, "evidence_index": evidence,
        "evidence_span": [val_start, rec_end], "record_span": [rec_start, rec_end],
    }


def arith_doc(rng: random.Random, n_operands: int) -> Doc:
    """One addition of ``n_operands`` single digits (1–9) with four numeric choices."""
    operands = [rng.randint(1, 9) for _ in range(n_operands)]
    total = sum(operands)
    prompt = "+".join(str(x) for x in operands) + "="
    pool = [total + d for d in (-2, -1, 1, 2, -10, 10) if total + d >= 0]
    choices = [str(x) for x in rng.sample(pool, 3)] + [str(total)]
    rng.shuffle(choices)
    spans = [[2 * i, 2 * i + 1] for i in range(n_operands)]
    return {
        "prompt": prompt, "choices": choices, "gold": choices.index(str(total)),
        "target": str(total), "n_operands": n_operands, "operands": operands,
        "operand_spans": spans, "evidence_span": [list(span) for span in spans],
    }


def kv_docs(seed: int, n: int, records: tuple[int, int]) -> Iterator[Doc]:
    rng = random.Random(seed)
    for _ in range(n):
        yield kv_doc(rng, rng.randint(*records))


def arith_docs(seed: int, n: int) -> Iterator[Doc]:
    """``n`` addition docs with distinct prompts (there are only 81 two-digit sums)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    while len(seen) < n:
        doc = arith_doc(rng, rng.randint(*ARITH_OPERANDS))
        if doc["prompt"] not in seen:
            seen.add(doc["prompt"])
            yield doc


def test_docs(task: str) -> list[Doc]:
    """The committed test split of ``task`` (xai_kv_gen shares xai_kv's docs)."""
    if task in ("xai_kv", "xai_kv_gen"):
        return list(kv_docs(TEST_SEED, N_TEST["xai_kv"], KV_TEST_RECORDS))
    if task == "xai_arith":
        return list(arith_docs(TEST_SEED + 1, N_TEST["xai_arith"]))
    if task == "xai_steps":
        from harness_xai.zoo.steps import test_docs as steps_test_docs
        return steps_test_docs()
    raise KeyError(task)


def to_jsonl(docs: list[Doc]) -> str:
    """Canonical JSONL text (sorted keys, one doc per line, trailing newline)."""
    return "".join(json.dumps(d, sort_keys=True, ensure_ascii=True) + "\n" for d in docs)


def write_tasks(tasks_dir: str | Path) -> list[Path]:
    """Regenerate ``tasks/<name>/test.jsonl`` for every bundled task; returns the paths written."""
    written = []
    for task in TASK_NAMES:
        path = Path(tasks_dir) / task / "test.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_jsonl(test_docs(task)), encoding="utf-8")
        written.append(path)
    return written


def kv_train_text(rng: random.Random, n_records: int, queries: int,
                  banned: set[str]) -> tuple[str, list[tuple[int, int]]] | None:
    """A training text: a kv prompt and its answer, then up to ``queries`` more keys of the same
    context, each followed by its value (``" mu 05"``); ``None`` if the prompt is a test prompt.

    Returns the text and the character spans of its answers (leading space included).
    """
    doc = kv_doc(rng, n_records)
    if doc["prompt"] in banned:
        return None
    text = doc["prompt"]
    spans = [(len(text), len(text) + 1 + len(doc["target"]))]
    text += f" {doc['target']}"
    others = [r for r in _records(doc["prompt"]) if r[0] != doc["query"]]
    for key, value in rng.sample(others, min(len(others), queries)):
        text += f" {key}"
        spans.append((len(text), len(text) + 1 + len(value)))
        text += f" {value}"
    return text, spans


def arith_train_text(rng: random.Random,
                     banned: set[str]) -> tuple[str, list[tuple[int, int]]] | None:
    """A training text: an arithmetic prompt and its answer; ``None`` for a test prompt."""
    doc = arith_doc(rng, rng.randint(*ARITH_OPERANDS))
    prompt = doc["prompt"]
    if prompt in banned:
        return None
    return f"{prompt} {doc['target']}", [(len(prompt), len(prompt) + 1 + len(doc["target"]))]


def train_texts(seed: int = TRAIN_SEED, kv_records: tuple[int, int] = KV_TRAIN_RECORDS,
                kv_queries: int = 8) -> Iterator[tuple[str, str, list[tuple[int, int]]]]:
    """Endless mixed stream of ``(task, text, answer_spans)``, half kv, half arithmetic (the
    tokenizer's training corpus)."""
    banned = test_prompts()
    rng = random.Random(seed)
    while True:
        if rng.random() < 0.5:
            item = kv_train_text(rng, rng.randint(*kv_records), rng.randint(0, kv_queries), banned)
            task = "xai_kv"
        else:
            item = arith_train_text(rng, banned)
            task = "xai_arith"
        if item is not None:
            yield (task, *item)


def test_prompts() -> set[str]:
    """Every committed test prompt (training texts never start with one)."""
    return {d["prompt"] for t in ("xai_kv", "xai_arith") for d in test_docs(t)}


def _records(prompt: str) -> list[tuple[str, str]]:
    """``[(key, value)…]`` of a kv prompt."""
    words = prompt.rsplit(" ", 1)[0].removesuffix(QUERY_SEP).split()
    return list(zip(words[0::2], words[1::2]))
