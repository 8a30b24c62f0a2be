"""``xai_steps``: multi-step arithmetic written out step by step (a task that reasons a little).

A doc chains 3–5 distinct digits with ``+`` and ``-`` left to right; the solution writes one step
per operation, each starting from the previous step's result, then the answer after ``####`` as
GSM8K does::

    prompt    "Q: 3 + 4 - 2 + 5 ="
    solution  " 3 + 4 = 7 ; 7 - 2 = 5 ; 5 + 5 = 10 #### 10"
    target    "10"        (what the task's regex filter ``#### (\\d+)`` must extract)

Each step is six tokens of the steps tokenizer (`` 3`` `` +`` `` 4`` `` =`` `` 7`` `` ;``): the
previous result copied, the next operator and operand copied from the prompt (operands are distinct
within a doc, so the operand just used is found in the prompt unambiguously), and one addition or
subtraction. A wrong result at step k propagates to every later step and to the answer, so the
first wrong token of a generation is the first error. ``result_spans`` are the character spans of
each step's result inside ``solution`` (where errors are planted, bench/bench_localiser.py).

Algorithm (per doc, one ``random.Random`` stream): draw the operand count, the operands without
replacement from 1–9, then each operator (``-`` only where the running value stays ≥ 0).
Test docs come from ``TEST_SEED``; training docs from their own seed skip every test prompt.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import Any

TASK = "xai_steps"
TEST_SEED = 20261204
N_TEST = 160
OPERANDS = (3, 5)
ANSWER_RE = re.compile(r"#### (\d+)")
STEP_SEP, ANSWER_SEP = " ;", " ####"

Doc = dict[str, Any]


def steps_doc(rng: random.Random, n_operands: int) -> Doc:
    """One chain of ``n_operands`` distinct digits with its written-out solution."""
    operands = rng.sample(range(1, 10), n_operands)
    value, ops = operands[0], []
    for x in operands[1:]:
        op = "-" if value >= x and rng.random() < 0.5 else "+"
        ops.append(op)
        value = value + x if op == "+" else value - x
    prompt = f"Q: {operands[0]}" + "".join(f" {op} {x}" for op, x in zip(ops, operands[1:])) + " ="
    solution, spans, value = "", [], operands[0]
    for op, x in zip(ops, operands[1:]):
        result = value + x if op == "+" else value - x
        solution += (STEP_SEP if solution else "") + f" {value} {op} {x} ="
        spans.append([len(solution) + 1, len(solution) + 1 + len(str(result))])
        solution += f" {result}"
        value = result
    solution += f"{ANSWER_SEP} {value}"
    assert [int(solution[s:e]) for s, e in spans][-1] == value
    return {"prompt": prompt, "solution": solution, "target": str(value), "operands": operands,
            "ops": ops, "n_steps": len(ops), "result_spans": spans}


def steps_docs(seed: int, n: int, banned: set[str] = frozenset()) -> Iterator[Doc]:
    """``n`` docs with distinct prompts, none of them in ``banned``."""
    rng = random.Random(seed)
    seen: set[str] = set()
    while len(seen) < n:
        doc = steps_doc(rng, rng.randint(*OPERANDS))
        if doc["prompt"] not in seen and doc["prompt"] not in banned:
            seen.add(doc["prompt"])
            yield doc


def test_docs() -> list[Doc]:
    """The committed test split (tasks/xai_steps/test.jsonl)."""
    return list(steps_docs(TEST_SEED, N_TEST))


def train_docs(seed: int) -> Iterator[Doc]:
    """Endless training docs (repeats allowed), never a test prompt."""
    banned = {d["prompt"] for d in test_docs()}
    rng = random.Random(seed)
    while True:
        doc = steps_doc(rng, rng.randint(*OPERANDS))
        if doc["prompt"] not in banned:
            yield doc


def extract_answer(text: str) -> str | None:
    """The number after the first ``####`` (the task's regex filter), else None."""
    match = ANSWER_RE.search(text)
    return match.group(1) if match else None
