"""First-error contrasts for generations: the rollout localiser (``rollouts``) wired into a run.

The ``generate_until`` builder (``generative_case``, registered in ``contrast``). Without
``--xai-rollouts`` it is ``generation.generation_case``. With ``--xai-rollouts N``
(``Options.rollouts``), for every incorrect generation:
1. the case is first built as without rollouts (``generation_case``: the final-answer contrast,
   or a skip such as ``no-reference-answer:pass@1``): the fallback;
2. the exact greedy generation is recovered (``generation.regenerate``, once per document through
   ``cache``); a regeneration that differs from the logged response keeps the fallback;
3. code tasks (lm-eval's ``unsafe_code``) are rolled out only when the run may execute code:
   lm-eval's ``confirm_run_unsafe_code`` and ``HF_ALLOW_CODE_EVAL=1`` (``Options.allow_code``),
   else the fallback with reason ``code-eval-not-allowed``; model code never runs otherwise;
4. the task's own scorer (``rollouts.task_scorer``: the sample's filter, the deciding metric and
   threshold) must call the model's own generation incorrect, else ``scorer-disagrees``;
5. ``rollouts.first_error`` over the generated tokens up to the one that completed a stop string
   (later tokens are never scored): the model's top-``TOP_K`` alternatives at the lowest-margin
   positions, at most N rollouts, each continued greedily for ``--xai-rollout-tokens`` tokens and
   at most the generation's own remaining budget (max_gen_toks − t − 1), in batches of lm-eval's
   batch size (``DEFAULT_BATCH`` when it is 1 or auto); the filters of one document share the
   continuations (``cache``), each scores them with its own extraction;
6. a flip at generated position t with alternative a: the case is the token contrast
   ``Δ = logit[g_t] − logit[a]`` after ``context + g_<t`` (rule ``first-error:rollout``); g_t is
   the model's greedy token there, so Δ ≥ 0; the gold text is the rollout's (for instruction
   checks it replaces the compliant edit of ``instructions``). No flip: the fallback, with
   ``built["contrast"]["first_error"]["fallback"] = "first-error-fallback:<reason>"`` (e.g.
   ``no_flip_within_budget``); a reference-free fallback skip (``no-reference-answer:M``) becomes
   the skip ``<reason>:M`` (e.g. ``no-flip-within-budget:pass@1``).
Every rollout tried travels with the case (``Case.rollouts`` → store table ``rollouts``).
"""

from __future__ import annotations

from harness_xai.contrast.case import (CaseDraft, Options, context_token_labels, note,
                                       set_evidence, set_segments)
from harness_xai.contrast.generation import (Generation, generation_case, recorded,
                                             regenerate)
from harness_xai.contrast.instructions import RULE as REPAIR_RULE
from harness_xai.contrast.reasoning import generated_labels
from harness_xai.records import PENDING, SKIPPED, Rollout

TOP_K = 5  # the model's top-5 tokens: up to 4 alternatives per position
DEFAULT_BATCH = 8  # rollouts per batched generate call when lm-eval's batch size is 1 / auto
ROLLOUT_RULE = "first-error:rollout"
NO_REFERENCE_SKIP = "no-reference-answer:"


def generative_case(sample: dict, task, task_name: str, lm, options: Options,
                    cache: dict) -> CaseDraft | None:
    """The ``generate_until`` contrast builder (module docstring)."""
    fallback = generation_case(sample, task, task_name, lm, options, cache)
    if not options.rollouts or fallback is None:
        return fallback
    return first_error_case(sample, task, lm, options, cache, fallback)


def first_error_case(sample: dict, task, lm, options: Options, cache: dict,
                     case: CaseDraft) -> CaseDraft:
    """Steps 2–6 on ``case`` (the fallback built by ``generation_case``)."""
    from harness_xai.contrast.rollouts import first_error, task_scorer

    gen = _generation(sample, lm, options, cache)
    if gen is None:
        return _fallback(case, "regeneration-mismatch")
    note(case, generation=gen.text)
    if getattr(task, "UNSAFE_CODE", False) and not options.allow_code:
        return _fallback(case, "code-eval-not-allowed")
    context, gen_kwargs = sample["arguments"][0][0], sample["arguments"][0][1]
    max_gen = int(gen_kwargs.get("max_gen_toks", getattr(lm, "max_gen_toks", 256)))
    until = _until(lm, gen_kwargs)
    think_end = _think_end(lm)
    generated = _scored_prefix(lm, gen.ids, until)
    tokens = options.rollout_tokens or max_gen
    budget = {"max_rollouts": options.rollouts, "rollout_tokens": tokens, "top_k": TOP_K,
              "scored_tokens": len(generated)}
    try:
        binary = options.primary is not None and options.primary.kind == "binary"
        score = task_scorer(task, sample["doc"], sample["filter"], options.metric_name,
                            None if binary else options.threshold)
        if score(gen.text):
            return _fallback(case, "scorer-disagrees", **budget)
        result = first_error(lm.model, lm.tokenizer, gen.context_ids, generated, score,
                             top_k=TOP_K, max_rollouts=options.rollouts, max_rollout_tokens=tokens,
                             batch_size=_batch_size(lm, options.rollouts), until=until,
                             think_end=think_end, eos_token_id=lm.eot_token_id,
                             pad_token_id=_pad(lm), max_generated=max_gen,
                             max_length=lm.max_length,
                             memo=cache.setdefault(("rollouts", int(sample["doc_id"])), {}))
    except Exception as exc:  # a scorer that breaks must not lose a finished evaluation
        return _fallback(case, "scoring-failed", error=f"{type(exc).__name__}: {exc}"[:300], **budget)
    case.rollouts = [Rollout(position=r.position, model_token_id=generated[r.position],
                             model_token=lm.tokenizer.decode([generated[r.position]]),
                             alternative_token_id=r.alternative,
                             alternative_token=lm.tokenizer.decode([r.alternative]),
                             rank=r.rank, margin=result.margins[r.position], correct=r.correct,
                             text=r.text, n_tokens=len(r.ids) - r.position - 1)
                     for r in result.rollouts]
    budget.update(rollouts=len(result.rollouts), candidates=list(result.candidates))
    if not result.found:
        return _fallback(case, result.reason, **budget)
    return _flip(case, sample, task, lm, options, gen, result, budget)


def _flip(case: CaseDraft, sample: dict, task, lm, options: Options, gen: Generation, result,
          budget: dict) -> CaseDraft:
    """Step 6: the draft becomes the token contrast at the first error."""
    t, context = result.position, sample["arguments"][0][0]
    before = case.method_params.get("contrast", {})
    replaced = case.skip_reason if case.status == SKIPPED else before.get("rule")
    case.status, case.skip_reason, case.contrast = PENDING, None, "token"
    case.token_ids = gen.context_ids + gen.ids[:t]
    labels = context_token_labels(lm, task, options, context, gen.context_ids, sample["doc"])
    steps = generated_labels(lm, gen.ids, steps=options.reasoning_steps)
    set_segments(case, labels + steps[:t])  # reasoning steps if any
    set_evidence(case, lm, task, sample["doc"], context, gen.context_ids)
    case.position = len(case.token_ids)
    case.wrong_token_id, case.gold_token_id = result.model_token, result.alternative
    if case.gold_text is None or replaced == REPAIR_RULE:  # the text that scored correct
        case.gold_text = next(r.text for r in result.rollouts if r.correct)
    case.method_params["contrast"] = {
        **{k: before[k] for k in ("truncation", "generation") if k in before},
        "rule": ROLLOUT_RULE, "generated_prefix": t, "replaces": replaced,
        "first_error": {"found": True, "position": t, **budget}}
    return case


def _fallback(case: CaseDraft, reason: str, **info) -> CaseDraft:
    """No first error found: the case as built without rollouts, with the reason recorded."""
    note(case, first_error={"found": False, "reason": reason,
                            "fallback": f"first-error-fallback:{reason}", **info})
    if case.status == SKIPPED and (case.skip_reason or "").startswith(NO_REFERENCE_SKIP):
        metric = case.skip_reason[len(NO_REFERENCE_SKIP):]
        case.skip_reason = f"{reason.replace('_', '-')}:{metric}"
    return case


def _generation(sample: dict, lm, options: Options, cache: dict) -> Generation | None:
    """The exact greedy generation of the sample (shared with ``generation_case`` per doc):
    lm-eval's own recorded ids, else a regeneration."""
    doc_id = int(sample["doc_id"])
    if doc_id not in cache:
        context, gen_kwargs = sample["arguments"][0][0], sample["arguments"][0][1]
        cache[doc_id] = (recorded(lm, options, context, sample["resps"][0][0])
                         or regenerate(lm, context, gen_kwargs))
    gen = cache[doc_id]
    return gen if isinstance(gen, Generation) and gen.text == sample["resps"][0][0] else None


def _scored_prefix(lm, ids: list[int], until: list[str]) -> list[int]:
    """The generated ids up to the one that completes the first stop string (inclusive)."""
    for i in range(1, len(ids) + 1):
        text = lm.tokenizer.decode(ids[:i])
        if any(stop and stop in text for stop in until):
            return list(ids[:i])
    return list(ids)


def _until(lm, gen_kwargs: dict) -> list[str]:
    """The stop strings HFLM.generate_until used (the task's ``until`` plus the EOS text)."""
    from lm_eval.models.utils import handle_stop_sequences

    eos = lm.tok_decode(lm.eot_token_id, skip_special_tokens=False)
    return handle_stop_sequences(gen_kwargs.get("until"), eos=eos)


def _think_end(lm) -> str | None:
    token = getattr(lm, "think_end_token", None)
    if isinstance(token, int):
        return lm.tok_decode([token], skip_special_tokens=False)
    return token


def _pad(lm) -> int:
    pad = getattr(lm.tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else int(lm.eot_token_id)


def _batch_size(lm, max_rollouts: int) -> int:
    """lm-eval's own batch size when it is a number above 1, else ``DEFAULT_BATCH``."""
    size = getattr(lm, "batch_size_per_gpu", None)
    size = int(size) if isinstance(size, int) or str(size).isdigit() else 0
    return max(1, min(max_rollouts, size if size > 1 else DEFAULT_BATCH))
