"""Planted first errors in ``xai_steps`` generations (ground truth for the rollout localiser).

A case starts from a doc the model solves exactly as written (greedy generation == the doc's
solution, token for token). At a known step k, the token at position ``t*`` — step k's result
(``kind="result"``: `` 7`` in `` 3 + 4 = 7``) or its operand (``kind="operand"``: `` 4``) — is
replaced by a wrong number and the model continues greedily from there:

    planted = g_<t* + [wrong] + greedy(prompt + g_<t* + [wrong])

Kept only when the planted generation is incorrect under the task's own filter and metric (the
model does not recover). Every token before ``t*`` is the model's own greedy choice on a correct
path, so ``t*`` is where the generation first leaves the correct trajectory; restoring the model's
top-1 token there gives back the correct generation. Whether an *earlier* substitution can also
make the answer right is measured, not assumed: ``earliest_flip`` tries every position × every
top-k alternative (the brute-force definition the localiser approximates under a budget).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from lm_eval.models.utils import postprocess_generated_text

from harness_xai.contrast.rollouts import greedy_continue

KINDS = ("result", "operand")


@dataclass(frozen=True)
class Planted:
    doc_index: int
    kind: str  # "result" | "operand"
    step: int  # 0-based step of the solution
    position: int  # t*: index into the generated ids
    model_token: int  # the model's own (correct) token at t*
    planted_token: int  # the wrong number put there
    prompt_ids: tuple[int, ...]
    ids: tuple[int, ...]  # planted generation: model prefix, wrong token, greedy continuation
    text: str


@dataclass(frozen=True)
class Flip:
    """Brute force over every position × top-k alternative."""

    position: int | None  # earliest position where some alternative makes the sample correct
    alternatives: tuple[int, ...]  # the alternatives that do, at that position
    flipping_positions: tuple[int, ...]  # every position with a flipping alternative
    rollouts: int


def rollout_text(tokenizer, ids: Sequence[int], until: Sequence[str]) -> str:
    """What the task scores: the decoded generation cut at the first ``until`` string (HFLM)."""
    return postprocess_generated_text(tokenizer.decode(list(ids)), list(until), None)


def token_starts(tokenizer, ids: Sequence[int]) -> list[int]:
    """Character offset of each token in ``decode(ids)``."""
    return [len(tokenizer.decode(list(ids[:i]))) for i in range(len(ids))]


def step_positions(tokenizer, ids: Sequence[int], doc: dict) -> list[dict[str, int]]:
    """Per step: token positions of its operand and result in ``ids`` (a generation whose text
    is exactly ``doc["solution"]``)."""
    if tokenizer.decode(list(ids)) != doc["solution"]:
        raise ValueError("the generation is not the doc's solution")
    starts = token_starts(tokenizer, ids)
    out = []
    for start, _ in doc["result_spans"]:
        result = starts.index(start - 1)  # the token carries the number's leading space
        out.append({"result": result, "operand": result - 2})  # ... " 4" " =" " 7"
    return out


def wrong_number(tokenizer, right: str, rng: random.Random) -> int:
    """Token id of a one-token number `` v`` with v ≠ ``right`` (|v − right| ≤ 3, v ≥ 0)."""
    value = int(right)
    options = [value + d for d in (-3, -2, -1, 1, 2, 3) if value + d >= 0]
    rng.shuffle(options)
    for v in options:
        ids = tokenizer(f" {v}", add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            return ids[0]
    raise ValueError(f"no one-token wrong number near {right}")


def plant(model, tokenizer, prompt_ids: Sequence[int], ids: Sequence[int], position: int,
          token: int, max_new_tokens: int) -> tuple[int, ...]:
    """``ids[:position] + [token]`` continued greedily (at most ``max_new_tokens`` in all)."""
    forced = list(ids[:position]) + [int(token)]
    eos = tokenizer.eos_token_id
    cont = greedy_continue(model, [list(prompt_ids) + forced], max_new_tokens - len(forced),
                           eos, (eos,))[0]
    return tuple(forced + cont)


def earliest_flip(model, tokenizer, prompt_ids: Sequence[int], ids: Sequence[int],
                  score: Callable[[str], bool], top_k: int, max_rollout_tokens: int,
                  until: Sequence[str], batch_size: int = 16) -> Flip:
    """Try every position t and each of the model's top-k tokens a ≠ ids[t] there (greedy
    continuation after ``ids[:t] + [a]``); no budget, no early stop."""
    prompt, gen = list(prompt_ids), list(ids)
    with torch.no_grad():
        full = torch.tensor([prompt + gen])
        logits = model(input_ids=full).logits[0, len(prompt) - 1:len(prompt) - 1 + len(gen)]
    plan = [(t, a) for t in range(len(gen))
            for a in logits[t].topk(top_k).indices.tolist() if a != gen[t]]
    eos = tokenizer.eos_token_id
    flips: dict[int, list[int]] = {}
    for start in range(0, len(plan), batch_size):
        chunk = plan[start:start + batch_size]
        rows = [prompt + gen[:t] + [a] for t, a in chunk]
        for (t, a), cont in zip(chunk, greedy_continue(model, rows, max_rollout_tokens, eos,
                                                       (eos,))):
            if score(rollout_text(tokenizer, gen[:t] + [a] + cont, until)):
                flips.setdefault(t, []).append(a)
    first = min(flips) if flips else None
    return Flip(first, tuple(flips.get(first, ())), tuple(sorted(flips)), len(plan))


def plant_cases(model, tokenizer, docs: list[dict], generations: list[Sequence[int]],
                scorers: list[Callable[[str], bool]], n: int, seed: int, until: Sequence[str],
                max_new_tokens: int) -> tuple[list[Planted], dict[str, int]]:
    """Up to ``n`` planted cases, alternating kinds, one per correctly solved doc (step and
    wrong number drawn from ``random.Random(seed)``); also counts why docs were not used."""
    rng = random.Random(seed)
    cases: list[Planted] = []
    skipped = {"not_solved_as_written": 0, "model_recovered": 0}
    for index, (doc, gen, score) in enumerate(zip(docs, generations, scorers)):
        if len(cases) >= n:
            break
        if tokenizer.decode(list(gen)) != doc["solution"]:
            skipped["not_solved_as_written"] += 1
            continue
        kind = KINDS[len(cases) % len(KINDS)]
        step = rng.randrange(doc["n_steps"])
        t = step_positions(tokenizer, gen, doc)[step][kind]
        right = tokenizer.decode([gen[t]]).strip()
        wrong = wrong_number(tokenizer, right, rng)
        prompt_ids = tuple(tokenizer(doc["prompt"], add_special_tokens=False)["input_ids"])
        ids = plant(model, tokenizer, prompt_ids, gen, t, wrong, max_new_tokens)
        text = rollout_text(tokenizer, ids, until)
        if score(text):
            skipped["model_recovered"] += 1
            continue
        cases.append(Planted(index, kind, step, t, int(gen[t]), wrong, prompt_ids, ids, text))
    return cases, skipped
