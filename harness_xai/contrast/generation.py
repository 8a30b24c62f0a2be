"""Contrast cases for ``generate_until`` samples (GSM8K-style, with regex answer filters).

Algorithm, per logged sample (one per filter) whose ``exact_match`` (or ``acc``) is 0:
1. lm-eval's own generation, recorded during the run with its exact ids
   (``lmeval_hook.generations``; kept only if the ids decode and post-process to the logged
   response). Without one (e.g. lm-eval's request cache) regenerate greedily through the HFLM
   instance: ``lm.generate_until`` on the same context and generation kwargs, with
   ``lm._model_generate`` shadowed for the call to keep the exact token ids (context after
   lm-eval's left truncation, generated ids). Re-tokenizing decoded text does not reproduce
   them. The regenerated text must equal the logged response, else skip
   ``regeneration-mismatch`` (e.g. sampling, or a batch-dependent numerical flip). One
   generation per document serves all its filters.
2. Locate the answer span the filter extracted in the raw generation: a ``regex`` filter is
   re-run with match positions (same ``group_select``, same group choice, same strip); otherwise
   the first occurrence of the extracted text.
3. Gold answer = the sample's target passed through the same filter pipeline (GSM8K:
   "…#### 18" → "18"); if the filter finds nothing in it, the target itself. Several targets:
   the one whose contrast has the smallest Δℓ (the gold closest to the model's choice).
4. k = last generated-token boundary at or before the answer start; the model's tokens from k on
   are compared with the tokenization of ``generation[boundary:answer start] + gold answer`` —
   the gold answer written in the model's own context. j = first differing token; context =
   prompt + the model's generated tokens before it; wrong = the model's token, gold = the gold
   answer's token.
5. Invalid extraction (the filter's fallback, e.g. ``[invalid]``; the model never wrote an
   answer in the expected form). Documented fallback, rule ``invalid-extraction:full-target``:
   the whole generation is compared with the full target as the task writes it after the prompt
   (target delimiter + ``doc_to_target``), i.e. the first token where the model leaves the
   reference solution.
5b. Unit-test metrics (HumanEval ``pass@1``, MBPP ``pass_at_1``): no answer span; the gold is the
   doc's reference solution (rule ``reference-solution:full-target``, ``reference_solution``):
   the first token where the model's code leaves code that passes the tests.
5c. Instruction checks (IFEval ``prompt_level_strict_acc`` …) have no reference: the gold is the
   compliant edit of the response closest to the model's choice (rule
   ``instruction-repair:full-target``, ``contrast.instructions``): the model's tokens up to the
   edit, the edit, end-of-sequence; edits ordered by Δℓ at their first differing token, those
   below ``NEAR_TIE`` left out (all of them → ``near-tie``), the first the task's own checks
   accept is taken (none → ``no-compliant-edit:<metric>``; raised → ``repair-failed``). Docs without
   instruction lists: skip ``no-reference-answer:<metric>``. With ``--xai-rollouts`` a flip found
   by the model's own continuation replaces either (``first_error``).
6. Other degenerate outcomes are skips: ``answer-not-located``, ``gold-answer-is-prefix`` (the
   model's tokens agree with the whole gold answer and go on), ``generation-ended`` (the model
   stopped inside the gold answer without a differing token), ``thinking-answer-not-located``.
7. Sequence mode: Δ = log p(model's answer tokens from the divergence) − log p(gold tokens
   from the divergence), same prefix (``SequenceTarget``). With the invalid-extraction rule both
   sides are cut to the same number of tokens (at most what the model generated), so the two
   sums are comparable.
Thinking models (the HFLM's ``think_end_token``, string or id): the logged response is only the
answer lm-eval scored; the raw generation is the decode of the regenerated ids. Its tokens are
labelled reasoning (per step) / think-marker / answer (``reasoning.generated_segments``), the
answer spans of steps 2–5 are found in the scored answer and shifted past the reasoning, so the
reasoning is context of the contrast; the invalid-extraction rule compares from the answer's
start. Unclosed thinking: lm-eval scores the whole text, and so does the contrast.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

from harness_xai.contrast.case import (CaseDraft, Options, context_token_labels, new_case, note,
                                       set_evidence, set_segments, skip, truncation_note)
from harness_xai.contrast.instructions import RULE as REPAIR_RULE
from harness_xai.contrast.instructions import (closest_accepted, is_instruction_doc, own_tokens,
                                               propose_edits)
from harness_xai.contrast.reasoning import generated_segments, scored_text_view
from harness_xai.contrast.rollouts import task_scorer
from harness_xai.contrast.scoring import first_difference, window_start
from harness_xai.records import SequenceTarget

GEN = ("generated", None)
#: metrics that compare no reference answer (unit tests run, instructions checked): no gold
#: token to contrast with; the first-error localiser (``rollouts``) is what explains them
NO_REFERENCE = re.compile(r"^(pass@\d+|pass_at_\d+|(prompt|inst)_level_(strict|loose)_acc)$")


@dataclass
class Generation:
    context_ids: list[int]  # (n_ctx,) after lm-eval's left truncation
    ids: list[int]  # (n_gen,) generated token ids
    text: str  # lm-eval's post-processed response


def generation_case(sample: dict, task, task_name: str, lm, options: Options,
                    cache: dict) -> CaseDraft | None:
    metric = options.metric_name
    context, gen_kwargs = sample["arguments"][0][0], sample["arguments"][0][1]
    raw, extracted = sample["resps"][0][0], sample["filtered_resps"][0]
    case = new_case(sample, task_name, "generate_until", metric, options.contrast, prompt=context)
    case.pred_text = extracted if isinstance(extracted, str) else str(extracted)
    max_gen = gen_kwargs.get("max_gen_toks", getattr(lm, "max_gen_toks", 256))
    note(case, truncation=truncation_note(lm, None, sample["doc"], context, int(max_gen)))
    solution = reference_solution(metric, sample["doc"])  # code tasks: the doc's solution
    repair = bool(NO_REFERENCE.match(metric)) and solution is None  # instruction checks (IFEval)
    if repair and not is_instruction_doc(sample["doc"]):
        return skip(case, f"no-reference-answer:{metric}")
    doc_id = int(sample["doc_id"])
    if doc_id not in cache:  # lm-eval's own ids if recorded (step 1), else a regeneration
        cache[doc_id] = recorded(lm, options, context, raw) or regenerate(lm, context, gen_kwargs)
    gen = cache[doc_id]
    if gen is None or gen.text != raw:
        return skip(case, "regeneration-mismatch")
    dec = [lm.tok_decode(gen.ids[:i]) for i in range(len(gen.ids) + 1)]  # prefix decodings
    text, shift, gen_labels = raw, 0, [GEN] * len(gen.ids)
    think_end = getattr(lm, "think_end_token", None)
    if think_end is not None:  # raw = the scored answer; text = reasoning + answer
        parts = generated_segments(lm.tok_decode, gen.ids, think_end, prefixes=dec,
                                   steps=options.reasoning_steps)
        text = scored_text_view(parts, raw)
        if text is None:
            return skip(case, "thinking-answer-not-located")
        shift, gen_labels = parts.answer_start, list(parts.labels)
        note(case, thinking=parts.notes(think_end))
    note(case, generation=text)  # the report shows the model's whole generation
    ensemble = next((f for f in getattr(task, "_filters", []) if f.name == sample["filter"]), None)
    targets = _targets(task, sample)
    scored = _scored_span(task, sample, raw)
    span = locate_answer(raw, extracted, ensemble) if scored is None else scored
    full = dec[-1]
    if repair:  # step 5c: compliant edits of the scored response (contrast.instructions)
        edits = propose_edits(sample, metric, raw, dec, full, shift)
        note(case, repair=edits.notes())
        if edits.reason:
            return skip(case, edits.reason)
        rule, span, golds = REPAIR_RULE, (0, 0), list(edits.texts)
    elif solution is not None:  # unit tests decide; the reference solution passes them
        rule, span, golds = "reference-solution:full-target", (0, 0), [solution]
    elif scored is not None:  # the extraction lives in process_results (MATH's final answer)
        from harness_xai.contrast.answer import gold_answers

        rule, golds = "answer-span:process-results", gold_answers(task, sample["doc"])
    elif _is_fallback(extracted, ensemble) or not str(extracted).strip() or \
            _extraction_failed(task, sample, raw):
        rule, span = "invalid-extraction:full-target", (0, 0)
        golds = [_delimited(task, context, t) for t in targets]
    elif span is not None:
        rule, golds = "answer-span", [_filter_text(ensemble, t, sample["doc"]) for t in targets]
    else:
        return skip(case, "answer-not-located")
    span = (span[0] + shift, span[1] + shift)  # in the raw generation (past the reasoning)
    k = max(i for i in range(len(dec)) if len(dec[i]) <= span[0] and full.startswith(dec[i]))
    bridge = text[len(dec[k]): span[0]]
    model = gen.ids[k:]
    options_found, reasons = [], []
    own = own_tokens(lm, dec, gen.ids, k, full) if rule == REPAIR_RULE else None
    for gold in golds:
        if own is not None:  # the model's own tokens as far as the edit keeps its text
            gold_ids = own(dec[k] + bridge + gold)
        else:
            gold_ids = lm.tok_encode(bridge + gold, add_special_tokens=False)
        j = first_difference(model, gold_ids)
        if j is None:
            reasons.append("gold-answer-is-prefix" if len(gold_ids) <= len(model)
                           else "generation-ended")
            continue
        options_found.append((gold, gold_ids, j))
    if not options_found:
        return skip(case, reasons[0] if reasons else "no-gold-answer")
    prefix_all = gen.context_ids + gen.ids
    base = len(gen.context_ids) + k
    if rule == REPAIR_RULE:  # the closest edit the task's own checks accept
        score = task_scorer(task, sample["doc"], sample["filter"], metric,
                            None if options.primary is None or options.primary.kind == "binary"
                            else options.threshold)
        chosen, info, reason = closest_accepted(
            _ranked(lm, prefix_all, base, model, options_found), score, metric)
        note(case, repair={**edits.notes(), **info})
        if chosen is None:
            return skip(case, reason)
        gold, gold_ids, j = chosen
    else:
        gold, gold_ids, j = _closest(lm, prefix_all, base, model, options_found)
    t = len(gen.context_ids) + k + j
    case.gold_text = gold
    labels = context_token_labels(lm, task, options, context, gen.context_ids, sample["doc"])
    labels += gen_labels
    case.wrong_token_id, case.gold_token_id = model[j], gold_ids[j]
    if options.contrast == "token":
        case.token_ids = prefix_all[:t]
        set_segments(case, labels[:t])
        set_evidence(case, lm, task, sample["doc"], context, gen.context_ids)
        case.position = t
        note(case, rule=rule, answer_start=span[0], answer_token=k, generated_prefix=k + j)
        return case
    if rule == "answer-span":
        end, gold_rest = _answer_end(dec, full, span[1], k + j), gold_ids[j:]
    else:  # equal numbers of tokens on both sides (comparable sums), at most the generation's
        m = min(len(gold_ids), len(model)) - j
        end, gold_rest = k + j + m, gold_ids[j: j + m]
    wrong_full, gold_full = prefix_all[: end + len(gen.context_ids)], prefix_all[:t] + gold_rest
    w0, g0 = (window_start(len(s), lm.max_length) for s in (wrong_full, gold_full))
    spec = SequenceTarget(wrong_full[w0:], t - w0, gold_full[g0:], t - g0)
    case.token_ids = spec.wrong_ids[:-1]
    set_segments(case, labels[w0: len(wrong_full) - 1])
    set_evidence(case, lm, task, sample["doc"], context, gen.context_ids, w0)
    case.position = t - w0
    note(case, rule=rule, answer_start=span[0], answer_token=k, generated_prefix=k + j,
         target=spec.to_params(), truncated_tokens=w0)
    return case


#: code tasks' reference solutions (HumanEval ``canonical_solution``, MBPP ``code``): the text the
#: doc says continues the prompt and passes the unit tests
SOLUTION_FIELDS = ("canonical_solution", "code")


def reference_solution(metric: str, doc: dict) -> str | None:
    """Step 5b: for a unit-test metric (``pass@k``, ``pass_at_k``) the doc's reference solution,
    the gold of rule ``reference-solution:full-target`` (the first token where the model's code
    leaves it); None for other metrics or docs without one."""
    if not re.match(r"^pass(@|_at_)\d+$", metric) or not isinstance(doc, dict):
        return None
    found = next((doc[f] for f in SOLUTION_FIELDS if isinstance(doc.get(f), str) and doc[f]), None)
    return found  # verbatim, as the task's few-shot targets write it


def _scored_span(task, sample: dict, raw: str) -> tuple[int, int] | None:
    """Step 2 for tasks that extract inside ``process_results`` (a registered locator in
    ``answer``: MATH's "Final Answer: …"): the span that locator found, else None."""
    from harness_xai.contrast.answer import UNKNOWN_EXTRACTION, answer_span

    if not callable(getattr(task.config, "process_results", None)):
        return None
    span = answer_span(task, sample["doc"], raw, sample["filter"])
    if not span.found or span.reason == UNKNOWN_EXTRACTION or span.how in ("whole", "custom"):
        return None
    if "substring" in span.how or "whole_response" in span.how:
        return None
    start, end = span.start, span.end
    if end - start > 2 and raw[start] == "$" and raw[end - 1] == "$":  # "$7$": MATH's
        start, end = start + 1, end - 1  # normaliser drops the math delimiters; the gold has none
    return start, end


def _extraction_failed(task, sample: dict, raw: str) -> bool:
    """The task's own process_results extraction found no answer (MATH without "Final Answer")."""
    from harness_xai.contrast.answer import NO_MATCH, answer_span

    if not callable(getattr(task.config, "process_results", None)):
        return False
    span = answer_span(task, sample["doc"], raw, sample["filter"])
    return not span.found and span.reason == NO_MATCH


class _Request:
    def __init__(self, args: tuple) -> None:
        self.args = args


def recorded(lm, options: Options, context: str, raw: str) -> Generation | None:
    """Step 1 without a model call: lm-eval's own generation of ``context``, recorded during the
    run, if its ids decode and post-process to the logged response ``raw``."""
    from harness_xai.lmeval_hook.generations import exact_generation

    record = options.prompts.get(context)
    found = exact_generation(lm, getattr(record, "generations", ()), context, raw)
    return None if found is None else Generation(*found)


def regenerate(lm, context: str, gen_kwargs: dict) -> Generation | None:
    """Step 1: the greedy generation of ``context`` with its exact token ids."""
    seen: dict = {}
    had_own = "_model_generate" in vars(lm)
    original = lm._model_generate

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        seen["context"] = kwargs["context"] if "context" in kwargs else args[0]
        seen["out"] = out
        return out

    lm._model_generate = recording
    batch_size = getattr(lm, "batch_size_per_gpu", None)
    if batch_size == "auto":  # one request: no batch-size detection passes
        lm.batch_size_per_gpu = 1
    try:
        text = lm.generate_until([_Request((context, copy.deepcopy(gen_kwargs)))],
                                 disable_tqdm=True)[0]
    finally:
        if had_own:
            lm._model_generate = original
        else:
            del lm._model_generate
        if batch_size == "auto":
            lm.batch_size_per_gpu = batch_size
    if "out" not in seen or seen["context"].shape[0] != 1:
        return None
    ctx = [int(x) for x in seen["context"][0]]
    out = [int(x) for x in seen["out"][0]]
    return Generation(context_ids=ctx, ids=out[len(ctx):], text=text)


def locate_answer(raw: str, extracted, ensemble) -> tuple[int, int] | None:
    """Step 2: character span of the extracted answer inside the raw generation."""
    if not isinstance(extracted, str) or not extracted:
        return None
    from lm_eval.filters.extraction import MultiChoiceRegexFilter, RegexFilter

    for make in getattr(ensemble, "filters", []) if ensemble is not None else []:
        f = make()
        if isinstance(f, RegexFilter) and not isinstance(f, MultiChoiceRegexFilter):
            matches = list(f.regex.finditer(raw))
            if not matches:
                break
            try:
                m = matches[f.group_select]
            except IndexError:
                break
            if f.regex.groups == 0:
                s, e = m.span(0)
            else:
                found = [g for g in range(1, f.regex.groups + 1) if m.group(g)]
                if not found:
                    break
                s, e = m.span(found[0] if f.regex.groups > 1 else 1)
            text = raw[s:e]
            s += len(text) - len(text.lstrip())
            e = s + len(text.strip())
            if raw[s:e] == extracted:
                return s, e
            break
    at = raw.find(extracted)
    return (at, at + len(extracted)) if at >= 0 else None


def _targets(task, sample: dict) -> list[str]:
    gold = sample["target"]
    if task.config.doc_to_choice is not None:
        choices = task.doc_to_choice(sample["doc"])
        gold = [choices[g] for g in gold] if isinstance(gold, list) else choices[gold]
    return [str(g) for g in (gold if isinstance(gold, list) else [gold])]


def _filter_text(ensemble, text: str, doc: dict) -> str:
    if ensemble is None:
        return text
    resps: object = [[text]]
    for make in ensemble.filters:
        resps = make().apply(resps, [doc])
    out = list(resps)[0]
    out = out[0] if isinstance(out, list) else out
    return out if isinstance(out, str) and out and not _is_fallback(out, ensemble) else text


def _is_fallback(text, ensemble) -> bool:
    fallbacks = {getattr(make(), "fallback", None) for make in getattr(ensemble, "filters", [])}
    return isinstance(text, str) and text in {f for f in fallbacks if isinstance(f, str)}


def _delimited(task, context: str, target: str) -> str:
    delim = task.config.target_delimiter or ""
    if not context or context[-1].isspace() or (target and target[0].isspace()):
        return target
    return delim + target


def _closest(lm, prefix_all, base, model, found):
    """Step 3: among several gold answers, the one with the smallest Δℓ at its divergence."""
    return found[0] if len(found) == 1 else _ranked(lm, prefix_all, base, model, found)[0][1]


def _ranked(lm, prefix_all, base, model, found) -> list[tuple[float, tuple]]:
    """(Δℓ, option) for every gold option, smallest Δℓ first (one forward of the generation)."""
    import torch

    with torch.no_grad():
        logits = lm._model_call(torch.tensor([prefix_all], device=lm.device))[0]  # (n, vocab)
    gaps = []
    for item in found:
        _, gold_ids, j = item
        row = logits[base + j - 1]
        gaps.append((float(row[model[j]] - row[gold_ids[j]]), item))
    return sorted(gaps, key=lambda pair: pair[0])


def _answer_end(dec: list[str], full: str, answer_end: int, at_least: int) -> int:
    """Number of generated tokens that covers the answer (>= at_least + 1)."""
    for i in range(at_least + 1, len(dec)):
        if len(dec[i]) >= answer_end and full.startswith(dec[i][:answer_end]):
            return i
    return len(dec) - 1
