"""Plain result records passed along the pipeline: contrast cases → attribution → store → report.

These are the only types the store and the report depend on. They hold plain Python values and
numpy arrays (no torch, no SQLAlchemy), so every stage can be tested on its own.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: case status values
ATTRIBUTED = "attributed"
SKIPPED = "skipped"
PENDING = "pending"  # built by the contrast stage, not yet attributed


@dataclass(frozen=True)
class RunRecord:
    """One `harness-xai run` (or `harness_xai.evaluate`) invocation.

    ``run_key`` is a hash of everything that determines the results (model, revision, tasks,
    few-shot, limit, method, versions): an identical second run maps onto the same run row.
    """

    run_key: str
    model: str  # lm-eval model name, e.g. "hf"
    model_args: str  # as given on the command line
    pretrained: str | None  # hub id or local directory
    revision: str | None  # hub revision / checkpoint, e.g. "step3000"
    model_type: str | None  # config.model_type, e.g. "llama"
    n_params: int | None
    tasks: list[str]
    method: str  # attribution method, e.g. "attnlrp"
    lm_eval_version: str
    harness_xai_version: str
    config: dict[str, Any] = field(default_factory=dict)  # JSON-able lm-eval + xai settings
    created_at: _dt.datetime = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc))


@dataclass(frozen=True)
class TaskSummary:
    """Per-task outcome of the evaluation, for the report index."""

    task: str
    metric: str  # the metric that decides "incorrect", e.g. "acc"
    value: float | None  # lm-eval's aggregate value of that metric
    n_samples: int
    n_incorrect: int
    output_type: str  # lm-eval output type, e.g. "multiple_choice"


@dataclass
class CaseRecord:
    """One incorrect response: the contrast, and (if attributed) its relevance.

    ``token_relevance`` has shape (n_tokens,), ``layer_relevance`` shape (n_layers + 1, n_tokens):
    row 0 is the embedding output, row l the output of block l. ``delta`` is
    logit[wrong] - logit[gold] at the contrast position; positive relevance pushes toward the
    wrong answer. Skipped cases carry ``skip_reason`` and no arrays.
    """

    task: str
    doc_id: int
    doc_hash: str
    prompt_hash: str
    target_hash: str
    filter: str
    metric: str
    status: str  # ATTRIBUTED or SKIPPED
    skip_reason: str | None = None
    prompt: str = ""
    pred_index: int | None = None
    gold_index: int | None = None
    pred_text: str | None = None
    gold_text: str | None = None
    position: int | None = None  # index of the contrast token in the scored sequence
    wrong_token_id: int | None = None
    gold_token_id: int | None = None
    wrong_token: str | None = None
    gold_token: str | None = None
    delta: float | None = None
    ll_pred: float | None = None  # lm-eval's logged log-likelihoods
    ll_gold: float | None = None
    method: str | None = None
    token_ids: list[int] = field(default_factory=list)  # (n_tokens,)
    tokens: list[str] = field(default_factory=list)  # (n_tokens,) each token decoded alone
    token_relevance: np.ndarray | None = None  # (n_tokens,) float32
    layer_relevance: np.ndarray | None = None  # (n_layers + 1, n_tokens) float32

    @property
    def unit_key(self) -> tuple[str, int, str, str]:
        """Identity of a case inside a run: re-runs skip keys already stored."""
        return (self.task, self.doc_id, self.doc_hash, self.filter)
