"""Contrast cases: every incorrect logged sample → one case (a contrast to attribute, or a skip).

Per output type (each builder documents its algorithm):
- ``multiple_choice`` (``multiple_choice``): predicted vs gold choice; ``acc`` or ``acc_norm``
  decides; multiple-input tasks (Winogrande) included.
- ``loglikelihood`` (``loglikelihood``): first target token that is not the greedy token.
- ``generate_until`` (``generation``): first token where the model's answer leaves the gold
  answer, after greedy regeneration with exact ids.
- ``loglikelihood_rolling``: perplexity only, no notion of a wrong answer: every sample is
  recorded as skipped with reason ``no-contrast:loglikelihood_rolling``.
Two contrast modes (``Options.contrast``): ``token`` (one logit difference at one position,
attributed by the engine) and ``sequence`` (difference of the two continuations' summed
log-probs, attributed by ``sequence.attribute_sequence``). Every case carries ``output_type``,
``contrast``, token ``segments``, ``ll_error`` where lm-eval logged log-likelihoods, and how it was
built in ``method_params["contrast"]``; nothing incorrect is dropped silently. Docs that record an
``evidence_span`` give ``evidence_positions`` (``evidence``).
"""

from __future__ import annotations

from collections.abc import Iterator

from harness_xai.contrast.case import CONTRASTS, MC_METRICS, Options, new_case, skip
from harness_xai.contrast.generation import generation_case
from harness_xai.contrast.loglikelihood import loglikelihood_case
from harness_xai.contrast.multiple_choice import multiple_choice_case
from harness_xai.contrast.sequence import (SequenceTarget, attribute_sequence,
                                           attribute_sequence_case)
from harness_xai.records import CaseRecord

__all__ = ["CONTRASTS", "MC_METRICS", "Options", "SequenceTarget", "attribute_case",
           "attribute_sequence", "attribute_sequence_case", "cases_for_task", "decision_metric",
           "output_type"]

#: metric that decides "incorrect" per output type (first one present in the sample wins)
DECISION_METRICS = {
    "multiple_choice": ("acc", "acc_norm"),
    "loglikelihood": ("acc",),
    "generate_until": ("exact_match", "acc"),
}


def output_type(task) -> str:
    return getattr(task, "OUTPUT_TYPE", None) or task.config.output_type


def decision_metric(task, sample: dict | None = None, preferred: str = "acc") -> str | None:
    """The metric deciding incorrectness for ``task`` (``None``: no notion of correct, e.g. ppl)."""
    kind = output_type(task)
    candidates = DECISION_METRICS.get(kind, ())
    if kind == "multiple_choice":
        candidates = (preferred, *[m for m in candidates if m != preferred])
    if sample is None:
        return candidates[0] if candidates else None
    return next((m for m in candidates if m in sample), None)


def cases_for_task(task_name: str, task, samples: list[dict], lm, metric: str = "acc",
                   contrast: str = "token", prompts: dict | None = None) -> Iterator[CaseRecord]:
    """Cases for every incorrect sample of one task (``prompts``: ``Captured.prompts[task]``)."""
    options = Options(metric=metric, contrast=contrast, prompts=prompts or {})
    kind = output_type(task)
    generations: dict = {}  # doc_id → regeneration, shared by a document's filters
    for sample in samples:
        if kind == "multiple_choice":
            case = multiple_choice_case(sample, task, task_name, lm, options)
        elif kind == "loglikelihood":
            case = loglikelihood_case(sample, task, task_name, lm, options)
        elif kind == "generate_until":
            case = generation_case(sample, task, task_name, lm, options, generations)
        elif kind == "loglikelihood_rolling":
            metrics = sample.get("metrics") or [""]
            case = skip(new_case(sample, task_name, kind, str(metrics[0]), contrast,
                                 prompt=_first_argument(sample)),
                        "no-contrast:loglikelihood_rolling")
        else:
            used = decision_metric(task, sample)
            if used is None or float(sample[used]) != 0.0:
                continue
            case = skip(new_case(sample, task_name, kind, used, contrast,
                                 prompt=_first_argument(sample)),
                        f"unsupported-output-type:{kind}")
        if case is not None:
            yield case


def attribute_case(case: CaseRecord, model, tokenizer, method: str = "attnlrp") -> bool:
    """Attribute a sequence-contrast case in place; ``False`` for token cases (the engine's)."""
    if case.contrast != "sequence":
        return False
    attribute_sequence_case(case, model, tokenizer, method)
    return True


def _first_argument(sample: dict) -> str:
    args = sample.get("arguments") or []
    return str(args[0][0]) if args and args[0] else ""
