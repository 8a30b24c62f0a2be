"""The rendered report in a real headless Chromium (tests/browser.py drives it over CDP):
every page loads from file:// with no console error and no request outside the report, the
graph view responds to the mouse and the slider, failure tables page and sort, screenshots are
not blank, and hostile benchmark text never executes."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pytest

from factory import explained
from harness_xai.records import (Case, DocOutcome, Explanation, Faithfulness, GraphRecord, RunRecord,
                                 TaskSummary)
from harness_xai.report import render, render_report, task_slug
from harness_xai.store import Store
from browser import Browser, png_stats

# each payload would set window.__pwned (or open a dialog) if it ever ran
XSS = ["<script>window.__pwned='script'</script>",
       "<img src=x onerror=\"window.__pwned='onerror'\">",
       "<a href=\"javascript:window.__pwned='href'\">click</a>",
       "javascript:window.__pwned='url'",
       "\"><svg onload=\"window.__pwned='svg'\">",
       "</script><script>alert('closed')</script>"]
TASK = "xss_task<b>" + XSS[1]
N_CASES = 23
PAGE_SIZE = 10


def _case(doc_id: int, rng: np.random.Generator, graph: bool = False) -> tuple[Case, Explanation]:
    tokens = ["<s>", " key", " 7", " is", *XSS, " Q", ":"]
    n = len(tokens)
    rel = rng.normal(size=n).astype(np.float32)  # (n,)
    layers = rng.normal(size=(3, n)).astype(np.float32)  # (n_layers + 1, n)
    states = {k: rng.normal(size=(2, n)).astype(np.float32) for k in ("mid", "attn", "mlp")}
    heads = rng.normal(size=(2, 4, n)).astype(np.float32)
    internals: dict = {}  # faithfulness and graph of the one graph case
    if graph:
        internals["faithfulness"] = Faithfulness(
            fractions=[0.1, 0.5], n_removed=[1, 6], delta_relevance=[0.2, -1.0],
            delta_random=[0.9, 0.8], aopc=0.9, aopc_random=0.1, baseline_token_id=0)
        src_pos = np.array([1, 2, 2, 3, 5, 8, 2, 9], dtype=np.int32)
        src_layer = np.array([0, 0, 1, 0, 0, 1, 2, 2], dtype=np.int32)
        internals["graph"] = GraphRecord(
            node_layers=["emb", "1", "2", "3"], node_relevance=rng.normal(size=(4, n)).astype(np.float32),
            source_layer=src_layer, source_position=src_pos,
            target_layer=src_layer + 1, target_position=np.full(8, n - 1, np.int32),
            weight=np.array([0.9, -0.5, 0.3, 0.05, -0.1, 0.6, 1.2, -0.02], dtype=np.float32),
            params={"mass": 0.85}, metrics={"n_edges": 8, "formation_layer": 2})
    return explained(
        rel, task=TASK, doc_id=doc_id, delta=float(doc_id) - 10.0, layer_relevance=layers,
        state_relevance=states, head_relevance=heads,
        prompt="".join(tokens), pred_index=1, gold_index=0, pred_text=XSS[2], gold_text=XSS[3],
        position=n, wrong_token_id=1, gold_token_id=2, wrong_token=XSS[4], gold_token=XSS[0],
        ll_pred=-1.0, ll_gold=-2.0, token_ids=range(100, 100 + n), tokens=tokens,
        segments=["special"] + ["question"] * (n - 1), segment_index=[None] * n, evidence_positions=[2],
        analysis={"evidence.top1": 1.0, "concentration.gini": 0.5, "triage": "unflagged", "flags": []},
        **internals)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("report-browser")
    db = str(tmp / "x.duckdb")
    rng = np.random.default_rng(0)
    ids: dict = {"runs": []}
    with Store.open(db) as store:
        for k, step in enumerate((0, 100)):
            run_id = store.ensure_run(RunRecord(
                run_key=f"r{k}", model="hf", model_args=XSS[1], pretrained=f"/zoo/{XSS[0]}",
                revision="main", model_type="llama", n_params=1000, tasks=[TASK], method="attnlrp",
                lm_eval_version="0.4.13", harness_xai_version="t", step=step,
                created_at=dt.datetime(2026, 11, 24, tzinfo=dt.timezone.utc),
                config={"method": "attnlrp", "config": {"limit": 30}}))
            ids["runs"].append(run_id)
            wrong = range(N_CASES) if k == 0 else range(0, N_CASES, 2)
            store.write_task_summaries(run_id, [TaskSummary(
                TASK, "acc", 0.2, 30, len(wrong), "multiple_choice",
                outcomes=[DocOutcome(d, f"d{d}", "none", "acc", float(d not in wrong),
                                     int(d not in wrong)) for d in range(30)])])
            for d in wrong:
                cid = store.write_case(run_id, *_case(d, rng, graph=(k == 0 and d == 5)))
                if k == 0 and d == 5:
                    ids["graph_case"] = cid
    out = tmp / "report"
    old, render.PAGE_SIZE = render.PAGE_SIZE, PAGE_SIZE
    try:
        render_report(db, out)
    finally:
        render.PAGE_SIZE = old
    with Browser() as browser:
        yield {"out": out, "ids": ids, "browser": browser, "tmp": tmp}
    assert browser.leftover_pids() == []


def _outside(page, out: Path) -> list[str]:
    root = out.resolve().as_uri() + "/"
    return [u for u in page.requests if not (u.startswith(root) or u.startswith("data:")
                                             or u == "about:blank")]


def test_every_page_loads_clean_and_offline(report: dict) -> None:
    out, browser = report["out"], report["browser"]
    pages = sorted(out.rglob("*.html"))
    assert len(pages) == 1 + 1 + 2 + N_CASES + len(range(0, N_CASES, 2))  # index, study, tasks, cases
    for path in pages:
        page = browser.open(path)
        try:
            assert page.eval("document.documentElement.getAttribute('data-js')") == "ready", path
            assert page.errors == [], (path, page.errors)
            assert _outside(page, out) == [], (path, page.requests)
            # the page's own script and stylesheet were loaded (from the report's assets/)
            assert any(u.endswith("/assets/report.js") for u in page.requests)
            assert page.eval("window.__pwned === undefined"), path
            assert page.eval("document.querySelectorAll('a[href^=\"javascript:\" i]').length") == 0
            assert page.eval("document.querySelectorAll('[onerror],[onload]').length") == 0
            dialogs = [e for e in page.events if e["method"] == "Page.javascriptDialogOpening"]
            assert dialogs == [], path
        finally:
            page.close()


def test_payloads_are_shown_as_text(report: dict) -> None:
    out, browser, ids = report["out"], report["browser"], report["ids"]
    page = browser.open(out / f"run-{ids['runs'][0]}" / f"case-{ids['graph_case']}.html")
    try:
        texts = page.eval("Array.from(document.querySelectorAll('#tokens .tok')).map(s => s.textContent)")
        assert all(x in texts for x in XSS)  # every payload token is visible, as text
        assert page.eval("document.querySelector('.wrong-box .atext').textContent") == XSS[2]
        assert page.eval("document.querySelector('.gold-box .atext').textContent") == XSS[3]
        assert XSS[5] in page.eval("document.querySelector('pre.prompt').textContent")
        assert page.eval("document.title").startswith("doc 5 · " + TASK)
    finally:
        page.close()


def test_graph_view_pans_zooms_hovers_and_thresholds(report: dict) -> None:
    out, browser, ids = report["out"], report["browser"], report["ids"]
    page = browser.open(out / f"run-{ids['runs'][0]}" / f"case-{ids['graph_case']}.html",
                        height=1400)
    try:
        weights = np.abs([0.9, -0.5, 0.3, 0.05, -0.1, 0.6, 1.2, -0.02])
        attr = "document.getElementById('graph').getAttribute('{}')".format
        assert page.eval(attr("data-visible-edges")) == "8"
        # slider: keyboard steps of 1 % on the focused range input; 5 steps → 5 % of max |w|
        page.click(*page.center_of("#graph-threshold"))
        page.eval("document.getElementById('graph-threshold').value = 0; "
                  "document.getElementById('graph-threshold').focus()")
        for _ in range(5):
            page.press("ArrowRight")
        page.wait_for("document.getElementById('graph-threshold').value === '5'")
        expect = int((weights >= 0.05 * weights.max() - 1e-9).sum())
        assert page.eval(attr("data-visible-edges")) == str(expect) == "6"
        page.press("End")
        page.wait_for(attr("data-visible-edges") + " === '1'")  # only the strongest edge
        assert page.eval("document.getElementById('graph-visible').textContent") == "1 of 8 edges shown"
        page.press("Home")
        page.wait_for(attr("data-visible-edges") + " === '8'")
        # zoom with the wheel around the pointer, then pan by dragging
        x, y = page.center_of("#graph svg")
        page.wheel(x, y, -400)
        page.wait_for("parseFloat(" + attr("data-zoom") + ") > 1.5")
        pan0 = page.eval(attr("data-pan"))
        page.drag((x, y), (x + 120, y + 40))
        pan1 = page.eval(attr("data-pan"))
        dx, dy = (float(a) - float(b) for a, b in zip(pan1.split(","), pan0.split(",")))
        assert dx > 50 and dy > 10
        page.click(*page.center_of("#graph-reset"))
        assert page.eval(attr("data-zoom")) == "1.0000" and page.eval(attr("data-pan")) == "0.0,0.0"
        # hover the strongest edge: the info line names its ends and its exact weight
        strongest = page.eval("""Array.from(document.querySelectorAll('#graph line.edge'))
            .sort((a, b) => Math.abs(b.dataset.weight) - Math.abs(a.dataset.weight))[0].dataset.index""")
        ex, ey = page.eval("""(() => {  // a point 15 % along the edge from its source (edges
            const l = document.querySelector("#graph line.edge[data-index='EDGE']");  // converge)
            const pt = l.ownerSVGElement.createSVGPoint(), t = 0.15;
            l.scrollIntoView({block: "center"});
            pt.x = +l.getAttribute("x1") * (1 - t) + +l.getAttribute("x2") * t;
            pt.y = +l.getAttribute("y1") * (1 - t) + +l.getAttribute("y2") * t;
            const q = pt.matrixTransform(l.getScreenCTM()); return [q.x, q.y]; })()""".replace(
            "EDGE", strongest))
        page.mouse_move(ex, ey)
        page.wait_for(attr("data-hover") + f" === 'edge-{strongest}'")
        info = page.eval("document.getElementById('graph-info').textContent")
        assert info.startswith('edge 2 @ position 2 " 7" → 3 @ position 11') and "+1.2" in info
        # hover a node: its incident edges light up
        nx, ny = page.center_of("#graph circle.node[data-index='3']")
        page.mouse_move(nx, ny)
        page.wait_for(attr("data-hover") + " === 'node-3'")
        hot = page.eval("document.querySelectorAll('#graph line.edge.hot').length")
        said = int(re.search(r"(\d+) incident edges", page.eval(
            "document.getElementById('graph-info').textContent")).group(1))
        assert hot == said
        assert page.errors == []
    finally:
        page.close()


def test_failure_table_pages_and_sorts(report: dict) -> None:
    out, browser, ids = report["out"], report["browser"], report["ids"]
    page = browser.open(out / f"run-{ids['runs'][0]}" / f"task-{task_slug(TASK)}.html")
    try:
        visible = "Array.from(document.querySelectorAll('#failures tbody tr')).filter(r => !r.hidden)"
        docs = f"{visible}.map(r => parseInt(r.cells[0].textContent))"
        assert page.eval(f"{visible}.length") == PAGE_SIZE
        assert page.eval(docs) == list(range(N_CASES - 1, N_CASES - 1 - PAGE_SIZE, -1))  # Δ desc
        assert "rows 1–10 of 23" in page.eval("document.querySelector('nav.pager .where').textContent")
        page.click(*page.center_of("nav.pager .next"))
        page.wait_for("document.getElementById('failures').getAttribute('data-page') === '2'")
        assert page.eval(docs) == list(range(N_CASES - 1 - PAGE_SIZE, N_CASES - 1 - 2 * PAGE_SIZE, -1))
        page.click(*page.center_of("nav.pager .next"))
        page.wait_for("document.getElementById('failures').getAttribute('data-page') === '3'")
        assert page.eval(f"{visible}.length") == N_CASES - 2 * PAGE_SIZE
        assert page.eval("document.querySelector('nav.pager .next').disabled") is True
        # sorting spans every page: Δ ascending puts doc 0 (the smallest Δ) first, on page 1
        page.click(*page.center_of("#failures th:nth-child(6)"))
        page.wait_for("document.getElementById('failures').getAttribute('data-page') === '1'")
        assert page.eval(docs) == list(range(PAGE_SIZE))
        assert page.errors == []
    finally:
        page.close()


def test_case_page_history_and_screenshots_are_not_blank(report: dict) -> None:
    out, browser, ids = report["out"], report["browser"], report["ids"]
    tmp = report["tmp"]
    case_page = out / f"run-{ids['runs'][0]}" / f"case-{ids['graph_case']}.html"
    page = browser.open(case_page, height=1000)
    try:
        # doc 5 is wrong at step 0 and right at step 100: the page says where it flipped
        assert page.eval("document.getElementById('flip').getAttribute('data-flipped-at')") == "100"
        n_tokens = page.eval("document.querySelectorAll('#tokens .tok').length")
        assert n_tokens == 4 + len(XSS) + 2
        assert page.eval("document.querySelectorAll('#state-mid rect').length") == 2 * n_tokens
        for name, p in (("case", page),):
            shot = p.screenshot(tmp / f"{name}.png", full_page=True)
            w, h, colours, busy = png_stats(shot, background=(255, 255, 255))
            assert w >= 1000 and h > 1500 and colours > 100 and busy > 0.05, (w, h, colours, busy)
    finally:
        page.close()
    for name, path in (("index", out / "index.html"), ("study", out / "study-1.html")):
        page = browser.open(path, width=1400)
        try:
            overflow = page.eval("document.documentElement.scrollWidth - "
                                 "document.documentElement.clientWidth")
            assert overflow <= 0, (name, overflow)  # no horizontal scrolling at 1400 px
            w, h, colours, busy = png_stats(page.screenshot(tmp / f"{name}.png"),
                                            background=(255, 255, 255))
            assert colours > 20 and busy > 0.02, (name, colours, busy)
        finally:
            page.close()
    blank = tmp / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    page = browser.open(blank)
    try:
        assert png_stats(page.screenshot(), background=(255, 255, 255))[3] == 0.0  # the check can fail
    finally:
        page.close()
