"""SQLAlchemy 2 declarative models of the harness-xai result schema (sixteen tables).

The schema is fixed (the report reads it directly); the migrations in ``migrations/versions``
create exactly these tables (0001: the first five; 0002: ``runs.step``, the case columns of the
engine/contrast issues, token segments and the six tables of internal states, heads, faithfulness
curves and graphs; 0003: read-only views, see ``views.py``; 0004: ``case_metrics``,
``case_labels`` and ``token_relevance.evidence`` of the per-case analysis; 0005:
``doc_outcomes``, every evaluated document's outcome per run; 0006: ``runs.model_name``, the
short model name, also in the ``case_overview`` view; 0007: ``expert_relevance``, relevance per routed expert
of mixture-of-experts models; 0008: ``rollouts``, every first-error rollout of a generation; 0009: DuckDB's per-position tables keyed by the writer's checked insert). Notes:

1. Integer surrogate keys (``runs.id``, ``cases.id``) take their values from explicit sequences:
   DuckDB has no SERIAL, and the PostgreSQL dialect (which duckdb-engine builds on) would emit
   SERIAL for a plain autoincrement column. SQLAlchemy fires ``nextval`` itself on inserts; the
   migration adds ``DEFAULT nextval(...)`` on backends with sequences so raw SQL inserts work too.
   SQLite has no sequences; there the column is ``INTEGER PRIMARY KEY`` (rowid). Do not use
   ``metadata.create_all`` for real databases: the migration is the source of truth.
2. ``runs.tasks`` and ``runs.config`` hold JSON as TEXT (portable across DuckDB, SQLite, PostgreSQL).
3. ``runs.created_at`` is a naive UTC timestamp.
4. Relevance tables are keyed by (case, position) and (case, layer, position); in
   ``layer_relevance`` layer 0 is the embedding output, layer l the output of block l; in
   ``state_relevance`` and ``head_relevance`` layer l (1-based) is block l.
5. ``cases.method_params``, ``graphs.node_layers/params/metrics`` hold JSON as TEXT.
6. Every child table references ``cases.id``; a case and all its rows commit in one transaction.
7. Layout trade-off: arrays are stored one row per cell (not as per-case typed arrays/BLOBs) so
   plain SQL on every backend can filter, join and aggregate them (views, README queries) and
   keys reject duplicates. The price is write speed: DuckDB maintains the ART indexes of the
   primary keys and probes the foreign keys per row (bench/bench_store.py measures the bulk
   path with and without keys), and rows take more space than a packed array would.
8. ``doc_outcomes`` references ``runs.id`` (not ``cases``): one row per logged sample, correct or
   not; its key is the unit key of ``cases``, so a case joins its outcome row.
"""

from __future__ import annotations

import datetime as _dt

from sqlalchemy import (
    BigInteger,
    DateTime,
    Double,
    ForeignKey,
    Integer,
    MetaData,
    Sequence,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base; ``Base.metadata`` describes the whole schema."""

    metadata = MetaData()


#: sequences feeding the surrogate keys (ignored on SQLite)
RUNS_ID_SEQ = Sequence("runs_id_seq", metadata=Base.metadata)
CASES_ID_SEQ = Sequence("cases_id_seq", metadata=Base.metadata)


class RunTable(Base):
    """One harness-xai invocation; ``run_key`` makes re-runs map onto the same row."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, RUNS_ID_SEQ, primary_key=True)
    run_key: Mapped[str] = mapped_column(Text, unique=True, nullable=False)
    created_at: Mapped[_dt.datetime | None] = mapped_column(DateTime)
    model: Mapped[str | None] = mapped_column(Text)
    model_args: Mapped[str | None] = mapped_column(Text)
    pretrained: Mapped[str | None] = mapped_column(Text)
    revision: Mapped[str | None] = mapped_column(Text)
    model_type: Mapped[str | None] = mapped_column(Text)
    n_params: Mapped[int | None] = mapped_column(BigInteger)
    tasks: Mapped[str | None] = mapped_column(Text)  # JSON list
    method: Mapped[str | None] = mapped_column(Text)
    lm_eval_version: Mapped[str | None] = mapped_column(Text)
    harness_xai_version: Mapped[str | None] = mapped_column(Text)
    config: Mapped[str | None] = mapped_column(Text)  # JSON object
    step: Mapped[int | None] = mapped_column(Integer)  # checkpoint training step (0002)
    model_name: Mapped[str | None] = mapped_column(Text)  # short name: hub id or dir name (0006)


class TaskResultTable(Base):
    """Per-task aggregate of one run."""

    __tablename__ = "task_results"

    run_id: Mapped[int] = mapped_column(Integer, ForeignKey("runs.id"), primary_key=True)
    task: Mapped[str] = mapped_column(Text, primary_key=True)
    metric: Mapped[str | None] = mapped_column(Text)
    value: Mapped[float | None] = mapped_column(Double)
    n_samples: Mapped[int | None] = mapped_column(Integer)
    n_incorrect: Mapped[int | None] = mapped_column(Integer)
    output_type: Mapped[str | None] = mapped_column(Text)


class DocOutcomeTable(Base):
    """How one evaluated document fared under one filter in one run (0005)."""

    __tablename__ = "doc_outcomes"

    run_id: Mapped[int] = mapped_column(Integer, ForeignKey("runs.id"), primary_key=True)
    task: Mapped[str] = mapped_column(Text, primary_key=True)
    doc_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    doc_hash: Mapped[str] = mapped_column(Text, primary_key=True)
    filter: Mapped[str] = mapped_column(Text, primary_key=True)
    metric: Mapped[str | None] = mapped_column(Text)  # decision metric, e.g. 'acc'
    value: Mapped[float | None] = mapped_column(Double)  # its per-sample value
    correct: Mapped[int | None] = mapped_column(Integer)  # 1 / 0 / NULL (no notion of correct)


class CaseTable(Base):
    """One incorrect response and its contrast (attributed or skipped with a reason)."""

    __tablename__ = "cases"
    __table_args__ = (UniqueConstraint("run_id", "task", "doc_id", "doc_hash", "filter"),)

    id: Mapped[int] = mapped_column(Integer, CASES_ID_SEQ, primary_key=True)
    run_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("runs.id"))
    task: Mapped[str | None] = mapped_column(Text)
    doc_id: Mapped[int | None] = mapped_column(Integer)
    doc_hash: Mapped[str | None] = mapped_column(Text)
    prompt_hash: Mapped[str | None] = mapped_column(Text)
    target_hash: Mapped[str | None] = mapped_column(Text)
    filter: Mapped[str | None] = mapped_column(Text)
    metric: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str | None] = mapped_column(Text)  # 'attributed' | 'skipped'
    skip_reason: Mapped[str | None] = mapped_column(Text)
    prompt: Mapped[str | None] = mapped_column(Text)
    pred_index: Mapped[int | None] = mapped_column(Integer)
    gold_index: Mapped[int | None] = mapped_column(Integer)
    pred_text: Mapped[str | None] = mapped_column(Text)
    gold_text: Mapped[str | None] = mapped_column(Text)
    position: Mapped[int | None] = mapped_column(Integer)
    wrong_token_id: Mapped[int | None] = mapped_column(Integer)
    gold_token_id: Mapped[int | None] = mapped_column(Integer)
    wrong_token: Mapped[str | None] = mapped_column(Text)
    gold_token: Mapped[str | None] = mapped_column(Text)
    delta: Mapped[float | None] = mapped_column(Double)
    ll_pred: Mapped[float | None] = mapped_column(Double)
    ll_gold: Mapped[float | None] = mapped_column(Double)
    method: Mapped[str | None] = mapped_column(Text)
    n_tokens: Mapped[int | None] = mapped_column(Integer)
    # --- 0002 ---
    output_type: Mapped[str | None] = mapped_column(Text)  # lm-eval output type
    contrast: Mapped[str | None] = mapped_column(Text)  # 'token' | 'sequence'
    ll_error: Mapped[float | None] = mapped_column(Double)  # max |recomputed - logged| log-lik
    method_params: Mapped[str | None] = mapped_column(Text)  # JSON object
    aopc: Mapped[float | None] = mapped_column(Double)  # faithfulness, relevance order
    aopc_random: Mapped[float | None] = mapped_column(Double)  # faithfulness, random orders


class TokenRelevanceTable(Base):
    """Relevance of each input token of a case (one row per position)."""

    __tablename__ = "token_relevance"

    case_id: Mapped[int] = mapped_column(Integer, ForeignKey("cases.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_id: Mapped[int | None] = mapped_column(Integer)
    token: Mapped[str | None] = mapped_column(Text)
    relevance: Mapped[float | None] = mapped_column(Double)
    segment: Mapped[str | None] = mapped_column(Text)  # records.SEGMENTS label (0002)
    segment_index: Mapped[int | None] = mapped_column(Integer)  # which demo / option (0002)
    evidence: Mapped[int | None] = mapped_column(Integer)  # 1 evidence, 0 not, NULL unknown (0004)


class LayerRelevanceTable(Base):
    """Relevance of the residual stream per (layer, position) of a case."""

    __tablename__ = "layer_relevance"

    case_id: Mapped[int] = mapped_column(Integer, ForeignKey("cases.id"), primary_key=True)
    layer: Mapped[int] = mapped_column(Integer, primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    relevance: Mapped[float | None] = mapped_column(Double)


class StateRelevanceTable(Base):
    """Relevance of internal states per (kind, block, position): kinds 'mid', 'attn', 'mlp'."""

    __tablename__ = "state_relevance"

    case_id: Mapped[int] = mapped_column(Integer, ForeignKey("cases.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(Text, primary_key=True)
    layer: Mapped[int] = mapped_column(Integer, primary_key=True)  # 1-based block
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    relevance: Mapped[float | None] = mapped_column(Double)


class HeadRelevanceTable(Base):
    """Relevance of each attention head's output per (block, head, position)."""

    __tablename__ = "head_relevance"

    case_id: Mapped[int] = mapped_column(Integer, ForeignKey("cases.id"), primary_key=True)
    layer: Mapped[int] = mapped_column(Integer, primary_key=True)  # 1-based block
    head: Mapped[int] = mapped_column(Integer, primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    relevance: Mapped[float | None] = mapped_column(Double)


class ExpertRelevanceTable(Base):
    """Mixture of experts: relevance of each routed expert's weighted output ``w_e · E_e(x)``
    per (block, expert, position); only the selected (non-zero) entries are stored, so a
    (layer, expert) total is a SUM over positions and Σ over experts = the block's 'mlp' state."""

    __tablename__ = "expert_relevance"

    case_id: Mapped[int] = mapped_column(Integer, ForeignKey("cases.id"), primary_key=True)
    layer: Mapped[int] = mapped_column(Integer, primary_key=True)  # 1-based block
    expert: Mapped[int] = mapped_column(Integer, primary_key=True)  # 0-based
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    relevance: Mapped[float | None] = mapped_column(Double)


class FaithfulnessStepTable(Base):
    """One step of a deletion curve (records.Faithfulness); AOPC values live on ``cases``."""

    __tablename__ = "faithfulness"

    case_id: Mapped[int] = mapped_column(Integer, ForeignKey("cases.id"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    fraction: Mapped[float | None] = mapped_column(Double)
    n_removed: Mapped[int | None] = mapped_column(Integer)
    delta_relevance: Mapped[float | None] = mapped_column(Double)
    delta_random: Mapped[float | None] = mapped_column(Double)


class GraphTable(Base):
    """Summary of a case's pruned attribution graph (records.GraphRecord)."""

    __tablename__ = "graphs"

    case_id: Mapped[int] = mapped_column(Integer, ForeignKey("cases.id"), primary_key=True)
    node_layers: Mapped[str | None] = mapped_column(Text)  # JSON list of layer names
    n_nodes: Mapped[int | None] = mapped_column(Integer)
    n_edges: Mapped[int | None] = mapped_column(Integer)
    mass_kept: Mapped[float | None] = mapped_column(Double)
    formation_layer: Mapped[int | None] = mapped_column(Integer)
    params: Mapped[str | None] = mapped_column(Text)  # JSON object
    metrics: Mapped[str | None] = mapped_column(Text)  # JSON object


class GraphNodeTable(Base):
    """A node of the pruned graph: (index into node_layers, position) and its relevance."""

    __tablename__ = "graph_nodes"

    case_id: Mapped[int] = mapped_column(Integer, ForeignKey("cases.id"), primary_key=True)
    layer: Mapped[int] = mapped_column(Integer, primary_key=True)  # index into node_layers
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    relevance: Mapped[float | None] = mapped_column(Double)


class GraphEdgeTable(Base):
    """An edge of the pruned graph, source node → target node, with its relevance flow."""

    __tablename__ = "graph_edges"

    case_id: Mapped[int] = mapped_column(Integer, ForeignKey("cases.id"), primary_key=True)
    source_layer: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_position: Mapped[int] = mapped_column(Integer, primary_key=True)
    target_layer: Mapped[int] = mapped_column(Integer, primary_key=True)
    target_position: Mapped[int] = mapped_column(Integer, primary_key=True)
    weight: Mapped[float | None] = mapped_column(Double)


class CaseMetricTable(Base):
    """One per-case analysis metric (``harness_xai.analysis``), e.g. ``evidence.rank_abs``."""

    __tablename__ = "case_metrics"

    case_id: Mapped[int] = mapped_column(Integer, ForeignKey("cases.id"), primary_key=True)
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[float | None] = mapped_column(Double)


class CaseLabelTable(Base):
    """Triage of a case: kind 'triage' = the primary label, kind 'flag' = each rule that fired."""

    __tablename__ = "case_labels"

    case_id: Mapped[int] = mapped_column(Integer, ForeignKey("cases.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(Text, primary_key=True)
    label: Mapped[str] = mapped_column(Text, primary_key=True)


class RolloutTable(Base):
    """One first-error rollout of a generation (``records.Rollout``, ``--xai-rollouts``): the
    model's token at generated ``position`` replaced by its rank-``rank`` alternative, continued
    greedily for ``n_tokens`` tokens; ``text`` is what the task scored, ``correct`` 1 when that
    made the sample correct (the flip that located the first error), else 0."""

    __tablename__ = "rollouts"

    case_id: Mapped[int] = mapped_column(Integer, ForeignKey("cases.id"), primary_key=True)
    rollout: Mapped[int] = mapped_column(Integer, primary_key=True)  # 0-based, order tried
    position: Mapped[int | None] = mapped_column(Integer)  # index into the generated tokens
    model_token_id: Mapped[int | None] = mapped_column(Integer)
    model_token: Mapped[str | None] = mapped_column(Text)
    alternative_token_id: Mapped[int | None] = mapped_column(Integer)
    alternative_token: Mapped[str | None] = mapped_column(Text)
    rank: Mapped[int | None] = mapped_column(Integer)  # 1 = the model's second choice
    margin: Mapped[float | None] = mapped_column(Double)  # logit top-1 − top-2 at position
    correct: Mapped[int | None] = mapped_column(Integer)  # 1 / 0
    n_tokens: Mapped[int | None] = mapped_column(Integer)  # greedy tokens after the alternative
    text: Mapped[str | None] = mapped_column(Text)


runs = RunTable.__table__
task_results = TaskResultTable.__table__
doc_outcomes = DocOutcomeTable.__table__
cases = CaseTable.__table__
token_relevance = TokenRelevanceTable.__table__
layer_relevance = LayerRelevanceTable.__table__
state_relevance = StateRelevanceTable.__table__
head_relevance = HeadRelevanceTable.__table__
expert_relevance = ExpertRelevanceTable.__table__
faithfulness = FaithfulnessStepTable.__table__
graphs = GraphTable.__table__
graph_nodes = GraphNodeTable.__table__
graph_edges = GraphEdgeTable.__table__
case_metrics = CaseMetricTable.__table__
case_labels = CaseLabelTable.__table__
rollouts = RolloutTable.__table__

#: every table, parents first (export order; reverse for deletes)
ALL_TABLES = (runs, task_results, doc_outcomes, cases, token_relevance, layer_relevance,
              state_relevance, head_relevance, expert_relevance, faithfulness, graphs, graph_nodes,
              graph_edges, case_metrics, case_labels, rollouts)
