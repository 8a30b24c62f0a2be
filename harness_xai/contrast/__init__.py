"""Contrast cases: every incorrect logged sample → one case (a contrast to attribute, or a skip).

Per output type (each builder documents its algorithm):
- ``multiple_choice`` (``multiple_choice``): predicted vs gold choice; ``acc`` or ``acc_norm``
  decides; multiple-input tasks (Winogrande) included.
- ``loglikelihood`` (``loglikelihood``): first target token that is not the greedy token.
- ``generate_until`` (``generation``): first token where the model's answer leaves the gold
  answer, after greedy regeneration with exact ids.
- ``loglikelihood_rolling``: perplexity only, no notion of a wrong answer: every sample is
  recorded as skipped with reason ``no-contrast:loglikelihood_rolling``.
Two contrast modes (``Options.contrast``): ``token`` (one logit difference at one position) and
``sequence`` (difference of the two continuations' summed log-probs); ``Case.objective`` says
which, and the engine (``harness_xai.lrp.explain``) explains either. Every case carries
``output_type``, ``contrast``, token ``segments``, ``ll_error`` where lm-eval logged
log-likelihoods, and how it was built in ``built["contrast"]``; nothing incorrect is dropped
silently. Docs that record an ``evidence_span`` give ``evidence_positions`` (``evidence``).

Builders are a registry keyed by lm-eval output type: ``register_contrast(output_type, builder)``
— the built-ins register through that same call below. A builder is
``builder(sample, task, task_name, lm, options, cache) -> CaseDraft | None`` (None: the sample is
correct); ``cache`` is one dict per task and run (e.g. one regeneration per document).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from harness_xai.contrast.case import CONTRASTS, MC_METRICS, CaseDraft, Options, new_case, skip
from harness_xai.contrast.generation import generation_case
from harness_xai.contrast.loglikelihood import loglikelihood_case
from harness_xai.contrast.multiple_choice import multiple_choice_case
from harness_xai.records import Case
from harness_xai.registry import Registry

__all__ = ["CONTRASTS", "CONTRAST_BUILDERS", "MC_METRICS", "CaseDraft", "Options",
           "cases_for_task", "decision_metric", "new_case", "output_type", "register_contrast",
           "skip"]

#: metric that decides "incorrect" per output type (first one present in the sample wins)
DECISION_METRICS = {
    "multiple_choice": ("acc", "acc_norm"),
    "loglikelihood": ("acc",),
    "generate_until": ("exact_match", "acc"),
}

Builder = Callable[..., "CaseDraft | None"]
#: lm-eval output type → contrast builder
CONTRAST_BUILDERS: Registry[Builder] = Registry(
    "output type", "Register a builder with harness_xai.contrast.register_contrast.")


def register_contrast(output_type: str, builder: Builder, *, overwrite: bool = False) -> Builder:
    """Use ``builder`` for every sample of tasks with this lm-eval ``output_type`` (a taken type
    is refused unless ``overwrite=True``)."""
    return CONTRAST_BUILDERS.register(output_type, builder, overwrite=overwrite)


def perplexity_case(sample, task, task_name, lm, options, cache) -> CaseDraft:
    """``loglikelihood_rolling``: no notion of a wrong answer, recorded as a skip."""
    metrics = sample.get("metrics") or [""]
    return skip(new_case(sample, task_name, "loglikelihood_rolling", str(metrics[0]),
                         options.contrast, prompt=_first_argument(sample)),
                "no-contrast:loglikelihood_rolling")


register_contrast("multiple_choice", multiple_choice_case)
register_contrast("loglikelihood", loglikelihood_case)
register_contrast("generate_until", generation_case)
register_contrast("loglikelihood_rolling", perplexity_case)


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
                   contrast: str = "token", prompts: dict | None = None) -> Iterator[Case]:
    """Cases for every incorrect sample of one task (``prompts``: ``Captured.prompts[task]``)."""
    options = Options(metric=metric, contrast=contrast, prompts=prompts or {})
    kind = output_type(task)
    cache: dict = {}
    for sample in samples:
        if kind in CONTRAST_BUILDERS:
            case = CONTRAST_BUILDERS.get(kind)(sample, task, task_name, lm, options, cache)
        else:
            used = decision_metric(task, sample)
            if used is None or float(sample[used]) != 0.0:
                continue
            case = skip(new_case(sample, task_name, kind, used, contrast,
                                 prompt=_first_argument(sample)),
                        f"unsupported-output-type:{kind}")
        if case is not None:
            yield case.freeze(lm.tokenizer)


def _first_argument(sample: dict) -> str:
    args = sample.get("arguments") or []
    return str(args[0][0]) if args and args[0] else ""
