"""Contrast cases for ``multiple_choice`` samples: the predicted choice vs the gold choice.

Algorithm, per incorrect logged sample (mirrors ``ConfigurableTask.process_results`` of lm-eval 0.4.13):
1. The task's primary metric decided the sample is incorrect (``decision``; ``case.metric``).
   lm-eval's prediction: scores = lls (``acc`` and any other metric) or lls / len(choice text)
   (``acc_norm``); pred = first argmax (``np.argmax``). ``acc_mutual_info`` → skip
   ``unsupported-metric:acc_mutual_info``.
2. Log-likelihoods: the first ``len(choices)`` ``filtered_resps`` (``acc_mutual_info`` appends
   unconditional requests after them).
3. Gold: ``doc_to_text`` for multiple-input tasks, else ``doc_to_target``: an int, a choice string
   or a list (several golds: any counts; the foil is the highest-scoring gold). Out-of-range
   indices / strings not among the choices → skip ``gold-out-of-range`` / ``gold-not-in-choices``;
   the prediction among the golds → ``prediction-is-gold``.
4. Both scored sequences are rebuilt through the HFLM instance (``scoring``) and re-scored; the
   largest |recomputed − logged| log-likelihood is ``case.ll_error``.
5. Decision Δ = score_pred − score_gold (logged scores; ``built["contrast"]["decision_delta"]``
   records it recomputed from the model). Same choice
   text twice → ``identical-choices``; Δ = 0 → ``tie-with-gold``; Δ < ``NEAR_TIE`` (1e-4 in
   the metric's units: log-prob, per character for ``acc_norm``) → ``near-tie``. Such cases are
   not explained as if decisive.
6. Token contrast (shared context): t = first position where the two sequences differ; input =
   lm-eval's window of the predicted sequence up to t (``ids[start:t]``), wrong/gold = the two
   sequences' tokens at t; its Δ_token = logit[wrong] − logit[gold] (= the difference of the two
   logged log-probs at t) is recorded as ``token_delta``. Decision-faithful rule: when
   Δ_token ≤ ``NEAR_TIE`` (the token favours the gold answer, e.g. BoolQ " y"+"es"), when one
   sequence is a prefix of the other, or when only the prefix token precedes the divergence, the
   case explains the decision itself instead (rule ``decision-sequence``, ``contrast =
   "sequence"``, ``replaced`` = why, ``replaced_token_delta``): step 8's objective, whose Δ is the
   decision Δ > 0. Equal token sequences → ``identical-sequences``.
7. Multiple-input tasks (Winogrande: one context per choice, a shared continuation), documented
   choice: the two inputs differ, so one logit difference needs one input. Token mode takes the
   first continuation position j where the model's greedy prediction under the predicted context
   differs from its prediction under the gold context; input = predicted context + continuation
   before j; wrong = greedy token under the predicted context, gold = greedy token under the gold
   context (``first-differing-prediction``); none, or a near-tie → ``decision-sequence``.
   Sequence mode explains exactly the decision: log p(cont | pred ctx) − log p(cont | gold ctx).
8. Sequence mode (any task): ``sequence.SequenceTarget`` over both full windows, weighted like
   the decision metric, so Δ = score_pred − score_gold.
"""

from __future__ import annotations

import numpy as np

from harness_xai.contrast.case import (CaseDraft, Options, context_token_labels, new_case, note,
                                       set_evidence, set_segments, skip, truncation_note)
from harness_xai.contrast.scoring import (NEAR_TIE, Scored, build, first_difference, logit_gap,
                                          score)
from harness_xai.records import SequenceTarget

CONT = ("continuation", None)




def multiple_choice_case(sample: dict, task, task_name: str, lm, options: Options,
                         cache: dict | None = None) -> CaseDraft:
    """The contrast case of one incorrect sample (``options.primary`` decided it)."""
    metric = options.metric_name
    doc = sample["doc"]
    choices = list(task.doc_to_choice(doc))
    n = len(choices)
    args = [(a[0], a[1]) for a in sample["arguments"]][:n]
    lls = [float(r[0]) for r in sample["filtered_resps"]][:n]
    case = new_case(sample, task_name, "multiple_choice", metric, options.contrast,
                    prompt=args[0][0] if args else "")
    if metric == "acc_mutual_info":
        return skip(case, "unsupported-metric:acc_mutual_info")
    norm = metric == "acc_norm"  # any other metric: lm-eval's prediction is the argmax of lls
    if norm:
        with np.errstate(divide="ignore", invalid="ignore"):
            scores = (np.array(lls) / np.array([float(len(c)) for c in choices])).tolist()
    else:
        scores = list(lls)
    pred = int(np.argmax(scores))
    case.pred_index, case.pred_text, case.prompt = pred, args[pred][1], args[pred][0]
    case.ll_pred = lls[pred]
    note(case, truncation=truncation_note(lm, args[pred], doc))
    seq_p = score(lm, build(lm, *args[pred]))
    case.ll_error = abs(seq_p.ll - lls[pred])
    golds, problem = gold_indices(task.doc_to_text(doc) if task.multiple_input
                                  else task.doc_to_target(doc), choices)
    if not golds:
        return skip(case, problem)
    gold = max(golds, key=lambda i: (scores[i], -i))
    case.gold_index, case.gold_text, case.ll_gold = gold, args[gold][1], lls[gold]
    if args[gold][0] != args[pred][0]:  # multiple inputs: the report shows both options
        note(case, gold_context=args[gold][0])
    seq_g = score(lm, build(lm, *args[gold]))
    case.ll_error = max(case.ll_error, abs(seq_g.ll - lls[gold]))
    if pred in golds:
        return skip(case, "prediction-is-gold")  # the metric failed for another reason
    if args[pred] == args[gold]:
        return skip(case, "identical-choices")
    weights = (1.0, 1.0) if not norm else (1 / max(len(choices[pred]), 1),
                                           1 / max(len(choices[gold]), 1))
    # recorded: the decision Δ recomputed (deterministic, what the decision contrast explains);
    # decided: on lm-eval's logged scores (which vary with its batching in the last digits)
    note(case, decision_delta=weights[0] * seq_p.ll - weights[1] * seq_g.ll)
    if scores[pred] == scores[gold]:
        return skip(case, "tie-with-gold")
    if scores[pred] - scores[gold] < NEAR_TIE:
        return skip(case, "near-tie")
    decision = (case, task, lm, options, doc, args, (pred, gold), (seq_p, seq_g), weights)
    if options.contrast == "sequence":
        return _sequence(*decision)
    if args[pred][0] != args[gold][0]:
        return _multiple_input_token(case, task, lm, options, doc, args[pred][0], pred, seq_p,
                                     seq_g, decision)
    t = first_difference(seq_p.ids, seq_g.ids)
    if t is None:
        if len(seq_p.ids) == len(seq_g.ids):
            return skip(case, "identical-sequences")
        return _decision_fallback(decision, "prefix-sequences", None)
    if t == 0:
        return skip(case, "diverge-at-first-token")
    if args[pred][0] == "" and t == 1 and seq_p.ids[0] == lm.prefix_token_id:
        return _decision_fallback(decision, "empty-context", None)
    token_delta = _token_delta(lm, seq_p, seq_g, t)
    if token_delta <= NEAR_TIE:  # the first differing token favours the gold answer
        return _decision_fallback(decision, "token-disagrees", token_delta)
    labels = _labels(lm, task, options, doc, args[pred][0], seq_p, pred)
    case.token_ids = seq_p.ids[seq_p.start:t]
    set_segments(case, labels[seq_p.start:t])
    case.position = len(case.token_ids)
    case.wrong_token_id, case.gold_token_id = seq_p.ids[t], seq_g.ids[t]
    set_evidence(case, lm, task, doc, args[pred][0], seq_p.ids[:seq_p.n_ctx], seq_p.start)
    note(case, rule="first-divergent-token", truncated_tokens=seq_p.start,
         token_delta=token_delta)
    return case


def _token_delta(lm, seq_p: Scored, seq_g: Scored, t: int) -> float:
    """logit[pred token] − logit[gold token] after ``seq_p.ids[start:t]`` (the token contrast's
    Δ). Same window on both sides: the difference of the two logged log-probs at t (same
    softmax), else one forward."""
    if seq_p.start == seq_g.start and t >= seq_p.n_ctx:
        return seq_p.token_logprobs[t - seq_p.n_ctx] - seq_g.token_logprobs[t - seq_g.n_ctx]
    return logit_gap(lm, seq_p.ids[seq_p.start:t], seq_p.ids[t], seq_g.ids[t])


def _decision_fallback(decision, why: str, token_delta: float | None) -> CaseDraft:
    """Rule ``decision-sequence``: the decision itself (``SequenceTarget`` weighted like the
    metric), when no token contrast agrees with it."""
    case = decision[0]
    case.contrast = "sequence"
    out = _sequence(*decision)
    note(out, rule="decision-sequence", replaced=why, replaced_token_delta=token_delta)
    return out


def gold_indices(gold, choices: list[str]) -> tuple[list[int], str]:
    """Valid gold indices the way lm-eval resolves them, and the reason when there are none."""
    targets = gold if isinstance(gold, (list, tuple)) else [gold]
    out, problem = [], "gold-out-of-range"
    for tgt in targets:
        if isinstance(tgt, str):
            if tgt in choices:
                out.append(choices.index(tgt))
            else:
                problem = "gold-not-in-choices"
        elif isinstance(tgt, (int, np.integer)) and not isinstance(tgt, bool) \
                and 0 <= int(tgt) < len(choices):
            out.append(int(tgt))
    return sorted(set(out)), problem


def _labels(lm, task, options, doc, context: str, seq: Scored, choice: int) -> list:
    ctx = seq.ids[: seq.n_ctx]
    return (context_token_labels(lm, task, options, context, ctx, doc, choice)
            + [CONT] * (len(seq.ids) - seq.n_ctx))


def _multiple_input_token(case, task, lm, options, doc, context, pred, seq_p, seq_g, decision):
    j = first_difference(seq_p.greedy, seq_g.greedy)
    if j is None:
        return _decision_fallback(decision, "same-predictions-both-contexts", None)
    t = seq_p.n_ctx + j
    token_delta = logit_gap(lm, seq_p.ids[seq_p.start:t], seq_p.greedy[j], seq_g.greedy[j])
    if token_delta <= NEAR_TIE:
        return _decision_fallback(decision, "token-disagrees", token_delta)
    labels = _labels(lm, task, options, doc, context, seq_p, pred)
    case.token_ids = seq_p.ids[seq_p.start:t]
    set_segments(case, labels[seq_p.start:t])
    case.position = len(case.token_ids)
    case.wrong_token_id, case.gold_token_id = seq_p.greedy[j], seq_g.greedy[j]
    note(case, rule="first-differing-prediction", continuation_position=j,
         truncated_tokens=seq_p.start, token_delta=token_delta)
    return case


def _sequence(case, task, lm, options, doc, args, idx, seqs, weights):
    (pred, _), (seq_p, seq_g) = idx, seqs
    if seq_p.ids == seq_g.ids:
        return skip(case, "identical-sequences")
    target = SequenceTarget(seq_p.ids[seq_p.start:], seq_p.n_ctx - seq_p.start,
                            seq_g.ids[seq_g.start:], seq_g.n_ctx - seq_g.start, *weights)
    t = first_difference(target.wrong_ids, target.gold_ids)
    labels = _labels(lm, task, options, doc, args[pred][0], seq_p, pred)
    case.token_ids = target.wrong_ids[:-1]
    set_segments(case, labels[seq_p.start: len(seq_p.ids) - 1])
    set_evidence(case, lm, task, doc, args[pred][0], seq_p.ids[:seq_p.n_ctx], seq_p.start)
    if t is not None:
        case.position = t
        case.wrong_token_id, case.gold_token_id = target.wrong_ids[t], target.gold_ids[t]
    else:  # one choice's tokens extend the other's: where the shorter one ends
        case.position = min(len(target.wrong_ids), len(target.gold_ids))
    note(case, rule="sequence-loglikelihood", target=target.to_params(),
         truncated_tokens=seq_p.start)
    return case
