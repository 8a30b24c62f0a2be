"""One doc across runs: its outcome at every checkpoint and size, and where it flipped (pure).

A doc is identified by ``(task, doc_id, doc_hash, filter)`` — the doc hash guards against a task
whose docs changed between runs. Steps:

1. ``DocIndex`` collects, per doc key, every run's outcome: ``wrong`` with the case (attributed
   or skipped, from ``cases``), ``correct`` from ``doc_outcomes``; a run that never evaluated the
   doc is simply absent.
2. ``entries`` lists them for a page, ordered by architecture, size, model series and step, each
   with its run's series, size, step and (for failures) Δℓ, triage label and page link.
3. ``flips`` reads one model series inside one cohort (``study.cohort_key``: same docs and
   settings) over its checkpoints: the outcome sequence, ``flipped_at`` = the first checkpoint
   from which the doc stays correct (None when it is wrong at the last one), and ``unstable``
   when it was correct before that and wrong again.
4. ``relevance_rows`` stacks the doc's token relevance at each checkpoint of the series where
   it failed (same token ids only), each row scaled by its own max |R| (the first token left
   out when it is a special/BOS), with the cosine similarity to the previous row: how the
   explanation moved while the answer stayed wrong.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from harness_xai.report.study import cohort_key, series_of

DocKey = tuple[str, int, str, str]


class DocIndex:
    """Step 1 (module docstring)."""

    def __init__(self, runs: list[dict[str, Any]], cases: list[dict[str, Any]],
                 outcomes: list[dict[str, Any]]) -> None:
        self.runs = {int(r["id"]): r for r in runs}
        self.cohort = {rid: cohort_key(r) for rid, r in self.runs.items()}
        self.series = {rid: series_of(r) for rid, r in self.runs.items()}
        self.docs: dict[DocKey, dict[int, dict[str, Any]]] = defaultdict(dict)
        for o in outcomes:
            key = (o["task"], int(o["doc_id"]), o["doc_hash"], o["filter"])
            if o["correct"] is not None:
                self.docs[key][int(o["run_id"])] = {"outcome": "correct" if int(o["correct"])
                                                    else "wrong", "case": None}
        for c in cases:
            key = (c["task"], int(c["doc_id"]), c["doc_hash"], c["filter"])
            self.docs[key][int(c["run_id"])] = {"outcome": "wrong", "case": c}

    def entries(self, key: DocKey) -> list[dict[str, Any]]:
        """Step 2: every run's outcome for the doc."""
        out = []
        for rid, got in self.docs.get(key, {}).items():
            run = self.runs.get(rid)
            if run is None:
                continue
            case = got["case"]
            out.append({"run_id": rid, "series": self.series[rid], "arch": run.get("model_type"),
                        "size": run.get("n_params"), "step": run.get("step"),
                        "outcome": got["outcome"], "case": case,
                        "href": f"../run-{rid}/case-{int(case['id'])}.html"
                        if case is not None and case["status"] == "attributed" else None})
        out.sort(key=lambda e: (str(e["arch"]), e["size"] or 0, e["series"],
                                -1 if e["step"] is None else e["step"], e["run_id"]))
        return out

    def flips(self, key: DocKey, run_id: int) -> dict[str, Any] | None:
        """Step 3: the series of ``run_id`` over its checkpoints (same cohort), or None when the
        doc was seen at fewer than two checkpoints."""
        cohort, series = self.cohort.get(run_id), self.series.get(run_id)
        seq = sorted((self.runs[rid]["step"], rid, got["outcome"])
                     for rid, got in self.docs.get(key, {}).items()
                     if rid in self.runs and self.cohort[rid] == cohort
                     and self.series[rid] == series and self.runs[rid].get("step") is not None)
        if len(seq) < 2:
            return None
        outcomes = [o for _, _, o in seq]
        flipped_at = None
        if outcomes[-1] == "correct":
            k = len(outcomes) - 1
            while k > 0 and outcomes[k - 1] == "correct":
                k -= 1
            flipped_at = seq[k][0] if k > 0 else None  # correct from the first checkpoint on
        first_wrong_after_right = any(a == "correct" and b == "wrong"
                                      for a, b in zip(outcomes, outcomes[1:]))
        return {"series": series, "steps": [{"step": s, "run_id": r, "outcome": o}
                                            for s, r, o in seq],
                "flipped_at": flipped_at, "always_correct": all(o == "correct" for o in outcomes),
                "never_correct": all(o == "wrong" for o in outcomes),
                "unstable": first_wrong_after_right}

    def relevance_rows(self, key: DocKey, run_id: int,
                       relevance: dict[int, tuple[np.ndarray, np.ndarray]],
                       skip_first: bool) -> list[dict[str, Any]]:
        """Step 4: the series' failing checkpoints with the same token ids as ``run_id``'s case."""
        own = self.docs.get(key, {}).get(run_id, {}).get("case")
        if own is None or int(own["id"]) not in relevance:
            return []
        ids = relevance[int(own["id"])][0]
        cohort, series = self.cohort[run_id], self.series[run_id]
        rows, previous = [], None
        for step, rid, case in sorted(
                (self.runs[r]["step"], r, got["case"]) for r, got in self.docs[key].items()
                if r in self.runs and got["case"] is not None and self.cohort[r] == cohort
                and self.series[r] == series and self.runs[r].get("step") is not None):
            got = relevance.get(int(case["id"]))
            if got is None or not np.array_equal(got[0], ids):
                continue
            r = np.nan_to_num(np.asarray(got[1], dtype=np.float64))  # (n,)
            body = r[1:] if skip_first and r.size > 1 else r
            scale = float(np.abs(body).max()) if body.size else 0.0
            scaled = r / scale if scale > 0 else r
            cos = None
            if previous is not None:
                den = float(np.linalg.norm(previous) * np.linalg.norm(body))
                cos = float(previous @ body / den) if den > 0 else None
            previous = body
            rows.append({"step": step, "run_id": rid, "case_id": int(case["id"]),
                         "values": [v if math.isfinite(v) else None for v in scaled.tolist()],
                         "cosine": cos, "current": rid == run_id})
        return rows
