"""Frozen records passed between the stages: lm-eval hook → cases → engine → store → report.

- ``Case``: what the contrast stage decided for one incorrect response (the input tokens, the
  position, the objective, segments, evidence) or why it is skipped;
- ``TokenTarget`` / ``SequenceTarget``: the engine's objectives (what one forward+backward
  explains), built by the contrast stage and evaluated by ``harness_xai.lrp``;
- ``Explanation``: what the engine (and graph, faithfulness, analysis) computed for a case;
- ``RunRecord``, ``TaskSummary``, ``DocOutcome``: the run and its per-task outcomes.
The store maps (``Case``, ``Explanation``) to rows. They hold plain Python values and numpy
arrays (no torch, no SQLAlchemy), so every stage can be tested on its own; a later stage derives
a new record (``dataclasses.replace``) instead of editing one in place.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

#: case status values
ATTRIBUTED = "attributed"
SKIPPED = "skipped"
PENDING = "pending"  # built by the contrast stage, not yet explained


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
    model_name: str | None = None  # short name (hub id or directory); None → from ``pretrained``


@dataclass(frozen=True)
class DocOutcome:
    """How one evaluated document fared under one filter (every logged sample, right or wrong).

    ``correct`` is 0 exactly for the samples that became cases (the contrast builders' rule:
    the decision metric's value is 0), 1 for the others, ``None`` when the task has no notion
    of correct (perplexity: ``loglikelihood_rolling``).
    """

    doc_id: int
    doc_hash: str  # lm-eval's doc hash (the same as ``Case.doc_hash``)
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


#: token segment labels (``Case.segments``)
SEGMENTS = ("special", "instruction", "fewshot", "question", "option", "continuation",
            "generated", "reasoning", "think-marker", "answer")


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class TokenTarget:
    """Objective ``Δℓ = logit[target] − logit[foil]`` at the last position of ``input_ids``."""

    input_ids: tuple[int, ...]  # (n,)
    target: int
    foil: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_ids", tuple(int(t) for t in self.input_ids))

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class SequenceTarget:
    """Objective ``Δ = w_wrong · Σ_j log p(wrong_j | wrong_<j) − w_gold · Σ_j log p(gold_j | gold_<j)``
    over the scored tokens of two model windows (input = ids[:-1]; scoring starts at ``*_from``).

    With weights 1 (``acc``) or 1 / len(choice text) (``acc_norm``) Δ is exactly the quantity
    lm-eval's decision compared. It travels with its case as ``to_params()`` (the gold window
    stored as the length of its prefix shared with the wrong one plus the rest).
    """

    wrong_ids: tuple[int, ...]  # (n_w,)
    wrong_from: int  # index in wrong_ids of the first scored token (>= 1)
    gold_ids: tuple[int, ...]  # (n_g,)
    gold_from: int
    wrong_weight: float = 1.0
    gold_weight: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "wrong_ids", tuple(int(t) for t in self.wrong_ids))
        object.__setattr__(self, "gold_ids", tuple(int(t) for t in self.gold_ids))

    @property
    def shared(self) -> int:
        """Length of the common prefix of the two inputs (positions seen by both passes)."""
        a, b = self.wrong_ids[:-1], self.gold_ids[:-1]
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    @property
    def n_tokens(self) -> int:
        return len(self.wrong_ids) - 1

    def to_params(self) -> dict:
        n = self.shared
        return {"kind": "sequence", "wrong_last": self.wrong_ids[-1], "wrong_from": self.wrong_from,
                "wrong_weight": self.wrong_weight, "gold_shared": n,
                "gold_rest": list(self.gold_ids[n:]), "gold_from": self.gold_from,
                "gold_weight": self.gold_weight}

    @classmethod
    def from_params(cls, token_ids, target: dict) -> SequenceTarget:
        wrong = (*map(int, token_ids), int(target["wrong_last"]))
        gold = (*map(int, token_ids[: int(target["gold_shared"])]),
                *(int(t) for t in target["gold_rest"]))
        return cls(wrong, int(target["wrong_from"]), gold, int(target["gold_from"]),
                   float(target["wrong_weight"]), float(target["gold_weight"]))


Objective = TokenTarget | SequenceTarget


@dataclass(frozen=True)
class Rollout:
    """One first-error rollout of a generation (``contrast.first_error``): at generated position
    ``position`` the model's token ``model_token_id`` was replaced by its rank-``rank``
    alternative, the model continued greedily (``n_tokens`` new tokens) and ``text`` (what the
    task scored) came out ``correct`` or not. ``margin`` = logit[top-1] − logit[top-2] there."""

    position: int  # index into the generated tokens (0 = first generated token)
    model_token_id: int
    model_token: str  # decoded
    alternative_token_id: int
    alternative_token: str  # the alternative decoded
    rank: int  # 1 = the model's second choice
    margin: float
    correct: bool
    text: str
    n_tokens: int  # greedy continuation tokens after the alternative


@dataclass(frozen=True)
class Case:
    """One incorrect response as the contrast stage decided it: a contrast to explain (status
    ``PENDING``) or a skip with its reason (``SKIPPED``, no tokens).

    ``token_ids`` is the explained input (n_tokens,); for a token contrast the objective is
    ``logit[wrong] − logit[gold]`` after it (``position`` = n_tokens), for a sequence contrast
    the two windows in ``built["contrast"]["target"]``. ``built`` records how the case was built
    (``"contrast"``: rule, truncation, target; ``"budget"``: why a budget skipped it); the store
    keeps it in ``cases.method_params`` beside the method's parameters.
    """

    task: str
    doc_id: int
    doc_hash: str
    prompt_hash: str
    target_hash: str
    filter: str
    metric: str
    status: str  # PENDING or SKIPPED
    output_type: str | None = None  # lm-eval output type of the task, e.g. "multiple_choice"
    contrast: str = "token"  # contrast kind: "token" (one position) or "sequence"
    skip_reason: str | None = None
    prompt: str = ""
    pred_index: int | None = None
    gold_index: int | None = None
    pred_text: str | None = None
    gold_text: str | None = None
    position: int | None = None  # index of the contrast token in the scored sequence
    wrong_token_id: int | None = None
    gold_token_id: int | None = None
    wrong_token: str | None = None  # the two ids decoded
    gold_token: str | None = None
    ll_pred: float | None = None  # lm-eval's logged log-likelihoods
    ll_gold: float | None = None
    ll_error: float | None = None  # max |recomputed − logged| log-likelihood (pred and gold)
    token_ids: tuple[int, ...] = ()  # (n_tokens,)
    tokens: tuple[str, ...] = ()  # (n_tokens,) each token decoded alone
    segments: tuple[str, ...] = ()  # (n_tokens,) label from SEGMENTS
    segment_index: tuple[int | None, ...] = ()  # (n_tokens,) which demo/option/reasoning step
    #: input positions holding the evidence the answer needs, when the task's docs record it
    evidence_positions: tuple[int, ...] = ()
    built: dict[str, Any] = field(default_factory=dict)  # how the contrast was built
    #: first-error rollouts tried for this generation, in the order tried (``--xai-rollouts``)
    rollouts: tuple[Rollout, ...] = ()

    @property
    def unit_key(self) -> tuple[str, int, str, str]:
        """Identity of a case inside a run: re-runs skip keys already stored."""
        return (self.task, self.doc_id, self.doc_hash, self.filter)

    @property
    def objective(self) -> Objective | None:
        """What the engine explains for this case (None for a skipped case)."""
        if self.status != PENDING or not self.token_ids:
            return None
        if self.contrast == "sequence":
            return SequenceTarget.from_params(self.token_ids, self.built["contrast"]["target"])
        return TokenTarget(tuple(self.token_ids), int(self.wrong_token_id),
                           int(self.gold_token_id))

    def skipped(self, reason: str, **built) -> Case:
        """This case as a skip (like every skip: no token arrays)."""
        return replace(self, status=SKIPPED, skip_reason=reason, token_ids=(), tokens=(),
                       segments=(), segment_index=(), evidence_positions=(), wrong_token=None,
                       gold_token=None, built={**self.built, **built})


@dataclass(frozen=True)
class Explanation:
    """What was computed for one ``Case``: relevance of its input tokens and internal states.

    ``token_relevance`` (n_tokens,); ``layer_relevance`` (n_layers + 1, n_tokens), row 0 the
    embedding output, row l the output of block l; ``delta`` the explained quantity (token
    contrast: logit[wrong] − logit[gold]); positive relevance pushes toward the wrong answer.
    """

    method: str
    delta: float
    token_relevance: np.ndarray  # (n_tokens,) float32
    layer_relevance: np.ndarray  # (n_layers + 1, n_tokens) float32
    params: dict[str, Any] = field(default_factory=dict)  # the method's (and objective's) params
    #: kind → (n_layers, n_tokens); row l-1 is block l. Kinds: "mid" (residual between attention
    #: and MLP, sequential families), "attn" / "mlp" (the branch outputs added to the residual)
    state_relevance: dict[str, np.ndarray] = field(default_factory=dict)
    head_relevance: np.ndarray | None = None  # (n_layers, n_heads, n_tokens) head outputs
    #: mixture of experts: (n_layers, n_experts, n_tokens) relevance of each routed expert's
    #: weighted output (0 where not selected); None for dense models
    expert_relevance: np.ndarray | None = None
    graph: GraphRecord | None = None
    faithfulness: Faithfulness | None = None
    #: per-case analysis metrics (segment shares, concentration, evidence rank, triage label …)
    analysis: dict[str, Any] = field(default_factory=dict)


#: a case with its explanation (None: skipped, or not yet explained)
Explained = tuple[Case, Explanation | None]
