"""Mixture of experts in the report (report/experts.py): the case page lists the experts that
carry the failure, the study page which experts carry a run's wrong answers; dense runs show
neither. Numbers are checked against the arrays written to the store."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pytest

from factory import explained
from harness_xai.records import RunRecord, TaskSummary
from harness_xai.report import render_report
from harness_xai.store import Store

TASK = "moe_fixture"
N, LAYERS, EXPERTS = 8, 2, 4


def _experts(seed: int) -> np.ndarray:
    """(layers, experts, n) with two selected experts per (layer, token)."""
    rng = np.random.default_rng(seed)
    rel = rng.normal(size=(LAYERS, EXPERTS, N))
    keep = np.zeros_like(rel, dtype=bool)
    np.put_along_axis(keep, np.argsort(-np.abs(rel), axis=1)[:, :2], True, axis=1)
    return np.where(keep, rel, 0.0).astype(np.float32)


def _case(doc_id: int, moe: bool):
    rel = np.random.default_rng(doc_id).normal(size=N)
    return explained(
        rel.astype(np.float32), task=TASK, doc_id=doc_id, doc_hash=f"d{doc_id}",
        prompt_hash="p", target_hash="t", prompt="x", pred_index=1, gold_index=0,
        pred_text=" 1", gold_text=" 2", position=N, wrong_token_id=1, gold_token_id=2,
        wrong_token=" 1", gold_token=" 2", delta=1.0 + doc_id, ll_pred=-1.0, ll_gold=-2.0,
        method="cp-lrp", token_ids=list(range(10, 10 + N)),
        tokens=["<b>x</b>"] + [f" t{i}" for i in range(1, N)],
        layer_relevance=np.vstack([rel] * (LAYERS + 1)).astype(np.float32),
        expert_relevance=_experts(doc_id) if moe else None)


def _build(db: str, model_type: str, moe: bool) -> dict:
    out: dict = {}
    with Store.open(db) as store:
        for k, step in enumerate((0, 100)):
            run_id = store.ensure_run(RunRecord(
                run_key=f"run-{k}", model="hf", model_args="{}", pretrained="/zoo/moe",
                revision="main", model_type=model_type, n_params=1000, tasks=[TASK],
                method="cp-lrp", lm_eval_version="0.4.13", harness_xai_version="t",
                created_at=dt.datetime(2026, 12, 4, tzinfo=dt.timezone.utc), step=step,
                config={"method": "cp-lrp", "metric": "acc",
                        "config": {"limit": 4, "model_args": {"subfolder": f"step{step}"},
                                   "model_num_parameters": 1000}}))
            store.write_task_summaries(run_id, [TaskSummary(TASK, "acc", 0.5, 4, 2,
                                                            "multiple_choice")])
            out[run_id] = {store.write_case(run_id, *pair): pair[1]
                           for pair in (_case(2 * k, moe), _case(2 * k + 1, moe))}
    return out


def test_case_and_study_pages_show_the_experts(tmp_path: Path) -> None:
    db = str(tmp_path / "moe.duckdb")
    runs = _build(db, "mixtral", moe=True)
    out = render_report(db, tmp_path / "r").parent
    for run_id, cases in runs.items():
        for case_id, case in cases.items():
            page = (out / f"run-{run_id}" / f"case-{case_id}.html").read_text("utf-8")
            table = page.split('id="experts"')[1].split("</table>")[0]
            rows = re.findall(r"<tr><td class=\"num\">(\d+)</td><td class=\"num\">(\d+)</td>"
                              r"<td class=\"num\">([^<]+)</td>(.*?)</tr>", table, re.S)
            totals = case.expert_relevance.sum(-1)  # (layers, experts)
            want = sorted(((float(totals[l, e]), l + 1, e) for l in range(LAYERS)
                           for e in range(EXPERTS) if np.any(case.expert_relevance[l, e])),
                          key=lambda t: -abs(t[0]))[:6]
            assert [(int(l), int(e)) for l, e, _, _ in rows] == [(l, e) for _, l, e in want]
            for (_, _, shown, _), (total, _, _) in zip(rows, want):
                assert float(shown) == pytest.approx(total, rel=1e-3)  # 4 significant digits
            assert "<b>x</b>" not in page  # token text escaped
    study = (out / "study-1.html").read_text("utf-8")
    assert "Which experts carry wrong answers" in study
    for run_id, cases in runs.items():
        rows = re.findall(rf'<tr data-expert-run="{run_id}">(.*?)</tr>', study, re.S)
        assert 0 < len(rows) <= 6
        cells = re.findall(r"<td[^>]*>(.*?)</td>", rows[0], re.S)
        layer, expert, mean = int(cells[1]), int(cells[2]), float(cells[3])
        per_case = [c.expert_relevance[layer - 1, expert].sum() for c in cases.values()]
        assert mean == pytest.approx(np.mean(per_case), rel=1e-3)
        best = max(abs(c.expert_relevance.sum(-1)).max() for c in cases.values())
        assert abs(mean) <= best + 1e-6


def test_dense_runs_show_no_expert_sections(tmp_path: Path) -> None:
    db = str(tmp_path / "dense.duckdb")
    runs = _build(db, "llama", moe=False)
    out = render_report(db, tmp_path / "r").parent
    run_id, cases = next(iter(runs.items()))
    page = (out / f"run-{run_id}" / f"case-{next(iter(cases))}.html").read_text("utf-8")
    assert 'id="experts"' not in page and "<h2>Experts</h2>" not in page
    assert "Which experts carry" not in (out / "study-1.html").read_text("utf-8")
