"""Shared pieces of every contrast builder: the options, the case draft, skips, token segments.

A builder fills a ``CaseDraft`` (mutable, private to this stage) step by step; the stage hands
on ``draft.freeze(tokenizer)``, a frozen ``records.Case``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from harness_xai.contrast import segments as seg
from harness_xai.contrast.decision import PrimaryMetric
from harness_xai.errors import UserError
from harness_xai.lmeval_hook.prompts import PromptRecord
from harness_xai.records import PENDING, SKIPPED, Case

CONTRASTS = ("token", "sequence")
REASONING_STEPS = ("sentence", "line")
MC_METRICS = ("acc", "acc_norm")


@dataclass
class Options:
    """How contrasts are built for one task of one run."""

    #: the metric that decides "incorrect" (``decision.primary_metric``; None: the task's primary)
    metric: str | None = None
    contrast: str = "token"  # token: one logit difference; sequence: Δ summed log-probs
    #: context string → how lm-eval built it (``Captured.prompts[task]``); missing → fallback
    prompts: dict[str, PromptRecord] = field(default_factory=dict)
    threshold: float | None = None  # a non-binary metric's correct value (``--xai-threshold``)
    #: the resolved decision metric (set by ``cases_for_task``; builders read ``.name``)
    primary: PrimaryMetric | None = None
    #: first-error rollouts per generation (``--xai-rollouts``; 0: off) and their greedy length
    #: (``--xai-rollout-tokens``; None: the task's max_gen_toks); ``allow_code``: code tasks may
    #: be scored (lm-eval's confirm_run_unsafe_code and HF_ALLOW_CODE_EVAL=1)
    rollouts: int = 0
    rollout_tokens: int | None = None
    allow_code: bool = False
    #: a thinking model's reasoning steps: "sentence" or "line" (``--xai-reasoning-steps``)
    reasoning_steps: str = "sentence"

    def __post_init__(self) -> None:
        if self.contrast not in CONTRASTS:
            raise UserError(f"unknown contrast {self.contrast!r}: use one of "
                            f"{', '.join(CONTRASTS)} (--xai-contrast).")
        if self.reasoning_steps not in REASONING_STEPS:
            raise UserError(f"--xai-reasoning-steps {self.reasoning_steps!r}: use one of "
                            f"{', '.join(REASONING_STEPS)}.")

    @property
    def metric_name(self) -> str:
        return self.primary.name if self.primary is not None else (self.metric or "acc")


@dataclass
class CaseDraft:
    """A ``records.Case`` while a builder fills it (same fields; lists instead of tuples)."""

    task: str
    doc_id: int
    doc_hash: str
    prompt_hash: str
    target_hash: str
    filter: str
    metric: str
    status: str
    output_type: str | None = None
    contrast: str = "token"
    skip_reason: str | None = None
    prompt: str = ""
    pred_index: int | None = None
    gold_index: int | None = None
    pred_text: str | None = None
    gold_text: str | None = None
    position: int | None = None
    wrong_token_id: int | None = None
    gold_token_id: int | None = None
    ll_pred: float | None = None
    ll_gold: float | None = None
    ll_error: float | None = None
    token_ids: list[int] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)
    segment_index: list[int | None] = field(default_factory=list)
    evidence_positions: list[int] = field(default_factory=list)
    method_params: dict[str, Any] = field(default_factory=dict)  # → Case.built
    rollouts: list = field(default_factory=list)  # records.Rollout, in the order tried

    def freeze(self, tokenizer) -> Case:
        """The frozen case; a pending one gets its tokens (and contrast tokens) decoded."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "method_params"}
        values.update(token_ids=tuple(self.token_ids), segments=tuple(self.segments),
                      segment_index=tuple(self.segment_index),
                      evidence_positions=tuple(self.evidence_positions), built=self.method_params,
                      rollouts=tuple(self.rollouts))
        if self.status == PENDING:
            decode = (lambda t: tokenizer.decode([t]))
            values["tokens"] = tuple(decode(t) for t in self.token_ids)
            if self.wrong_token_id is not None:
                values["wrong_token"] = decode(self.wrong_token_id)
            if self.gold_token_id is not None:
                values["gold_token"] = decode(self.gold_token_id)
        return Case(**values)


def new_case(sample: dict, task_name: str, kind: str, metric: str, contrast: str,
             prompt: str = "") -> CaseDraft:
    return CaseDraft(task=task_name, doc_id=int(sample["doc_id"]),
                      doc_hash=str(sample["doc_hash"]),
                      prompt_hash=str(sample["prompt_hash"]),
                      target_hash=str(sample["target_hash"]), filter=str(sample["filter"]),
                      metric=metric, status=PENDING, prompt=prompt, output_type=kind,
                      contrast=contrast)


def skip(case: CaseDraft, reason: str) -> CaseDraft:
    case.status, case.skip_reason = SKIPPED, reason
    case.token_ids = []
    case.segments, case.segment_index = [], []
    case.evidence_positions = []
    return case


def note(case: CaseDraft, **info) -> None:
    """Record how the contrast was built (``method_params["contrast"]``)."""
    case.method_params.setdefault("contrast", {}).update(info)


def context_token_labels(lm, task, options: Options, context: str, ctx_ids: list[int],
                         doc: dict, choice_index: int | None = None) -> list[seg.Label]:
    """Segment label of each token of ``ctx_ids`` (the encoding of ``context``, or of a prefix /
    left-truncated suffix of it)."""
    if not ctx_ids:
        return []
    if context == "":  # lm-eval's prefix token, or the continuation's first token
        prefix = getattr(lm, "prefix_token_id", None)
        return [seg.SPECIAL if t == prefix else ("continuation", None) for t in ctx_ids]
    record = options.prompts.get(context)
    for attempt in (record, None):  # a prompt lm-eval built in an unforeseen way: no record
        try:
            chars = seg.context_labels(task, context, attempt, doc, choice_index)
            return seg.token_labels(lm.tokenizer, context, list(ctx_ids), chars)
        except Exception:  # segments must never lose a finished evaluation
            continue
    special = set(getattr(lm.tokenizer, "all_special_ids", []) or [])
    return [seg.SPECIAL if t in special else ("question", None) for t in ctx_ids]


def set_segments(case: CaseDraft, labels: list[seg.Label]) -> None:
    case.segments, case.segment_index = seg.split(labels)


def set_evidence(case: CaseDraft, lm, task, doc: dict, context: str, ctx_ids: list[int],
                 offset: int = 0) -> None:
    """``case.evidence_positions``: from the doc's ``evidence_span`` (``contrast.evidence``), else
    from the long-context needles/facts lm-eval's RULER and babilong docs name
    (``answer.needle_spans``: the needle sentences, babilong's supporting fact); ``ctx_ids``
    encode ``context``, the attributed input is ``ids[offset:]`` (``case.token_ids`` set)."""
    from harness_xai.contrast.answer import needle_spans
    from harness_xai.contrast.evidence import FIELD, evidence_positions, sentence_positions

    if isinstance(doc, dict) and FIELD in doc:
        case.evidence_positions = evidence_positions(lm.tokenizer, task, doc, context, ctx_ids,
                                                     offset, len(case.token_ids))
        return
    try:
        spans = list(needle_spans(doc, context)) if isinstance(doc, dict) and context else []
    except Exception:  # evidence must never lose a finished evaluation
        spans = []
    case.evidence_positions = sentence_positions(lm.tokenizer, context, ctx_ids, spans, offset,
                                                 len(case.token_ids)) if spans else []
    if spans:
        note(case, evidence="needle-sentences")


def truncation_note(lm, pair: tuple[str, str] | None, doc: dict, context: str | None = None,
                    max_gen_toks: int | None = None) -> dict:
    """Left truncation of a scored pair (``answer.loglikelihood_truncation``) or of a generation
    context (``answer.generation_truncation``, ``max_gen_toks`` given): tokens cut, context
    tokens, characters cut, and whether the doc's evidence (``answer.needle_spans``: RULER's
    needles, babilong's fact) survived (None: no evidence known)."""
    from harness_xai.contrast.answer import (generation_truncation, loglikelihood_truncation,
                                             needle_spans)

    try:
        if max_gen_toks is not None:
            cut = generation_truncation(lm, context, max_gen_toks, needle_spans(doc, context))
        else:
            cut = loglikelihood_truncation(lm, pair[0], pair[1], needle_spans(doc, pair[0]))
    except Exception:  # a record must never lose a finished evaluation
        return {"unknown": True}
    return {"tokens_cut": cut.cut, "context_tokens": cut.total, "chars_cut": cut.cut_chars,
            "evidence_kept": None if not cut.evidence_kept else all(cut.evidence_kept)}
