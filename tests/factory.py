"""The test suite's record factory: runs, cases and their explanations (no tests in this module).

- ``make_run``: a ``RunRecord`` (nasty config text, a +02:00 timestamp, a checkpoint step);
- ``make_case``: the standard explained case, a ``(Case, Explanation)`` pair over the ``NASTY``
  tokens with random relevance; ``full`` adds segments, states, heads, faithfulness and a graph;
  any ``Case`` or ``Explanation`` field can be overridden by keyword;
- ``explained``: a ``(Case, Explanation)`` pair from given fields (the identity fields, token ids
  and texts get defaults), for tests that construct their own relevance;
- ``make_skipped``: a skipped ``Case`` (no explanation, no tokens).
Keyword values are routed by field name to the ``Case`` or the ``Explanation``; sequences of the
case's tuple fields (token_ids, tokens, …) become tuples.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import fields, replace
from typing import Any

import numpy as np

from harness_xai.records import PENDING, SKIPPED, Case, Explanation, Faithfulness, GraphRecord, RunRecord

NASTY = [
    "'; DROP TABLE cases; --",
    "<script>alert('x')</script>",
    'say "hi"',
    "naïve ☃ 日本語 🙂",
    "\n",
    "",
    " back\\slash %s :param ? $1 $$",
]

CASE_FIELDS = frozenset(f.name for f in fields(Case))
EXPLANATION_FIELDS = frozenset(f.name for f in fields(Explanation))
#: Case fields declared as tuples
_TUPLE_FIELDS = ("token_ids", "tokens", "segments", "segment_index", "evidence_positions")


def make_run(key: str = "run-1", *, step: int | None = 3000, n_params: int = 123_456_789_012,
             pretrained: str = "/models/tiny") -> RunRecord:
    return RunRecord(
        run_key=key,
        model="hf",
        model_args=f"pretrained={pretrained},dtype=float32",
        pretrained=pretrained,
        revision=None if step is None else f"step{step}",
        model_type="llama",
        n_params=n_params,
        tasks=["arc_easy", "tiny_mc"],
        method="attnlrp",
        lm_eval_version="0.4.13",
        harness_xai_version="0.1.0",
        config={"num_fewshot": 2, "limit": None, "nested": {"a": [1, 2.5, "x"]}, "text": NASTY[0]},
        created_at=dt.datetime(2026, 11, 24, 9, 30, 15, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        step=step,
    )


def _split(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword values → (Case fields, Explanation fields); an unknown name is a TypeError."""
    unknown = set(values) - CASE_FIELDS - EXPLANATION_FIELDS
    if unknown:
        raise TypeError(f"not a Case or Explanation field: {sorted(unknown)}")
    case = {k: v for k, v in values.items() if k in CASE_FIELDS}
    for name in _TUPLE_FIELDS:
        if name in case:
            case[name] = tuple(case[name])
    return case, {k: v for k, v in values.items() if k in EXPLANATION_FIELDS}


def explained(token_relevance, *, task: str = "t", doc_id: int = 0, delta: float = 1.0,
              method: str = "attnlrp", layer_relevance=None, **values) -> tuple[Case, Explanation]:
    """A pending case and its explanation: ``token_relevance`` (n,) as given (None: no token
    rows), tokens ``t0 … t{n-1}`` with ids ``0 … n-1`` unless given, identity ``d{doc_id}`` /
    ``p{doc_id}`` / ``t{doc_id}`` unless given; every other ``Case`` / ``Explanation`` field by
    keyword."""
    n = 0 if token_relevance is None else int(np.size(token_relevance))
    case_values, ex_values = _split(values)
    case = Case(**{"task": task, "doc_id": doc_id, "doc_hash": f"d{doc_id}", "prompt_hash": f"p{doc_id}",
                   "target_hash": f"t{doc_id}", "filter": "none", "metric": "acc", "status": PENDING,
                   "token_ids": tuple(range(n)), "tokens": tuple(f"t{i}" for i in range(n)), **case_values})
    ex = Explanation(**{"method": method, "delta": delta, "token_relevance": token_relevance,
                        "layer_relevance": layer_relevance, **ex_values})
    return case, ex


def make_case(doc_id: int = 7, n_tokens: int = len(NASTY), n_layers: int = 3, seed: int = 0,
              *, full: bool = True, task: str = "tiny_mc", n_heads: int = 2,
              **overrides) -> tuple[Case, Explanation]:
    """An explained case (stored as attributed); ``full`` adds segments, states, heads,
    faithfulness and a graph. ``overrides``: ``Case`` / ``Explanation`` fields replaced after the
    random ones are drawn (the draws do not change)."""
    rng = np.random.default_rng(seed)
    tokens = [NASTY[i % len(NASTY)] for i in range(n_tokens)]
    case = Case(
        task=task,
        doc_id=doc_id,
        doc_hash=f"dh{doc_id}",
        prompt_hash="ph",
        target_hash="th",
        filter="none",
        metric="acc",
        status=PENDING,
        prompt="Q: " + " | ".join(NASTY),
        pred_index=np.int64(2),  # numpy scalars must be accepted
        gold_index=0,
        pred_text=" <b>wrong</b>",
        gold_text=" right'",
        position=n_tokens,
        wrong_token_id=11,
        gold_token_id=12,
        wrong_token=" <b>",
        gold_token=" r'",
        ll_pred=-0.5,
        ll_gold=-1.75,
        token_ids=tuple(int(t) for t in rng.integers(0, 50_000, n_tokens)),
        tokens=tuple(tokens),
    )
    ex = Explanation(
        method="attnlrp",
        delta=np.float32(1.25) + seed,
        token_relevance=rng.normal(size=n_tokens).astype(np.float32),  # (n_tokens,)
        layer_relevance=rng.normal(size=(n_layers + 1, n_tokens)).astype(np.float32),  # (L+1, n)
    )
    if full:
        labels = ["special", "instruction", "fewshot", "question", "option", "continuation"]
        segments = tuple(labels[min(i * len(labels) // n_tokens, len(labels) - 1)] for i in range(n_tokens))
        case = replace(
            case, output_type="multiple_choice", contrast="token", ll_error=1e-6 * (seed + 1),
            segments=segments,
            segment_index=tuple(i % 2 if segments[i] in ("fewshot", "option") else None for i in range(n_tokens)))
        state_relevance = {k: rng.normal(size=(n_layers, n_tokens)).astype(np.float32) for k in ("mid", "attn", "mlp")}
        head_relevance = rng.normal(size=(n_layers, n_heads, n_tokens)).astype(np.float32)  # (L, H, n)
        steps = 4
        faith = Faithfulness(
            fractions=[0.1 * (s + 1) for s in range(steps)], n_removed=[s + 1 for s in range(steps)],
            delta_relevance=rng.normal(size=steps).tolist(), delta_random=rng.normal(size=steps).tolist(),
            aopc=0.5 + 0.1 * seed, aopc_random=0.2, baseline_token_id=0, params={"orders": 3})
        nodes = rng.normal(size=(n_layers + 1, n_tokens)).astype(np.float32)  # (L+1, n)
        nodes[:, 0] = 0.0  # pruned nodes are zero
        src = np.arange(n_layers).repeat(2)
        graph = GraphRecord(
            node_layers=["emb"] + [str(l) for l in range(1, n_layers + 1)], node_relevance=nodes,
            source_layer=src.astype(np.int32), source_position=np.tile([1, 2], n_layers).astype(np.int32),
            target_layer=(src + 1).astype(np.int32), target_position=np.tile([2, 3], n_layers).astype(np.int32),
            weight=rng.normal(size=2 * n_layers).astype(np.float32), params={"top_k": 2},
            metrics={"mass_kept": 0.8, "formation_layer": 2, "n_edges": 2 * n_layers})
        ex = replace(ex, params={"eps": 1e-6, "note": NASTY[0]}, state_relevance=state_relevance,
                     head_relevance=head_relevance, faithfulness=faith, graph=graph)
    case_values, ex_values = _split(overrides)
    return replace(case, **case_values), replace(ex, **ex_values)


def make_skipped(doc_id: int = 4, *, task: str = "tiny_mc", reason: str = "identical continuations",
                 **values) -> Case:
    """A case the contrast stage skipped: identity, prompt and ``reason``, no tokens."""
    case_values, ex_values = _split(values)
    if ex_values:
        raise TypeError(f"a skipped case has no explanation: {sorted(ex_values)}")
    return Case(**{"task": task, "doc_id": doc_id, "doc_hash": f"d{doc_id}", "prompt_hash": "p",
                   "target_hash": "t", "filter": "none", "metric": "acc", "status": SKIPPED,
                   "skip_reason": reason, "prompt": "Q?", **case_values})
