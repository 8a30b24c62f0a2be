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
    step: int | None = None  # training step of the checkpoint (from ``revision`` like "step3000")


@dataclass(frozen=True)
class DocOutcome:
    """How one evaluated document fared under one filter (every logged sample, right or wrong).

    ``correct`` is 0 exactly for the samples that became cases (the contrast builders' rule:
    the decision metric's value is 0), 1 for the others, ``None`` when the task has no notion
    of correct (perplexity: ``loglikelihood_rolling``).
    """

    doc_id: int
    doc_hash: str  # lm-eval's doc hash (the same as ``CaseRecord.doc_hash``)
    filter: str  # lm-eval filter name, e.g. "none" or "strict-match"
    metric: str | None  # the decision metric, e.g. "acc", "acc_norm", "exact_match"
    value: float | None  # its per-sample value (None when not a number)
    correct: int | None  # 1 / 0 / None (see above)


@dataclass(frozen=True)
class TaskSummary:
    """Per-task outcome of the evaluation, for the report index."""

    task: str
    metric: str  # the metric that decides "incorrect", e.g. "acc"
    value: float | None  # lm-eval's aggregate value of that metric
    n_samples: int
    n_incorrect: int
    output_type: str  # lm-eval output type, e.g. "multiple_choice"
    #: one outcome per logged sample (document × filter); the store replaces a task's rows
    outcomes: list[DocOutcome] = field(default_factory=list)


#: token segment labels (``CaseRecord.segments``)
SEGMENTS = ("special", "instruction", "fewshot", "question", "option", "continuation",
            "generated")


@dataclass
class Faithfulness:
    """Deletion curve of one explanation: Δℓ as the most relevant tokens are replaced.

    Step s replaces ``n_removed[s]`` tokens (the top ones by relevance, or random ones) by
    ``baseline_token_id``. ``aopc`` = mean over steps of (Δℓ₀ − Δℓ_s) / |Δℓ₀| for the relevance
    order, ``aopc_random`` the same for random orders: a trustworthy explanation has
    ``aopc`` well above ``aopc_random``.
    """

    fractions: list[float]  # (n_steps,) requested fraction of the input
    n_removed: list[int]  # (n_steps,)
    delta_relevance: list[float]  # (n_steps,) Δℓ after removing the top-k tokens
    delta_random: list[float]  # (n_steps,) Δℓ after removing k random tokens (mean over orders)
    aopc: float
    aopc_random: float
    baseline_token_id: int
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class GraphRecord:
    """A pruned cross-layer attribution graph of one case (edges in COO form).

    Node layer 0 is the embeddings; ``node_layers`` names every node layer (e.g. ``["emb", "1",
    "2"]`` or with mid-block states ``["emb", "1.mid", "1", …]``).
    """

    node_layers: list[str]  # (n_node_layers,)
    node_relevance: np.ndarray  # (n_node_layers, n_tokens) float32
    source_layer: np.ndarray  # (n_edges,) int32, index into node_layers
    source_position: np.ndarray  # (n_edges,) int32
    target_layer: np.ndarray  # (n_edges,) int32
    target_position: np.ndarray  # (n_edges,) int32
    weight: np.ndarray  # (n_edges,) float32
    params: dict[str, Any] = field(default_factory=dict)  # method, pruning options
    metrics: dict[str, Any] = field(default_factory=dict)  # n_edges, mass_kept, formation_layer…


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
    # --- added by the engine / contrast / graph issues (all optional) ---
    output_type: str | None = None  # lm-eval output type of the task, e.g. "multiple_choice"
    contrast: str = "token"  # "token" (one position) or "sequence" (summed log-probs)
    ll_error: float | None = None  # max |recomputed − logged| log-likelihood (pred and gold)
    method_params: dict[str, Any] = field(default_factory=dict)
    segments: list[str] = field(default_factory=list)  # (n_tokens,) label from SEGMENTS
    segment_index: list[int | None] = field(default_factory=list)  # (n_tokens,) which demo/option
    #: kind → (n_layers, n_tokens); row l-1 is block l. Kinds: "mid" (residual between attention
    #: and MLP, sequential families), "attn" / "mlp" (the branch outputs added to the residual)
    state_relevance: dict[str, np.ndarray] = field(default_factory=dict)
    head_relevance: np.ndarray | None = None  # (n_layers, n_heads, n_tokens) head outputs
    #: mixture of experts: (n_layers, n_experts, n_tokens) relevance of each routed expert's
    #: weighted output (0 where not selected); None for dense models
    expert_relevance: np.ndarray | None = None
    faithfulness: Faithfulness | None = None
    graph: GraphRecord | None = None
    #: input positions holding the evidence the answer needs, when the task's docs record it
    evidence_positions: list[int] = field(default_factory=list)
    #: per-case analysis metrics (segment shares, concentration, evidence rank, triage label …)
    analysis: dict[str, Any] = field(default_factory=dict)

    @property
    def unit_key(self) -> tuple[str, int, str, str]:
        """Identity of a case inside a run: re-runs skip keys already stored."""
        return (self.task, self.doc_id, self.doc_hash, self.filter)
