"""Which samples the benchmark failed, decided by the task's own metric (issue #14, item 1).

The primary metric of a task is the first entry of its ``metric_list`` (or a user's
``--xai-metric NAME``), read from the *logged sample* under the key lm-eval wrote: a function
metric that returns a dict is logged under the dict's keys (HumanEval's ``utils.pass_at_k`` →
``pass@1``), RULER names its metric by the sequence length (``4096``), IFEval by the instruction
level (``prompt_level_strict_acc``). ``higher_is_better`` comes from the task (its config, else
lm-eval's registry, both already merged in ``Task.higher_is_better()``).

A sample is ``incorrect`` when its value is worse than the metric's best value:

- binary metrics (``acc``, ``exact_match``, ``pass@1``, …): best = 1 (0 when lower is better);
  a threshold is refused;
- fraction metrics in [0, 1] (RULER's string match over several needles, instruction-level
  lists): best = 1 unless ``threshold`` says otherwise; correct iff value ≥ threshold;
- any other metric (perplexity, BLEU, F1, …) needs ``threshold``; correct iff value ≥ threshold
  (≤ when lower is better). Without one every sample is ``unscored`` (reason ``no_threshold``).

Samples that cannot be judged are ``unscored`` with a machine-readable reason, never dropped.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Iterable

from harness_xai.errors import UserError

CORRECT, INCORRECT, UNSCORED = "correct", "incorrect", "unscored"

#: per-sample 0/1 metrics (lm-eval's registry names and the real task configs' names)
BINARY = frozenset({
    "acc", "acc_norm", "acc_mutual_info", "exact_match", "em", "math_verify",
    "prompt_level_strict_acc", "prompt_level_loose_acc", "pass_at_1", "pass@1",
})
#: per-sample scores in [0, 1] whose best value is 1 (RULER: metric named by sequence length)
_FRACTION = re.compile(r"^(\d+|inst_level_(strict|loose)_acc|pass@\d+|pass_at_\d+)$")
#: why a sample has no verdict
NO_VALUE, NOT_NUMERIC, NAN, OUT_OF_RANGE, NO_THRESHOLD = (
    "metric_missing", "metric_not_numeric", "metric_nan", "metric_out_of_range", "no_threshold")


@dataclass(frozen=True)
class PrimaryMetric:
    """The metric a task's failures are decided by."""

    task: str
    name: str  # key of the value in a logged sample
    higher_is_better: bool
    kind: str  # "binary" | "fraction" | "score"
    threshold: float | None  # the value a correct sample reaches (None: score without threshold)

    def verdict(self, sample: dict) -> "Verdict":
        return verdict(self, sample)


@dataclass(frozen=True)
class Verdict:
    doc_id: int
    filter: str
    metric: str
    value: float | None
    outcome: str  # CORRECT | INCORRECT | UNSCORED
    reason: str | None = None  # set when UNSCORED


def metric_choices(task, samples: Iterable[dict] = ()) -> list[str]:
    """Metric names a user may pick for ``task``: its metric_list, then keys only samples show."""
    declared = list(_declared(task))
    for sample in samples:
        for name in sample.get("metrics") or ():
            if name not in declared:
                declared.append(name)
    return declared


def primary_metric(task, task_name: str | None = None, samples: Iterable[dict] = (),
                   metric: str | None = None, threshold: float | None = None) -> PrimaryMetric:
    """Resolve the primary metric of ``task`` (an lm-eval Task) from its config and logged samples.

    Raises ``UserError`` (one line: task, metric, supported choices) for a metric the task lacks
    or a threshold on a binary metric.
    """
    samples = list(samples)
    name_of_task = task_name or _task_name(task)
    declared = list(_declared(task))
    choices = metric_choices(task, samples)
    logged = [n for n in choices if any(n in s for s in samples)] if samples else choices
    if metric is None:
        metric = _default(declared, logged, samples)
        if metric is None:
            raise UserError(f"task {name_of_task!r} declares no metric in its metric_list and its samples "
                            "log none: nothing decides which samples failed")
    elif metric not in logged:
        raise UserError(f"--xai-metric {metric!r} is not a metric of task {name_of_task!r}; "
                        f"supported: {', '.join(logged) or 'none'}")
    hib = _higher_is_better(task, metric, declared)
    kind = _kind(metric)
    if threshold is not None:
        if kind == "binary":
            raise UserError(f"--xai-threshold {threshold:g} on task {name_of_task!r}: metric {metric!r} is "
                            "binary (0/1), a threshold applies to non-binary metrics only; "
                            f"non-binary metrics of this task: "
                            f"{', '.join(n for n in logged if n not in BINARY) or 'none'}")
        if not math.isfinite(threshold):
            raise UserError(f"--xai-threshold must be a finite number, got {threshold!r} "
                            f"(task {name_of_task!r}, metric {metric!r})")
    elif kind == "binary":
        threshold = 1.0 if hib else 0.0
    elif kind == "fraction":
        threshold = 1.0
    return PrimaryMetric(name_of_task, metric, hib, kind, threshold)


def verdict(metric: PrimaryMetric, sample: dict) -> Verdict:
    """correct / incorrect / unscored for one logged sample."""
    doc_id, filt = sample.get("doc_id"), sample.get("filter", "none")
    if metric.name not in sample:
        return Verdict(doc_id, filt, metric.name, None, UNSCORED, NO_VALUE)
    value, reason = _number(sample[metric.name])
    if reason is None and metric.kind in ("binary", "fraction") and not 0.0 <= value <= 1.0:
        reason = OUT_OF_RANGE  # e.g. RULER's -1 for "not this sequence length"
    if reason is None and metric.threshold is None:
        reason = NO_THRESHOLD
    if reason is not None:
        return Verdict(doc_id, filt, metric.name, value, UNSCORED, reason)
    good = value >= metric.threshold if metric.higher_is_better else value <= metric.threshold
    return Verdict(doc_id, filt, metric.name, value, CORRECT if good else INCORRECT)


def verdicts(task, samples: Iterable[dict], task_name: str | None = None,
             metric: str | None = None, threshold: float | None = None) -> list[Verdict]:
    """Every sample's verdict under the task's primary metric (resolved from the same samples)."""
    samples = list(samples)
    primary = primary_metric(task, task_name, samples, metric, threshold)
    return [verdict(primary, s) for s in samples]


def tally(task_name: str, outcomes: Iterable[Verdict]) -> dict[tuple[str, str, str, str | None], int]:
    """Counts for a run summary: (task, metric, outcome, reason) → number of samples."""
    counts: dict[tuple[str, str, str, str | None], int] = {}
    for v in outcomes:
        key = (task_name, v.metric, v.outcome, v.reason)
        counts[key] = counts.get(key, 0) + 1
    return counts


# --- helpers -----------------------------------------------------------------------------------

def _declared(task) -> dict[str, bool | None]:
    """metric name → higher_is_better in metric_list order, function metrics by their __name__,
    then keys lm-eval added while scoring (a dict-valued function's ``pass@1``)."""
    return dict(task.higher_is_better() or {})


def _default(declared: list[str], logged: list[str], samples: list[dict]) -> str | None:
    """First of the metric_list that the samples log with a real value; else the first key a
    dict-valued function logged. RULER logs -1 under every length a doc is not: skipped.
    A score without a threshold decides nothing, so binary / fraction metrics come first
    (LAMBADA's metric_list starts with perplexity, its correctness is ``acc``; a threshold on
    perplexity needs ``--xai-metric perplexity``)."""
    ranked = ([n for n in declared if n in logged] + [n for n in logged if n not in declared]
              if samples else list(declared))
    ranked = [n for n in ranked if _kind(n) != "score"] + [n for n in ranked if _kind(n) == "score"]
    if not samples:
        return ranked[0] if ranked else None

    def real(name):
        return any(name in s and (_number(s[name])[0] or 0.0) >= 0.0 for s in samples)

    return next((n for n in ranked if real(n)), ranked[0] if ranked else None)


def _kind(metric: str) -> str:
    return "binary" if metric in BINARY else "fraction" if _FRACTION.match(metric) else "score"


def _higher_is_better(task, metric: str, declared: list[str]) -> bool:
    table = dict(task.higher_is_better() or {})
    if metric in table and table[metric] is not None:
        return bool(table[metric])
    try:
        from lm_eval.api.registry import is_higher_better

        registered = is_higher_better(metric)
    except Exception:  # not registered: lm-eval's own default is "higher is better"
        registered = None
    if registered is not None:
        return bool(registered)
    # a key expanded from a dict-valued function metric inherits that function's direction
    sources = [table[d] for d in declared if d in table and table[d] is not None]
    return bool(sources[0]) if len(sources) == 1 else True


def _number(value) -> tuple[float | None, str | None]:
    if isinstance(value, (list, tuple)):  # IFEval's instruction-level metrics: one bool each
        # (other tuples are corpus-metric inputs, e.g. f1/mcc's (gold, pred), perplexity's (ll, n))
        if not value or not all(isinstance(v, bool) or v in ("True", "False") for v in value):
            return None, NOT_NUMERIC
        parts = [_number(v) for v in value]
        return sum(v for v, _ in parts) / len(parts), None
    if isinstance(value, str):
        if value in ("True", "False"):  # saved samples stringify bools too (IFEval)
            return float(value == "True"), None
        try:
            value = float(value)  # saved samples stringify numbers
        except ValueError:
            return None, NOT_NUMERIC
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None, NOT_NUMERIC
    return (number, NAN) if math.isnan(number) else (number, None)


def _task_name(task) -> str:
    return getattr(task.config, "task", None) or type(task).__name__


# --- per-task choices (--xai-metric / --xai-threshold) ------------------------------------------

def parse_per_task(spec, flag: str, convert=str) -> dict[str | None, object]:
    """``"NAME"`` (every task) or ``"TASK=NAME,TASK2=NAME2"`` (per task; a bare entry applies to
    the tasks not named) → {task or None: value}. ``None`` / ``""`` → {}."""
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return {}
    if not isinstance(spec, str):
        return {None: convert(spec)}
    out: dict[str | None, object] = {}
    for part in (p.strip() for p in spec.split(",")):
        named = "=" in part
        task, _, value = part.rpartition("=") if named else ("", "", part)
        if not value.strip() or (named and not task.strip()):
            raise UserError(f"{flag} {spec!r}: write VALUE or TASK=VALUE[,TASK=VALUE…]")
        try:
            out[task.strip() or None] = convert(value.strip())
        except ValueError:
            raise UserError(f"{flag} {spec!r}: {value.strip()!r} is not a number") from None
    return out


def for_task(choices: dict, task_name: str):
    """The value a per-task choice gives ``task_name`` (its own, else the bare one, else None)."""
    return choices.get(task_name, choices.get(None))


def check_choices(tasks: dict, metric=None, threshold=None) -> None:
    """Before lm-eval computes a request: every ``--xai-metric`` / ``--xai-threshold`` fits its
    task (``tasks``: name → Task). A task whose metric_list has a function metric may log keys
    only its samples show (HumanEval's ``pass@1``): its metric name is checked after scoring."""
    metrics = parse_per_task(metric, "--xai-metric")
    thresholds = parse_per_task(threshold, "--xai-threshold", float)
    unknown = sorted(k for k in (*metrics, *thresholds) if k is not None and k not in tasks)
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(tasks), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"--xai-metric/--xai-threshold name task {unknown[0]!r}, which this run "
                        f"does not evaluate; {hint}tasks: {', '.join(sorted(tasks))}")
    for name, task in tasks.items():
        chosen = for_task(metrics, name)
        if chosen is not None and chosen not in metric_choices(task) and _open_ended(task):
            chosen = None  # decided on the logged samples
        primary_metric(task, name, (), chosen, for_task(thresholds, name))


def _open_ended(task) -> bool:
    """A metric_list entry given as a function (``!function utils.pass_at_k``)."""
    entries = getattr(task.config, "metric_list", None) or ()
    return any(callable(e.get("metric")) for e in entries if isinstance(e, dict))
