"""Record how lm-eval built each prompt: which few-shot documents, which chat settings.

lm-eval draws few-shot demonstrations from a random generator shared by all documents of a task,
so they cannot be recomputed afterwards. For the duration of one run we shadow two methods on the
task *instance* (never the class), call the originals unchanged and note their inputs/outputs:
1. ``task.sampler.sample`` → the few-shot documents it returned (the last call wins);
2. ``task.fewshot_context`` → the context string(s) it returned (a list for multiple-input
   tasks), each mapped to a ``PromptRecord`` with the document, those few-shot documents and the
   call's settings (system instruction, chat template, multi-turn, generation prefix).
The records are keyed by the context string, which is exactly ``sample["arguments"][i][0]``.
``restore()`` removes the shadows (lm-eval's own values are never changed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness_xai.lmeval_hook.shadow import shadow


@dataclass
class PromptRecord:
    """The pieces lm-eval assembled one context from (``Task.fewshot_context`` arguments)."""

    doc: dict
    fewshot_docs: list[dict] = field(default_factory=list)
    system_instruction: str | None = None
    chat: bool = False  # a chat template rendered the messages
    fewshot_as_multiturn: bool = False
    gen_prefix: str | None = None
    #: lm-eval's own generations of this record's context(s) with exact ids (``generations``;
    #: filled by ``capture_evaluate`` after the run, empty for other output types)
    generations: list = field(default_factory=list)


class PromptRecorder:
    """Shadows ``fewshot_context`` / ``sampler.sample`` of one task instance while installed."""

    def __init__(self, task) -> None:
        self.task = task
        self.records: dict[str, PromptRecord] = {}
        self._undo: list[Callable[[], None]] = []
        self._last_fewshot: list[dict] = []

    def install(self) -> PromptRecorder:
        task = self.task
        if not callable(getattr(task, "fewshot_context", None)):
            return self
        original_context = task.fewshot_context

        def fewshot_context(doc, num_fewshot, *args, **kwargs):
            self._last_fewshot = []
            result = original_context(doc, num_fewshot, *args, **kwargs)
            try:
                self._note(doc, num_fewshot, result, *args, **kwargs)
            except Exception:  # recording must never change or break the run
                pass
            return result

        self._shadow(task, "fewshot_context", fewshot_context)
        sampler = getattr(task, "sampler", None)
        if sampler is not None and callable(getattr(sampler, "sample", None)):
            original_sample = sampler.sample

            def sample(*args, **kwargs):
                docs = original_sample(*args, **kwargs)
                self._last_fewshot = list(docs)
                return docs

            self._shadow(sampler, "sample", sample)
        return self

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _shadow(self, obj: Any, name: str, fn: Callable) -> None:
        shadow(self._undo, obj, name, fn)

    def _note(self, doc, num_fewshot, result, system_instruction=None, apply_chat_template=False,
              fewshot_as_multiturn=False, chat_template=None, gen_prefix=None) -> None:
        record = PromptRecord(
            doc=doc, fewshot_docs=list(self._last_fewshot) if num_fewshot else [],
            system_instruction=system_instruction,
            chat=bool(apply_chat_template and chat_template),
            fewshot_as_multiturn=bool(fewshot_as_multiturn), gen_prefix=gen_prefix)
        for context in (result if isinstance(result, list) else [result]):
            if isinstance(context, str):
                self.records[context] = record
