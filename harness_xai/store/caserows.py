"""A case and its explanation as database rows: validation, the ``cases`` row, child rows.

0. ``case_row(case, explanation)`` joins the two frozen records into one flat, read-only view
   (``CaseRow``): the case's fields, the explanation's arrays, ``status`` attributed when there
   is an explanation, and ``method_params`` = the method's params plus ``case.built``.
1. ``validate_case`` checks every array's shape against the case's token count (and segment
   labels against ``records.SEGMENTS``, evidence positions against the tokens, ``analysis``
   values: numbers, plus the ``triage`` label and ``flags`` list) before anything touches the
   database.
2. ``case_values`` maps the record onto the ``cases`` columns: numpy scalars become Python
   scalars, ``method_params`` becomes JSON (with the faithfulness baseline and parameters under
   ``"faithfulness"``), AOPC values come from ``case.faithfulness``.
3. ``child_rows`` turns the arrays into column-wise inserts (``bulk.insert_columns`` input), all
   index columns built with numpy, row-major over the array:
   - token_relevance: n rows (position, token id/text, relevance, segment, segment_index);
   - layer_relevance: (n_layers + 1) × n rows, layer 0 = embeddings;
   - state_relevance: per kind n_layers × n rows, layer 1-based;
   - head_relevance: n_layers × n_heads × n rows, layer 1-based, head 0-based;
   - expert_relevance: the non-zero entries of (n_layers, n_experts, n) (selected experts),
     layer 1-based, expert 0-based;
   - faithfulness: one row per deletion step;
   - graphs: one summary row; graph_nodes: the finite, non-zero entries of ``node_relevance``
     (pruned nodes are zero); graph_edges: one row per COO edge;
   - token_relevance.evidence: 1 at ``evidence_positions``, 0 elsewhere, NULL without evidence;
   - case_metrics: one row per number in ``case.analysis`` (sorted by name); case_labels: the
     primary label (kind 'triage') and each flag (kind 'flag') of ``case.analysis``;
   - rollouts: one row per ``case.rollouts`` entry, in the order tried (skipped cases too).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import sqlalchemy as sa

from harness_xai.records import ATTRIBUTED, PENDING, SEGMENTS, SKIPPED, Case, Explanation
from harness_xai.store.models import (
    case_labels,
    case_metrics,
    expert_relevance,
    faithfulness,
    graph_edges,
    graph_nodes,
    graphs,
    head_relevance,
    layer_relevance,
    rollouts,
    state_relevance,
    token_relevance,
)


@dataclass(frozen=True)
class CaseRow:
    """One case as the store sees it: ``Case`` fields, ``Explanation`` fields (None/empty for a
    skipped case), the stored status and ``method_params``."""

    case: Case
    explanation: Explanation | None

    def __getattr__(self, name: str) -> Any:
        ex = object.__getattribute__(self, "explanation")
        if name in _EXPLANATION_FIELDS:
            default = {} if name in ("state_relevance", "analysis", "params") else None
            return default if ex is None else getattr(ex, name)
        return getattr(object.__getattribute__(self, "case"), name)

    @property
    def status(self) -> str:
        return ATTRIBUTED if self.explanation is not None else self.case.status

    @property
    def method_params(self) -> dict[str, Any]:
        base = {} if self.explanation is None else dict(self.explanation.params)
        return {**base, **self.case.built}

    @property
    def unit_key(self) -> tuple[str, int, str, str]:
        return self.case.unit_key


_EXPLANATION_FIELDS = {f.name for f in fields(Explanation)}


def case_row(case: Case | CaseRow, explanation: Explanation | None = None) -> CaseRow:
    return case if isinstance(case, CaseRow) else CaseRow(case, explanation)


def _py(value: Any) -> Any:
    """numpy scalar → Python scalar (drivers reject numpy types)."""
    return value.item() if isinstance(value, np.generic) else value


def opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def to_json(value: Any) -> str:
    """Deterministic JSON text (sorted keys; numpy values as plain numbers/lists)."""
    return json.dumps(value, sort_keys=True, default=_json_default)


def _fail(case: CaseRow, what: str) -> None:
    raise ValueError(f"case {case.unit_key}: {what}")


def validate_case(case: CaseRow) -> None:
    """Shape checks before any write (a ValueError here means a bug upstream, not user input)."""
    explained = case.explanation is not None
    if case.case.status != (PENDING if explained else SKIPPED):
        _fail(case, f"a {case.case.status} case written "
                    f"{'with' if explained else 'without'} an explanation (only a pending case "
                    "is explained, only a skipped one is stored without)")
    n = len(case.tokens)
    if case.token_ids and len(case.token_ids) != n:
        _fail(case, f"{len(case.token_ids)} token ids but {n} tokens")
    if case.token_relevance is not None:
        if np.shape(case.token_relevance) != (n,) or len(case.token_ids) != n:
            _fail(case, f"token_relevance shape {np.shape(case.token_relevance)}, expected ({n},) with {n} token ids")
    if case.layer_relevance is not None:
        shape = np.shape(case.layer_relevance)
        if len(shape) != 2 or shape[1] != n or shape[0] < 1:
            _fail(case, f"layer_relevance shape {shape}, expected (n_layers + 1, {n})")
    if case.segments:
        if len(case.segments) != n:
            _fail(case, f"{len(case.segments)} segment labels but {n} tokens")
        unknown = set(case.segments) - set(SEGMENTS)
        if unknown:
            _fail(case, f"unknown segment labels {sorted(unknown)} (expected one of {SEGMENTS})")
    if case.segment_index and len(case.segment_index) != n:
        _fail(case, f"{len(case.segment_index)} segment indices but {n} tokens")
    for kind, arr in (case.state_relevance or {}).items():
        shape = np.shape(arr)
        if not isinstance(kind, str) or not kind or len(shape) != 2 or shape[1] != n:
            _fail(case, f"state_relevance[{kind!r}] shape {shape}, expected (n_layers, {n})")
    if case.head_relevance is not None:
        shape = np.shape(case.head_relevance)
        if len(shape) != 3 or shape[2] != n:
            _fail(case, f"head_relevance shape {shape}, expected (n_layers, n_heads, {n})")
    if case.expert_relevance is not None:
        shape = np.shape(case.expert_relevance)
        if len(shape) != 3 or shape[2] != n:
            _fail(case, f"expert_relevance shape {shape}, expected (n_layers, n_experts, {n})")
    f = case.faithfulness
    if f is not None:
        lengths = {len(f.fractions), len(f.n_removed), len(f.delta_relevance), len(f.delta_random)}
        if len(lengths) != 1:
            _fail(case, "faithfulness curves of different lengths")
    if case.graph is not None:
        _validate_graph(case)
    if case.token_relevance is not None and any(not 0 <= int(p) < n
                                                for p in case.evidence_positions or []):
        _fail(case, f"evidence positions {list(case.evidence_positions)} outside 0..{n - 1}")
    _validate_analysis(case)


#: keys of ``Explanation.analysis`` that are labels, not metrics
LABEL_KEYS = {"triage": "triage", "flags": "flag"}


def _validate_analysis(case: CaseRow) -> None:
    for key, value in (case.analysis or {}).items():
        if not isinstance(key, str) or not key:
            _fail(case, f"analysis key {key!r} is not a name")
        if key == "triage":
            if value is not None and not isinstance(value, str):
                _fail(case, f"analysis triage {value!r} is not a label")
        elif key == "flags":
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                _fail(case, f"analysis flags {value!r} are not a list of labels")
        elif value is not None and (isinstance(value, bool) or
                                    not isinstance(value, (int, float, np.integer, np.floating))):
            _fail(case, f"analysis metric {key!r} = {value!r} is not a number")


def _validate_graph(case: CaseRow) -> None:
    g = case.graph
    nodes = np.shape(g.node_relevance)
    if len(nodes) != 2 or nodes[0] != len(g.node_layers):
        _fail(case, f"graph node_relevance shape {nodes}, expected ({len(g.node_layers)}, n_tokens)")
    edges = [np.asarray(a) for a in (g.source_layer, g.source_position, g.target_layer, g.target_position, g.weight)]
    if any(a.ndim != 1 or a.shape != edges[0].shape for a in edges):
        _fail(case, "graph edge arrays must be 1-D and of one length")
    for layer, pos in ((edges[0], edges[1]), (edges[2], edges[3])):
        if layer.size and (layer.min() < 0 or layer.max() >= nodes[0] or pos.min() < 0 or pos.max() >= nodes[1]):
            _fail(case, "graph edge endpoint outside node_relevance")


def case_values(run_id: int, case: CaseRow) -> dict[str, Any]:
    """The ``cases`` row of ``case``."""
    params = dict(case.method_params or {})
    f = case.faithfulness
    if f is not None:
        params.setdefault("faithfulness", {"baseline_token_id": int(f.baseline_token_id), **(f.params or {})})
    return {
        "run_id": int(run_id),
        "task": case.task,
        "doc_id": int(case.doc_id),
        "doc_hash": case.doc_hash,
        "prompt_hash": case.prompt_hash,
        "target_hash": case.target_hash,
        "filter": case.filter,
        "metric": case.metric,
        "status": case.status,
        "skip_reason": case.skip_reason,
        "prompt": case.prompt,
        "pred_index": opt_int(case.pred_index),
        "gold_index": opt_int(case.gold_index),
        "pred_text": case.pred_text,
        "gold_text": case.gold_text,
        "position": opt_int(case.position),
        "wrong_token_id": opt_int(case.wrong_token_id),
        "gold_token_id": opt_int(case.gold_token_id),
        "wrong_token": case.wrong_token,
        "gold_token": case.gold_token,
        "delta": opt_float(case.delta),
        "ll_pred": opt_float(case.ll_pred),
        "ll_gold": opt_float(case.ll_gold),
        "method": case.method,
        "n_tokens": len(case.tokens) if case.tokens else None,
        "output_type": case.output_type,
        "contrast": case.contrast,
        "ll_error": opt_float(case.ll_error),
        "method_params": to_json(params) if params else None,
        "aopc": None if f is None else opt_float(f.aopc),
        "aopc_random": None if f is None else opt_float(f.aopc_random),
    }


Rows = list[tuple[sa.Table, dict[str, Any]]]


def child_rows(case_id: int, case: CaseRow) -> Rows:
    """Column-wise rows of every child table the case carries (graphs row included)."""
    out: Rows = []
    n = len(case.tokens)
    if case.token_relevance is not None:
        out.append((token_relevance, {
            "case_id": case_id,
            "position": np.arange(n, dtype=np.int32),
            "token_id": np.asarray(case.token_ids, dtype=np.int64),
            "token": [str(t) for t in case.tokens],
            "relevance": np.asarray(case.token_relevance, dtype=np.float64),  # (n,)
            "segment": list(case.segments) if case.segments else None,
            "segment_index": [opt_int(i) for i in case.segment_index] if case.segment_index else None,
            "evidence": _evidence_column(case, n),
        }))
    if case.layer_relevance is not None:
        rel = np.asarray(case.layer_relevance, dtype=np.float64)  # (n_layers + 1, n)
        n_rows = rel.shape[0]
        out.append((layer_relevance, {
            "case_id": case_id,
            "layer": np.repeat(np.arange(n_rows, dtype=np.int32), n),  # (n_rows * n,) row-major
            "position": np.tile(np.arange(n, dtype=np.int32), n_rows),
            "relevance": rel.ravel(),
        }))
    for kind, arr in sorted((case.state_relevance or {}).items()):
        rel = np.asarray(arr, dtype=np.float64)  # (n_layers, n)
        n_layers = rel.shape[0]
        out.append((state_relevance, {
            "case_id": case_id,
            "kind": kind,
            "layer": np.repeat(np.arange(1, n_layers + 1, dtype=np.int32), n),
            "position": np.tile(np.arange(n, dtype=np.int32), n_layers),
            "relevance": rel.ravel(),
        }))
    if case.head_relevance is not None:
        rel = np.asarray(case.head_relevance, dtype=np.float64)  # (n_layers, n_heads, n)
        n_layers, n_heads, _ = rel.shape
        out.append((head_relevance, {
            "case_id": case_id,
            "layer": np.repeat(np.arange(1, n_layers + 1, dtype=np.int32), n_heads * n),
            "head": np.tile(np.repeat(np.arange(n_heads, dtype=np.int32), n), n_layers),
            "position": np.tile(np.arange(n, dtype=np.int32), n_layers * n_heads),
            "relevance": rel.ravel(),
        }))
    if case.expert_relevance is not None:
        rel = np.asarray(case.expert_relevance, dtype=np.float64)  # (n_layers, n_experts, n)
        layer, expert, position = np.nonzero(rel)  # row-major: only the selected experts
        out.append((expert_relevance, {
            "case_id": case_id,
            "layer": (layer + 1).astype(np.int32),
            "expert": expert.astype(np.int32),
            "position": position.astype(np.int32),
            "relevance": rel[layer, expert, position],
        }))
    f = case.faithfulness
    if f is not None and len(f.fractions):
        out.append((faithfulness, {
            "case_id": case_id,
            "step": np.arange(len(f.fractions), dtype=np.int32),
            "fraction": [opt_float(v) for v in f.fractions],
            "n_removed": [opt_int(v) for v in f.n_removed],
            "delta_relevance": [opt_float(v) for v in f.delta_relevance],
            "delta_random": [opt_float(v) for v in f.delta_random],
        }))
    if case.graph is not None:
        out += _graph_rows(case_id, case)
    out += _analysis_rows(case_id, case)
    if case.rollouts:
        out.append((rollouts, {
            "case_id": case_id,
            "rollout": np.arange(len(case.rollouts), dtype=np.int32),
            "position": np.array([r.position for r in case.rollouts], dtype=np.int32),
            "model_token_id": np.array([r.model_token_id for r in case.rollouts], dtype=np.int32),
            "model_token": [str(r.model_token) for r in case.rollouts],
            "alternative_token_id": np.array([r.alternative_token_id for r in case.rollouts],
                                             dtype=np.int32),
            "alternative_token": [str(r.alternative_token) for r in case.rollouts],
            "rank": np.array([r.rank for r in case.rollouts], dtype=np.int32),
            "margin": np.array([r.margin for r in case.rollouts], dtype=np.float64),
            "correct": np.array([int(bool(r.correct)) for r in case.rollouts], dtype=np.int32),
            "n_tokens": np.array([r.n_tokens for r in case.rollouts], dtype=np.int32),
            "text": [str(r.text) for r in case.rollouts],
        }))
    return out


def _evidence_column(case: CaseRow, n: int) -> np.ndarray | None:
    if not case.evidence_positions:
        return None  # unknown: NULL
    column = np.zeros(n, dtype=np.int32)  # (n,)
    column[sorted({int(p) for p in case.evidence_positions})] = 1
    return column


def _analysis_rows(case_id: int, case: CaseRow) -> Rows:
    analysis = case.analysis or {}
    metrics = sorted((k, float(v)) for k, v in analysis.items()
                     if k not in LABEL_KEYS and v is not None and np.isfinite(float(v)))
    labels = ([("triage", analysis["triage"])] if analysis.get("triage") else []) + \
        [("flag", f) for f in dict.fromkeys(analysis.get("flags") or [])]
    out: Rows = []
    if metrics:
        out.append((case_metrics, {"case_id": case_id, "name": [k for k, _ in metrics],
                                   "value": np.array([v for _, v in metrics], dtype=np.float64)}))
    if labels:
        out.append((case_labels, {"case_id": case_id, "kind": [k for k, _ in labels],
                                  "label": [v for _, v in labels]}))
    return out


def _graph_rows(case_id: int, case: CaseRow) -> Rows:
    g = case.graph
    nodes = np.asarray(g.node_relevance, dtype=np.float64)  # (n_node_layers, n)
    layer, position = np.nonzero(np.isfinite(nodes) & (nodes != 0))  # (n_nodes,) each
    weight = np.asarray(g.weight, dtype=np.float64)  # (n_edges,)
    metrics = dict(g.metrics or {})
    summary = {
        "case_id": case_id,
        "node_layers": to_json(list(g.node_layers)),
        "n_nodes": int(layer.size),
        "n_edges": int(weight.size),
        "mass_kept": opt_float(_py(metrics.get("mass_kept"))),
        "formation_layer": opt_int(_py(metrics.get("formation_layer"))),
        "params": to_json(g.params or {}),
        "metrics": to_json(metrics),
    }
    return [
        (graphs, summary),
        (graph_nodes, {"case_id": case_id, "layer": layer.astype(np.int32),
                       "position": position.astype(np.int32), "relevance": nodes[layer, position]}),
        (graph_edges, {
            "case_id": case_id,
            "source_layer": np.asarray(g.source_layer, dtype=np.int64),
            "source_position": np.asarray(g.source_position, dtype=np.int64),
            "target_layer": np.asarray(g.target_layer, dtype=np.int64),
            "target_position": np.asarray(g.target_position, dtype=np.int64),
            "weight": weight,
        }),
    ]
