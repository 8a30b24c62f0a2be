"""Capture the model object and the loaded tasks of an lm-eval run, without changing it.

``simple_evaluate`` builds the LM and the Task objects internally and returns neither; both are
needed (the HFLM instance to rebuild scored tokens exactly, the Task for ``doc_to_choice``).
lm-eval 0.4.x has no callbacks, so for the duration of one call we wrap
``lm_eval.evaluator.evaluate`` (the function ``simple_evaluate`` delegates to) and record its
``lm`` and ``task_dict`` arguments. A check can veto the run before any request is computed.
Each task also gets a ``PromptRecorder`` (``harness.prompts``) for the call: which few-shot
documents and chat settings built each context (``Captured.prompts[task][context]``), for the
token segments of a case.
The HFLM also gets a ``GenerationRecorder`` (``harness.generations``) for the call: lm-eval's own
generated ids per context (``Captured.generations[context]``, also linked into that context's
``PromptRecord.generations``), so ``generate_until`` failures need no regeneration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from harness_xai.lmeval_hook.generations import GenerationRecorder, RecordedGeneration
from harness_xai.lmeval_hook.prompts import PromptRecord, PromptRecorder


@dataclass
class Captured:
    lm: object | None = None
    tasks: dict[str, object] = field(default_factory=dict)  # task name → Task
    #: task name → context string → how lm-eval built it
    prompts: dict[str, dict[str, PromptRecord]] = field(default_factory=dict)
    #: context string → lm-eval's generations of it, exact ids (``generate_until`` requests)
    generations: dict[str, list[RecordedGeneration]] = field(default_factory=dict)


@contextmanager
def capture_evaluate(before_run: Callable[[object], None] | None = None,
                     check_tasks: Callable[[dict], None] | None = None) -> Iterator[Captured]:
    """Record ``lm`` and the tasks of the next ``evaluate`` call; ``before_run(lm)`` and
    ``check_tasks(tasks)`` (task name → Task) may veto it (raise) before any request runs."""
    import lm_eval.evaluator as evaluator

    captured = Captured()
    original = evaluator.evaluate

    def evaluate(lm, task_dict, *args, **kwargs):
        captured.lm = unwrap_lm(lm)
        captured.tasks = flatten_tasks(task_dict)
        if before_run is not None:
            before_run(captured.lm)
        if check_tasks is not None:
            check_tasks(captured.tasks)
        recorders = {name: PromptRecorder(task).install() for name, task in captured.tasks.items()}
        captured.prompts = {name: rec.records for name, rec in recorders.items()}
        generations = GenerationRecorder(captured.lm).install()
        captured.generations = generations.by_context
        try:
            return original(lm, task_dict, *args, **kwargs)
        finally:
            generations.restore()
            for rec in recorders.values():
                rec.restore()
            _link_generations(captured)

    evaluator.evaluate = evaluate
    try:
        yield captured
    finally:
        evaluator.evaluate = original


def _link_generations(captured: Captured) -> None:
    """Each prompt record also holds the recorded generations of its context(s)."""
    for records in captured.prompts.values():
        for context, record in records.items():
            known = {id(g) for g in record.generations}  # a record shared by several contexts
            record.generations.extend(g for g in captured.generations.get(context, [])
                                      if id(g) not in known)


def unwrap_lm(lm):
    """The underlying LM of a ``CachingLM`` wrapper (``--use_cache``)."""
    return getattr(lm, "lm", lm) if type(lm).__name__ == "CachingLM" else lm


def flatten_tasks(task_dict) -> dict[str, object]:
    """Task name → Task for lm-eval's task dict (``{"tasks": …}`` or the older nested form)."""
    from lm_eval.api.task import Task

    if isinstance(task_dict, dict) and "tasks" in task_dict and isinstance(task_dict["tasks"], dict):
        return dict(task_dict["tasks"])
    out: dict[str, object] = {}

    def walk(node, name=None):
        if isinstance(node, Task):
            out[getattr(node, "task_name", None) or str(name)] = node
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(value, getattr(key, "group_name", key))

    walk(task_dict)
    return out
