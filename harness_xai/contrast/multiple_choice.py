"""Contrast cases for multiple-choice samples (``acc``): wrong choice vs gold choice.

Algorithm, per logged sample of a ``multiple_choice`` task:
1. Incorrect iff the sample's decision metric (default ``acc``) is 0.
2. Choice scores = ``filtered_resps`` log-likelihoods of the first ``len(choices)`` requests
   (``acc_mutual_info`` appends unconditional requests after them); pred = argmax.
3. Gold index from ``target`` (int, choice string, or a list: then the highest-scoring gold).
4. Rebuild both scored sequences ``context + continuation`` through the HFLM instance; ``t`` = first
   position where they differ. Input = tokens before ``t`` (left-truncated to ``max_length``),
   wrong = predicted sequence's token at ``t``, gold = gold sequence's token at ``t``.
5. Degenerate cases (tie, identical sequences, one a prefix of the other, contexts that differ per
   choice) become skipped cases with a machine-readable reason — never dropped.
"""

from __future__ import annotations

from harness_xai.contrast.scoring import model_window, scored_tokens
from harness_xai.records import PENDING, SKIPPED, CaseRecord


def multiple_choice_case(sample: dict, task, task_name: str, lm, metric: str = "acc"
                         ) -> CaseRecord | None:
    """The contrast case of one sample, or ``None`` if the model answered correctly."""
    if metric not in sample:
        return None
    if float(sample[metric]) != 0.0:
        return None
    doc = sample["doc"]
    choices = list(task.doc_to_choice(doc))
    args = [tuple(a) for a in sample["arguments"]][: len(choices)]
    lls = [float(r[0]) for r in sample["filtered_resps"]][: len(choices)]
    case = CaseRecord(task=task_name, doc_id=int(sample["doc_id"]), doc_hash=str(sample["doc_hash"]),
                      prompt_hash=str(sample["prompt_hash"]),
                      target_hash=str(sample["target_hash"]), filter=str(sample["filter"]),
                      metric=metric, status=PENDING, prompt=args[0][0] if args else "")
    pred = max(range(len(lls)), key=lambda i: lls[i])
    golds = _gold_indices(sample["target"], choices)
    if not golds:
        return _skip(case, "gold-not-in-choices")
    gold = max(golds, key=lambda i: lls[i])
    case.pred_index, case.gold_index = pred, gold
    case.pred_text, case.gold_text = args[pred][1], args[gold][1]
    case.prompt = args[pred][0]
    case.ll_pred, case.ll_gold = lls[pred], lls[gold]
    if pred in golds:
        return _skip(case, "tie-with-gold")
    if args[pred][0] != args[gold][0]:
        return _skip(case, "multiple-input-contexts")
    ctx_p, cont_p = scored_tokens(lm, *args[pred])
    ctx_g, cont_g = scored_tokens(lm, *args[gold])
    seq_p, seq_g = ctx_p + cont_p, ctx_g + cont_g
    t = next((i for i, (a, b) in enumerate(zip(seq_p, seq_g)) if a != b), None)
    if t is None:
        return _skip(case, "identical-sequences" if len(seq_p) == len(seq_g) else "prefix-sequences")
    if t == 0:
        return _skip(case, "diverge-at-first-token")
    case.token_ids = model_window(seq_p[:t], lm.max_length)
    case.position = t
    case.wrong_token_id, case.gold_token_id = seq_p[t], seq_g[t]
    return case


def _gold_indices(target, choices: list[str]) -> list[int]:
    targets = target if isinstance(target, (list, tuple)) else [target]
    out = []
    for tgt in targets:
        if isinstance(tgt, str) and tgt.strip().lstrip("-").isdigit() and tgt not in choices:
            tgt = int(tgt)
        if isinstance(tgt, int) and 0 <= tgt < len(choices):
            out.append(tgt)
        elif isinstance(tgt, str) and tgt in choices:
            out.append(choices.index(tgt))
    return sorted(set(out))


def _skip(case: CaseRecord, reason: str) -> CaseRecord:
    case.status, case.skip_reason = SKIPPED, reason
    return case
