"""SQLAlchemy 2 declarative models of the harness-xai result schema (five tables).

The schema is fixed (the report reads it directly); the migration in
``migrations/versions/0001_initial.py`` creates exactly these tables. Notes:

1. Integer surrogate keys (``runs.id``, ``cases.id``) take their values from explicit sequences:
   DuckDB has no SERIAL, and the PostgreSQL dialect (which duckdb-engine builds on) would emit
   SERIAL for a plain autoincrement column. SQLAlchemy fires ``nextval`` itself on inserts; the
   migration adds ``DEFAULT nextval(...)`` on backends with sequences so raw SQL inserts work too.
   SQLite has no sequences; there the column is ``INTEGER PRIMARY KEY`` (rowid). Do not use
   ``metadata.create_all`` for real databases: the migration is the source of truth.
2. ``runs.tasks`` and ``runs.config`` hold JSON as TEXT (portable across DuckDB, SQLite, PostgreSQL).
3. ``runs.created_at`` is a naive UTC timestamp.
4. Relevance tables are keyed by (case, position) and (case, layer, position); layer 0 is the
   embedding output, layer l the output of block l.
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


class Run(Base):
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


class TaskResult(Base):
    """Per-task aggregate of one run."""

    __tablename__ = "task_results"

    run_id: Mapped[int] = mapped_column(Integer, ForeignKey("runs.id"), primary_key=True)
    task: Mapped[str] = mapped_column(Text, primary_key=True)
    metric: Mapped[str | None] = mapped_column(Text)
    value: Mapped[float | None] = mapped_column(Double)
    n_samples: Mapped[int | None] = mapped_column(Integer)
    n_incorrect: Mapped[int | None] = mapped_column(Integer)
    output_type: Mapped[str | None] = mapped_column(Text)


class Case(Base):
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


class TokenRelevance(Base):
    """Relevance of each input token of a case (one row per position)."""

    __tablename__ = "token_relevance"

    case_id: Mapped[int] = mapped_column(Integer, ForeignKey("cases.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_id: Mapped[int | None] = mapped_column(Integer)
    token: Mapped[str | None] = mapped_column(Text)
    relevance: Mapped[float | None] = mapped_column(Double)


class LayerRelevance(Base):
    """Relevance of the residual stream per (layer, position) of a case."""

    __tablename__ = "layer_relevance"

    case_id: Mapped[int] = mapped_column(Integer, ForeignKey("cases.id"), primary_key=True)
    layer: Mapped[int] = mapped_column(Integer, primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    relevance: Mapped[float | None] = mapped_column(Double)


runs = Run.__table__
task_results = TaskResult.__table__
cases = Case.__table__
token_relevance = TokenRelevance.__table__
layer_relevance = LayerRelevance.__table__
