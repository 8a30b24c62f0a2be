"""Contrast cases for ``loglikelihood`` samples (LAMBADA-style ``acc`` = ``is_greedy``).

Algorithm, per incorrect sample (by the task's primary metric; LAMBADA: ``acc`` = the target is
not the greedy continuation):
1. Rebuild and re-score the scored sequence ``context + target`` through the HFLM instance
   (``scoring``); ``ll_error`` = |recomputed − logged log-likelihood|.
2. j = first target position whose greedy (argmax) token differs from the target token
   (none, e.g. a numerical tie flipped → skip ``greedy-matches-target``). Its Δ =
   log p(greedy) − log p(target) ≥ 0 (the same as the logit difference); below ``NEAR_TIE``
   (1e-4, as for multiple choice) the greedy choice is a near-tie, not a decision: skip
   ``near-tie`` (a Δ near 0 is no explanation target).
3. Token mode: input = lm-eval's window up to that position (context + target tokens before j);
   wrong = the argmax token, gold = the target token.
4. Sequence mode: the model's own greedy continuation from there, as many tokens as the rest of
   the target, vs the rest of the target: Δ = log p(greedy) − log p(target) (``SequenceTarget``).
"""

from __future__ import annotations

from harness_xai.contrast.case import (CaseDraft, Options, context_token_labels, new_case, note,
                                       set_segments, skip, truncation_note)
from harness_xai.contrast.scoring import NEAR_TIE, build, first_difference, score, window_start
from harness_xai.records import SequenceTarget


def loglikelihood_case(sample: dict, task, task_name: str, lm, options: Options,
                       cache: dict | None = None) -> CaseDraft | None:
    context, target = sample["arguments"][0][0], sample["arguments"][0][1]
    logged = float(sample["filtered_resps"][0][0])
    case = new_case(sample, task_name, "loglikelihood", options.metric_name, options.contrast,
                    prompt=context)
    case.gold_text, case.ll_gold = target, logged
    note(case, truncation=truncation_note(lm, (context, target), sample["doc"]))
    seq = score(lm, build(lm, context, target))
    case.ll_error = abs(seq.ll - logged)
    j = first_difference(seq.greedy, seq.cont)
    if j is None:
        return skip(case, "greedy-matches-target")
    note(case, greedy_gap=seq.greedy_gap[j])
    if seq.greedy_gap[j] < NEAR_TIE:
        return skip(case, "near-tie")
    t = seq.n_ctx + j
    labels = (context_token_labels(lm, task, options, context, seq.ids[: seq.n_ctx], sample["doc"])
              + [("continuation", None)] * len(seq.cont))
    case.wrong_token_id, case.gold_token_id = seq.greedy[j], seq.cont[j]
    if options.contrast == "token":
        case.token_ids = seq.ids[seq.start:t]
        set_segments(case, labels[seq.start:t])
        case.position = len(case.token_ids)
        case.pred_text = lm.tokenizer.decode([seq.greedy[j]])
        note(case, rule="first-non-greedy-target-token", target_position=j,
             truncated_tokens=seq.start)
        return case
    greedy = greedy_continuation(lm, seq.ids[:t], len(seq.cont) - j)
    wrong_full = seq.ids[:t] + greedy
    w0, g0 = window_start(len(wrong_full), lm.max_length), seq.start
    spec = SequenceTarget(wrong_full[w0:], t - w0, seq.ids[g0:], t - g0)
    case.pred_text = lm.tokenizer.decode(greedy)
    case.token_ids = spec.wrong_ids[:-1]
    set_segments(case, (labels[:t] + [("generated", None)] * len(greedy))[w0:-1])
    case.position = t - w0
    note(case, rule="greedy-vs-target-loglikelihood", target=spec.to_params(),
         target_position=j, truncated_tokens=w0)
    return case


def greedy_continuation(lm, prefix: list[int], n: int) -> list[int]:
    """``n`` greedy tokens after ``prefix`` (plain forwards over lm-eval's window, no cache)."""
    import torch

    ids = list(prefix)
    with torch.no_grad():
        for _ in range(n):
            window = torch.tensor([ids[-lm.max_length:]], dtype=torch.long, device=lm.device)
            ids.append(int(lm._model_call(window)[0, -1].argmax()))
    return ids[len(prefix):]
