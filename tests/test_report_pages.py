"""Every page type of a report rendered from a real-format store, checked in headless Chromium.

The store comes from the real pipeline (``harness_xai.evaluate`` with attribution) on the micro
model and lm-eval's own task YAMLs (ARC-Easy few-shot, Winogrande, GSM8K) bound to local data,
plus a multiple-choice task whose text is full of multi-byte characters (split into byte-level
BPE pieces by the micro tokenizer), run with ``max_length=96`` so long few-shot prompts are
left-truncated. Checks that matter to a reader: no U+FFFD in any visible token label, no
horizontal overflow at 1400 px, the top-token summary equal to the store's ``token_ranks``, the
cut text of truncated inputs, the two options of Winogrande, the generation of GSM8K."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from browser import Browser, png_stats
from harness_xai.report import render_report
from harness_xai.store import run_sql

UNICODE_ROWS = [{"q": q, "choices": c, "gold": g} for q, c, g in [
    ("Which dessert is crème brûlée?", ["a custard – 卡仕达", "a naïve soufflé", "€2.25 pâté"], 0),
    ("Où est la clé ?", ["sous le café", "dans la boîte à gants", "près du château"], 1),
    ("日本語の「ありがとう」は?", ["thank you ✓", "good night ☾", "hello 👋"], 0),
    ("Ünïcödé “quotes” — which?", ["« guillemets »", "„Anführung“", "‘single’"], 2),
    ("Größe der Straße?", ["groß", "klein", "mittelgroß"], 0),
    ("¿Qué año es?", ["año dos mil", "mañana", "señor"], 1),
]]
UNICODE_TASK = {"output_type": "multiple_choice", "test_split": "test",
                "doc_to_text": "Question: {{q}}\nAnswer:", "doc_to_choice": "{{choices}}",
                "doc_to_target": "{{gold}}", "metric_list": [{"metric": "acc"}]}
TASKS = ["fx_arc_easy", "fx_winogrande", "fx_gsm8k", "xr_unicode"]
WIDTH = 1400


@pytest.fixture(scope="module")
def real_report(micro_model, tmp_path_factory):
    import harness_xai
    from lm_eval.tasks import TaskManager

    from fixtures.lm_eval_tasks import write_task, write_tasks

    root = tmp_path_factory.mktemp("real-report")
    write_tasks(root / "tasks" / "builtin")
    write_task(root / "tasks" / "own", "xr_unicode", UNICODE_TASK, {"test": UNICODE_ROWS})
    tm = TaskManager(include_path=str(root / "tasks"), include_defaults=False)
    db = f"duckdb:///{root / 'x.duckdb'}"
    harness_xai.evaluate(
        model="hf", model_args=f"pretrained={micro_model},dtype=float32,max_length=96",
        tasks=TASKS, task_manager=tm, device="cpu", limit=6, num_fewshot=2,
        gen_kwargs="max_gen_toks=12", attribute=True, db=db, progress=False,
        graph=True, faithfulness=True)
    out = root / "report"
    render_report(db, out)
    with Browser() as browser:
        yield {"db": db, "out": out, "browser": browser, "tmp": root}
    assert browser.leftover_pids() == []


def _cases(db: str, where: str = "") -> list[tuple]:
    return run_sql(db, "SELECT id, run_id, task, output_type, method_params FROM cases "
                       f"WHERE status = 'attributed' {where} ORDER BY id")[1]


def _page(report: dict, case_id: int, run_id: int):
    return report["browser"].open(report["out"] / f"run-{run_id}" / f"case-{case_id}.html",
                                  width=WIDTH)


def _overflow(page) -> int:
    return page.eval("document.documentElement.scrollWidth - document.documentElement.clientWidth")


def test_store_has_the_formats_the_pages_must_handle(real_report: dict) -> None:
    db = real_report["db"]
    tasks = {r[2] for r in _cases(db)}
    assert {"fx_arc_easy", "fx_winogrande", "xr_unicode"} <= tasks, tasks
    pieces = run_sql(db, "SELECT count(*) FROM token_relevance AS t JOIN cases AS c ON c.id = "
                         "t.case_id WHERE c.task = 'xr_unicode' AND t.token LIKE :p",
                     params={"p": "%\ufffd%"})[1][0][0]
    assert pieces > 0  # the tokenizer really splits characters into byte pieces
    truncated = [r for r in _cases(db) if json.loads(r[4] or "{}").get("contrast", {})
                 .get("truncated_tokens", 0) > 0]
    assert truncated


def test_case_pages_summary_labels_and_width(real_report: dict) -> None:
    db = real_report["db"]
    for case_id, run_id, task, _, _ in _cases(db):
        page = _page(real_report, case_id, run_id)
        try:
            assert page.eval("document.documentElement.getAttribute('data-js')") == "ready"
            assert page.errors == [], (task, page.errors)
            labels = page.eval("Array.from(document.querySelectorAll('#tokens .tok, ol.top code, "
                               "svg .tokname')).map(s => s.childNodes[0].nodeValue)")  # not <title>
            assert labels and not any("\ufffd" in s for s in labels), (task, labels)
            assert _overflow(page) <= 0, (task, _overflow(page))
            # the summary is the store's ranking: toward wrong = ranks 1, 2, … with R > 0
            ranks = run_sql(db, "SELECT position, relevance, relevance_rank, token FROM token_ranks "
                                "WHERE case_id = :c ORDER BY relevance_rank", {"c": case_id})[1]
            shown = page.eval("Array.from(document.querySelectorAll('#top-wrong li[data-rank]'))"
                              ".map(li => [+li.dataset.position, +li.dataset.rank])")
            sink = ranks[0][0] == 0 and page.eval("document.querySelector('#summary p.small.muted') "
                                                  "!== null")
            want = [(p, k) for p, r, k, _ in ranks if r is not None and r > 0
                    and not (sink and p == 0)][:5]
            assert [tuple(x) for x in shown] == want, (task, shown, want)
            gold = page.eval("Array.from(document.querySelectorAll('#top-gold li[data-rank]'))"
                             ".map(li => +li.dataset.position)")
            want_gold = [p for p, r, _, _ in reversed(ranks) if r is not None and r < 0
                         and not (sink and p == 0)][:5]
            assert gold == want_gold, (task, gold, want_gold)
            # the top three toward wrong are visible without scrolling
            bottom = page.eval("(() => { const li = document.querySelectorAll('#top-wrong li'); "
                               "return li.length ? li[Math.min(2, li.length - 1)]"
                               ".getBoundingClientRect().bottom : 0; })()")
            assert 0 < bottom <= 900, (task, bottom)
            assert page.eval("document.getElementById('segment-line') !== null")
        finally:
            page.close()


def test_truncation_winogrande_and_generation_are_shown(real_report: dict) -> None:
    db = real_report["db"]
    seen = set()
    for case_id, run_id, task, output_type, params in _cases(db):
        notes = json.loads(params or "{}").get("contrast", {})
        page = _page(real_report, case_id, run_id)
        try:
            if notes.get("truncated_tokens", 0) > 0:
                n = page.eval("document.getElementById('truncation').dataset.n")
                assert int(n) == notes["truncated_tokens"]
                cut = page.eval("(document.querySelector('details.cut pre') || {}).textContent")
                prompt = run_sql(db, "SELECT prompt FROM cases WHERE id = :c",
                                 {"c": case_id})[1][0][0]
                assert cut and prompt.startswith(cut) and len(cut) < len(prompt)
                seen.add("truncation")
            if "gold_context" in notes:
                pred = page.eval("document.getElementById('pred-option').textContent")
                gold = page.eval("document.getElementById('gold-option').textContent")
                assert pred and gold and pred != gold, (pred, gold)
                prompt = run_sql(db, "SELECT prompt FROM cases WHERE id = :c",
                                 {"c": case_id})[1][0][0]
                assert pred in prompt and gold in notes["gold_context"]
                seen.add("winogrande")
            if output_type == "generate_until":
                gen = page.eval("document.querySelector('#generation pre').textContent")
                assert gen == notes["generation"].replace("\ufffd", "▯")  # invalid bytes visible
                seen.add("generation")
        finally:
            page.close()
    assert {"truncation", "winogrande"} <= seen, seen


def test_index_task_study_pages_fit_1400px(real_report: dict) -> None:
    out, browser, tmp = real_report["out"], real_report["browser"], real_report["tmp"]
    pages = [out / "index.html", *sorted(out.glob("study-*.html")), *sorted(out.glob("run-*/task-*.html"))]
    assert len(pages) >= 1 + len(TASKS)
    for path in pages:
        page = browser.open(path, width=WIDTH)
        try:
            assert page.errors == [], (path, page.errors)
            assert _overflow(page) <= 0, (path, _overflow(page))
            w, h, colours, busy = png_stats(page.screenshot(tmp / f"{path.stem}.png"),
                                            background=(255, 255, 255))
            assert colours > 20 and busy > 0.02, (path, colours, busy)
        finally:
            page.close()


def test_graph_labels_do_not_collide_and_zoom_keeps_strokes(real_report: dict) -> None:
    db = real_report["db"]
    graphs = run_sql(db, "SELECT g.case_id, c.run_id, g.n_edges FROM graphs AS g JOIN cases AS c "
                         "ON c.id = g.case_id ORDER BY g.n_edges DESC")[1]
    assert graphs
    boxes = """Array.from(document.querySelectorAll('#graph .tokname'))
        .filter(t => t.style.display !== 'none').map(t => { const b = t.getBBox();
        return [b.x, b.y, b.x + b.width, b.y + b.height]; })"""
    for case_id, run_id, n_edges in graphs[:3]:
        page = _page(real_report, case_id, run_id)
        try:
            attr = "document.getElementById('graph').getAttribute('{}')".format
            visible = int(page.eval(attr("data-visible-edges")))
            assert visible == n_edges if n_edges <= 60 else 60 <= visible < n_edges
            shown = page.eval(boxes)
            assert shown
            for i, a in enumerate(shown):  # no two visible token labels overlap
                for b in shown[i + 1:]:
                    assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
            width0 = page.eval("getComputedStyle(document.querySelector('#graph line.edge'))"
                               ".strokeWidth")
            n0 = int(page.eval(attr("data-labels-shown")))
            x, y = page.center_of("#graph svg")
            page.wheel(x, y, -600)
            page.wait_for("parseFloat(" + attr("data-zoom") + ") > 2")
            assert page.eval("getComputedStyle(document.querySelector('#graph line.edge'))"
                             ".strokeWidth") == width0
            assert page.eval("document.querySelector('#graph g.viewport').getAttribute('transform')") is None
            assert int(page.eval(attr("data-labels-shown"))) >= min(n0, 1)
            for i, a in enumerate(page.eval(boxes)):
                assert a  # labels still laid out after the zoom
        finally:
            page.close()
