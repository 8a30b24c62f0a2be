"""First-error localisation in a generation by top-k rollouts (issue #14, item 3; DESIGN 5.3).

For an incorrect generation ``g`` (exact token ids) after prompt ``p``: at generated position
``t`` the model chose ``g_t``; substitute one of its top-k alternatives ``a`` and continue greedily,
``r = greedy(p + g_<t + [a])``. The first error is the earliest ``t`` (then the highest-ranked ``a``)
for which ``score(decode(g_<t + [a] + r))`` is True, i.e. the sample becomes correct under the
task's own filters and metric (``task_scorer``). The contrast to explain is then
``logit_t[g_t] − logit_t[a]`` with ``p + g_<t`` as input.

Budget: positions are ranked by the margin ``logit_t[top1] − logit_t[top2]`` (low first); the
``ceil(max_rollouts / alternatives)`` lowest-margin positions are tried in generation order,
their alternatives by rank, ``batch_size`` rollouts per batched ``generate`` call (left padding
with an attention mask; rows are cut at EOS and at the task's ``until`` strings). Every rollout
is returned. Without a flip the result carries a reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from lm_eval.models.utils import postprocess_generated_text

NO_FLIP, EMPTY = "no_flip_within_budget", "empty_generation"


@dataclass(frozen=True)
class Rollout:
    position: int  # index into the generated ids
    alternative: int  # the token id put in place of the model's
    rank: int  # rank of the alternative among the model's logits there (0 = top-1)
    ids: tuple[int, ...]  # generated ids: model prefix, alternative, greedy continuation
    text: str  # what was scored (after think_end, cut at the first stop string)
    correct: bool


@dataclass(frozen=True)
class FirstError:
    rollouts: tuple[Rollout, ...]
    candidates: tuple[int, ...]  # positions tried, in the order tried
    margins: tuple[float, ...]  # top-1 − top-2 logit at every generated position
    position: int | None = None
    model_token: int | None = None
    alternative: int | None = None
    reason: str | None = None  # set when no flip was found

    @property
    def found(self) -> bool:
        return self.position is not None


def first_error(model, tokenizer, prompt_ids: Sequence[int], generated_ids: Sequence[int],
                score: Callable[[str], bool], *, top_k: int = 5, max_rollouts: int = 32,
                max_rollout_tokens: int = 64, batch_size: int = 8, until: Sequence[str] = (),
                think_end: str | None = None, eos_token_id: int | Sequence[int] | None = None,
                pad_token_id: int | None = None, max_generated: int | None = None,
                max_length: int | None = None, memo: dict | None = None) -> FirstError:
    """Earliest position where one of the model's top-k alternatives leads to a correct sample.

    Each rollout is decoded and post-processed as HFLM does before scoring: the reasoning up to the
    last ``think_end`` string dropped, then cut at the first ``until`` string. ``max_generated``
    (lm-eval's max_gen_toks): a rollout at position t continues at most ``max_generated − t − 1``
    tokens, the generation's own budget; ``max_length`` (the model's window): a batch generates
    at most ``max_length − its longest row`` tokens. ``memo`` ((position, alternative, length) →
    continuation ids) is read and filled: several scorers of one generation (one per lm-eval
    filter) share their rollouts' continuations."""
    prompt, generated = [int(i) for i in prompt_ids], [int(i) for i in generated_ids]
    if not generated:
        return FirstError((), (), (), reason=EMPTY)
    logits = _position_logits(model, prompt, generated)
    top = logits.topk(min(max(top_k, 2), logits.shape[-1]), dim=-1)
    margins = tuple(float(v[0] - v[1]) for v in top.values)
    per_position = max(top_k - 1, 1)
    n_positions = max(1, min(len(generated), math.ceil(max_rollouts / per_position)))
    by_margin = sorted(range(len(generated)), key=lambda t: (margins[t], t))
    candidates = tuple(sorted(by_margin[:n_positions]))
    plan = []  # (position, alternative, rank) in generation order, alternatives by rank
    for t in candidates:
        ranked = top.indices[t].tolist()[:top_k]
        plan.extend((t, int(a), r) for r, a in enumerate(ranked) if a != generated[t])
    plan = plan[:max_rollouts]
    eos = _eos_ids(model, eos_token_id)
    pad = pad_token_id if pad_token_id is not None else _pad_id(model, tokenizer, eos)
    rollouts: list[Rollout] = []
    memo = {} if memo is None else memo
    for start in range(0, len(plan), max(batch_size, 1)):
        batch = plan[start:start + max(batch_size, 1)]
        allowed = [max_rollout_tokens if max_generated is None
                   else max(0, min(max_rollout_tokens, max_generated - t - 1)) for t, _, _ in batch]
        todo = [(t, a, n) for (t, a, _), n in zip(batch, allowed) if (t, a, n) not in memo]
        if todo:
            rows = [prompt + generated[:t] + [a] for t, a, _ in todo]
            n_new = max(n for _, _, n in todo)
            if max_length is not None:
                n_new = max(0, min(n_new, max_length - max(len(row) for row in rows)))
            for key, cont in zip(todo, greedy_continue(model, rows, n_new, pad, eos)):
                memo[key] = cont[:key[2]]
        for (t, a, r), n in zip(batch, allowed):
            ids = tuple(generated[:t] + [a] + memo[(t, a, n)])
            text = postprocess_generated_text(tokenizer.decode(list(ids)), list(until), think_end)
            rollouts.append(Rollout(t, a, r, ids, text, bool(score(text))))
        hit = next((x for x in rollouts if x.correct), None)
        if hit is not None:
            return FirstError(tuple(rollouts), candidates, margins, hit.position,
                              generated[hit.position], hit.alternative)
    return FirstError(tuple(rollouts), candidates, margins, reason=NO_FLIP)


@torch.no_grad()
def greedy_continue(model, rows: list[list[int]], max_new_tokens: int, pad_token_id: int,
                    eos_token_ids: tuple[int, ...] = ()) -> list[list[int]]:
    """Greedy continuation of each row (batched, left-padded); cut before the first EOS."""
    from transformers import GenerationConfig

    if max_new_tokens <= 0:
        return [[] for _ in rows]
    width = max(len(r) for r in rows)
    device = next(model.parameters()).device
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long, device=device)
        mask[i, width - len(row):] = 1
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                              pad_token_id=pad_token_id,
                              eos_token_id=list(eos_token_ids) or None)
    out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
    result = []
    for row in out[:, width:].tolist():
        cut = next((i for i, tok in enumerate(row) if tok in eos_token_ids), len(row))
        result.append(row[:cut])
    return result


def task_scorer(task, doc: dict, filter_name: str | None = None, metric: str | None = None,
                threshold: float | None = None) -> Callable[[str], bool]:
    """``score(text)``: the task's own filters, then its process_results / metric, then the
    primary metric's verdict (harness_xai.contrast.decision). Code tasks run the unit tests
    (lm-eval's code_eval needs ``HF_ALLOW_CODE_EVAL=1``)."""
    from harness_xai.contrast.decision import CORRECT, primary_metric, verdict
    from harness_xai.errors import UserError

    name = getattr(task.config, "task", None) or type(task).__name__
    if getattr(task, "OUTPUT_TYPE", None) != "generate_until":
        raise UserError(f"rollouts need a generate_until task; task {name!r} is "
                        f"{getattr(task, 'OUTPUT_TYPE', 'unknown')} (drop --xai-rollouts for it)")
    ensembles = {e.name: e for e in getattr(task, "_filters", None) or ()}
    if filter_name is not None and filter_name not in ensembles:
        raise UserError(f"task {name!r} has no filter {filter_name!r}; supported: {', '.join(ensembles)}")
    ensemble = ensembles.get(filter_name) if filter_name else next(iter(ensembles.values()), None)
    resolved = {}

    def score(text: str) -> bool:
        resps = [[text]]
        for make in (ensemble.filters if ensemble else ()):
            resps = list(make().apply(resps, [doc]))
        results = task.process_results(doc, [resps[0]])
        if "primary" not in resolved:
            resolved["primary"] = primary_metric(task, name, [{**results, "metrics": list(results)}],
                                                 metric, threshold)
        return verdict(resolved["primary"], results).outcome == CORRECT

    return score


# --- helpers -----------------------------------------------------------------------------------

@torch.no_grad()
def _position_logits(model, prompt: list[int], generated: list[int]) -> torch.Tensor:
    """logits[t] = the model's logits for generated position t (given prompt + generated[:t])."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt + generated], dtype=torch.long, device=device)
    logits = model(input_ids=ids).logits[0].float()
    return logits[len(prompt) - 1:len(prompt) - 1 + len(generated)]


def _eos_ids(model, eos) -> tuple[int, ...]:
    if eos is None:
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return ()
    return (int(eos),) if isinstance(eos, int) else tuple(int(e) for e in eos)


def _pad_id(model, tokenizer, eos: tuple[int, ...]) -> int:
    for source in (tokenizer, getattr(model, "generation_config", None), model.config):
        pad = getattr(source, "pad_token_id", None)
        if pad is not None:
            return int(pad)
    return eos[0] if eos else 0
