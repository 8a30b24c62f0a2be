"""Contrast cases: every incorrect logged sample → one case (a contrast to attribute, or a skip).

"Incorrect" is decided by the task's own primary metric (``decision``: the first of its
``metric_list`` that can decide, or ``--xai-metric``, with its ``higher_is_better``; non-binary
scores need ``--xai-threshold``). Every sample gets a verdict: incorrect samples become cases
(pending or a skip with a machine-readable reason), unscored ones are counted with their reason
(``TaskCases.counts``), nothing is dropped silently.

Per output type (each builder documents its algorithm):
- ``multiple_choice`` (``multiple_choice``): predicted vs gold choice, decision-faithful: the
  first differing token where its logit difference agrees with lm-eval's decision, else the
  decision itself (summed / length-normalised log-probs); ties and near-ties are skips.
- ``loglikelihood`` (``loglikelihood``): first target token that is not the greedy token.
- ``generate_until`` (``generation``): first token where the model's answer leaves the gold
  answer, after greedy regeneration with exact ids (instruction checks: the closest compliant
  edit of the response, ``instructions``); with ``--xai-rollouts`` (``first_error``)
  the first generated token whose top-k alternative, continued greedily, makes the sample
  correct (else that final-answer contrast, with the reason).
- ``loglikelihood_rolling``: perplexity only, no notion of a wrong answer: every sample is
  recorded as skipped with reason ``no-contrast:loglikelihood_rolling``.
Two contrast modes (``Options.contrast``): ``token`` (one logit difference at one position) and
``sequence`` (difference of the two continuations' summed log-probs); ``Case.objective`` says
which, and the engine (``harness_xai.lrp.explain``) explains either. Every case carries
``output_type``, ``contrast``, token ``segments``, ``ll_error`` where lm-eval logged
log-likelihoods, and how it was built in ``built["contrast"]``. Docs that record an
``evidence_span`` give ``evidence_positions`` (``evidence``).

Builders are a registry keyed by lm-eval output type: ``register_contrast(output_type, builder)``
— the built-ins register through that same call below. A builder is
``builder(sample, task, task_name, lm, options, cache) -> CaseDraft`` and is called for the
incorrect samples only (``options.primary`` is the deciding metric; a builder that returns
None gets the skip ``no-case-built``); ``cache`` is one dict per task and run (e.g. one
regeneration per document). IFEval-style instruction repairs are a registry keyed by
instruction id: ``register_instruction_repair(instruction_id, repair)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from harness_xai.contrast.case import CONTRASTS, MC_METRICS, CaseDraft, Options, new_case, skip
from harness_xai.contrast.decision import INCORRECT, PrimaryMetric, Verdict, primary_metric
from harness_xai.contrast.first_error import generative_case
from harness_xai.contrast.instructions import INSTRUCTION_REPAIRS, register_instruction_repair
from harness_xai.contrast.loglikelihood import loglikelihood_case
from harness_xai.contrast.multiple_choice import multiple_choice_case
from harness_xai.records import PENDING, Case
from harness_xai.registry import Registry

__all__ = ["CONTRASTS", "CONTRAST_BUILDERS", "INSTRUCTION_REPAIRS", "MC_METRICS", "CaseDraft",
           "Options", "TaskCases", "cases_for_task", "new_case", "output_type",
           "register_contrast", "register_instruction_repair", "skip", "task_cases"]

#: output types whose builder sees every sample (no notion of correct: each one is a skip)
EVERY_SAMPLE = {"loglikelihood_rolling"}

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
    return skip(new_case(sample, task_name, "loglikelihood_rolling", options.metric_name,
                         options.contrast, prompt=_first_argument(sample)),
                "no-contrast:loglikelihood_rolling")


register_contrast("multiple_choice", multiple_choice_case)
register_contrast("loglikelihood", loglikelihood_case)
register_contrast("generate_until", generative_case)
register_contrast("loglikelihood_rolling", perplexity_case)


def output_type(task) -> str:
    return getattr(task, "OUTPUT_TYPE", None) or task.config.output_type


@dataclass(frozen=True)
class TaskCases:
    """One task's verdicts (one per logged sample, in order) and its cases."""

    task: str
    primary: PrimaryMetric
    verdicts: tuple[Verdict, ...]
    cases: tuple[Case, ...]

    def counts(self) -> dict:
        """JSON-able counts for the run summary: the deciding metric, samples, incorrect ones,
        cases to explain, skips by reason, unscored samples by reason."""
        skipped: dict[str, int] = {}
        unscored: dict[str, int] = {}
        for case in self.cases:
            if case.status != PENDING:
                skipped[case.skip_reason] = skipped.get(case.skip_reason, 0) + 1
        for v in self.verdicts:
            if v.reason is not None:
                unscored[v.reason] = unscored.get(v.reason, 0) + 1
        return {"metric": self.primary.name, "samples": len(self.verdicts),
                "incorrect": sum(v.outcome == INCORRECT for v in self.verdicts),
                "cases": sum(c.status == PENDING for c in self.cases), "skipped": skipped,
                "unscored": unscored}


def task_cases(task_name: str, task, samples: list[dict], lm, metric: str | None = None,
               contrast: str = "token", prompts: dict | None = None,
               threshold: float | None = None,
               progress: Callable[[int], object] | None = None, rollouts: int = 0,
               rollout_tokens: int | None = None, allow_code: bool = False,
               reasoning_steps: str = "sentence") -> TaskCases:
    """Verdicts and cases of one task (``prompts``: ``Captured.prompts[task]``). Raises
    ``UserError`` for a ``metric`` the task's samples lack or a threshold on a binary metric.
    ``progress(1)`` is called after each sample (a progress bar's ``update``). ``rollouts``,
    ``rollout_tokens``, ``allow_code``: first-error rollouts of generations (``Options``);
    ``reasoning_steps``: a thinking model's reasoning cut by sentence or line."""
    samples = list(samples)
    primary = primary_metric(task, task_name, samples, metric, threshold)
    options = Options(metric=primary.name, contrast=contrast, prompts=prompts or {},
                      threshold=primary.threshold, primary=primary, rollouts=rollouts,
                      rollout_tokens=rollout_tokens, allow_code=allow_code,
                      reasoning_steps=reasoning_steps)
    kind = output_type(task)
    cache: dict = {}
    verdicts, cases = [], []
    for sample in samples:
        if progress is not None:
            progress(1)
        verdict = primary.verdict(sample)
        verdicts.append(verdict)
        if verdict.outcome != INCORRECT and kind not in EVERY_SAMPLE:
            continue
        if kind in CONTRAST_BUILDERS:
            case = CONTRAST_BUILDERS.get(kind)(sample, task, task_name, lm, options, cache)
            if case is None:
                case = skip(new_case(sample, task_name, kind, primary.name, contrast,
                                     prompt=_first_argument(sample)), "no-case-built")
        else:
            case = skip(new_case(sample, task_name, kind, primary.name, contrast,
                                 prompt=_first_argument(sample)),
                        f"unsupported-output-type:{kind}")
        case.method_params.setdefault("decision", {"metric": primary.name,
                                                   "value": verdict.value,
                                                   "threshold": primary.threshold,
                                                   "higher_is_better": primary.higher_is_better})
        cases.append(case.freeze(lm.tokenizer))
    return TaskCases(task_name, primary, tuple(verdicts), tuple(cases))


def cases_for_task(task_name: str, task, samples: list[dict], lm, metric: str | None = None,
                   contrast: str = "token", prompts: dict | None = None,
                   threshold: float | None = None) -> Iterator[Case]:
    """The cases of ``task_cases`` (one per incorrect sample)."""
    yield from task_cases(task_name, task, samples, lm, metric, contrast, prompts,
                          threshold).cases


def _first_argument(sample: dict) -> str:
    args = sample.get("arguments") or []
    return str(args[0][0]) if args and args[0] else ""
