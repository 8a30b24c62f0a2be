"""Contrast cases: every incorrect logged sample → one case (wrong vs gold token, or a skip reason).

Output types without a contrast yet are recorded as skipped with reason
``unsupported-output-type:<type>``; nothing incorrect is dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterator

from harness_xai.contrast.multiple_choice import multiple_choice_case
from harness_xai.records import SKIPPED, CaseRecord

#: metric that decides "incorrect" per output type (first one present in the sample wins)
DECISION_METRICS = {
    "multiple_choice": ("acc",),
    "loglikelihood": ("acc",),
    "generate_until": ("exact_match", "acc"),
}


def output_type(task) -> str:
    return getattr(task, "OUTPUT_TYPE", None) or task.config.output_type


def decision_metric(task, sample: dict | None = None, preferred: str = "acc") -> str | None:
    """The metric deciding incorrectness for ``task`` (``None``: no notion of correct, e.g. ppl)."""
    kind = output_type(task)
    candidates = (preferred,) if kind == "multiple_choice" else DECISION_METRICS.get(kind, ())
    if sample is None:
        return candidates[0] if candidates else None
    return next((m for m in candidates if m in sample), None)


def cases_for_task(task_name: str, task, samples: list[dict], lm, metric: str = "acc"
                   ) -> Iterator[CaseRecord]:
    """Cases for every incorrect sample of one task."""
    kind = output_type(task)
    for sample in samples:
        if kind == "multiple_choice":
            case = multiple_choice_case(sample, task, task_name, lm, metric)
            if case is not None:
                yield case
            continue
        used = decision_metric(task, sample)
        if used is None or float(sample[used]) != 0.0:
            continue
        yield CaseRecord(task=task_name, doc_id=int(sample["doc_id"]),
                         doc_hash=str(sample["doc_hash"]), prompt_hash=str(sample["prompt_hash"]),
                         target_hash=str(sample["target_hash"]), filter=str(sample["filter"]),
                         metric=used, status=SKIPPED,
                         skip_reason=f"unsupported-output-type:{kind}",
                         prompt=str(sample["arguments"][0][0]) if sample.get("arguments") else "")
