"""First-error rollouts on the case page (``--xai-rollouts``; store table ``rollouts``).

1. ``run_rollouts(conn, run_id)``: case id → its rollouts in the order tried (position in the
   generation, the model's token id, the alternative id and text, rank, margin, outcome, the
   scored continuation text, greedy tokens).
2. ``case_rollouts(rows, notes)``: what the case page shows: the rollouts (the one that flipped
   the sample to correct marked), whether one flipped and, when none did, why and what was
   explained instead (the fallback contrast's rule, ``built["contrast"]["first_error"]``).
Texts are benchmark output: the template escapes them (autoescape), never marks them safe.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import Connection, text

#: fallback rule → what the case page says was explained instead
EXPLAINED_INSTEAD = {
    "answer-span": "the final-answer contrast (the model's answer token vs the gold answer's)",
    "answer-span:process-results": "the final-answer contrast (the answer the task's own "
                                   "process_results extracts vs the gold answer)",
    "invalid-extraction:full-target": "the first token where the generation leaves the "
                                      "reference solution (no answer could be extracted)",
    "reference-solution:full-target": "the first token where the code leaves the doc's "
                                      "reference solution (which passes the unit tests)",
    "instruction-repair:full-target": "the token where the closest compliant edit of the "
                                      "response leaves it (the edit passes the instruction checks)",
}


def run_rollouts(conn: Connection, run_id: int) -> dict[int, list[dict[str, Any]]]:
    """Step 1."""
    rows = conn.execute(text(
        "SELECT r.case_id, r.rollout, r.position, r.model_token_id, r.model_token, "
        "r.alternative_token_id, "
        "r.alternative_token, r.rank, r.margin, r.correct, r.n_tokens, r.text FROM rollouts AS r "
        "JOIN cases AS c ON c.id = r.case_id WHERE c.run_id = :r ORDER BY r.case_id, r.rollout"),
        {"r": int(run_id)}).mappings().all()
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        out[int(row["case_id"])].append(dict(row))
    return dict(out)


def case_rollouts(rows: list[dict[str, Any]] | None, notes: dict[str, Any],
                  model_token: str | None = None) -> dict[str, Any] | None:
    """Step 2: None when rollouts were not run for this case."""
    info = notes.get("first_error")
    if not rows and not isinstance(info, dict):
        return None
    info = info if isinstance(info, dict) else {}
    rows = list(rows or [])
    flipped = next((r for r in rows if r["correct"]), None)
    for r in rows:
        r["flipped"] = r is flipped
    found = bool(info.get("found")) and flipped is not None
    rule = notes.get("rule")
    return {
        "rows": rows, "found": found, "flipped": flipped, "n": len(rows),
        "budget": info.get("max_rollouts"), "tokens": info.get("rollout_tokens"),
        "reason": None if found else (info.get("reason") or "no_flip_within_budget"),
        "fallback": info.get("fallback"), "instead": None if found else
        EXPLAINED_INSTEAD.get(rule, f"the contrast built without rollouts (rule {rule})"),
        "replaces": notes.get("replaces"), "model_token": model_token}
