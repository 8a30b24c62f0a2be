"""The study and history views of the report: cohorts, trends, the same doc across checkpoints,
pagination, charts and the page data's escaping — on a real DuckDB store built here."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import pytest

from factory import explained
from harness_xai.records import Case, DocOutcome, Explanation, RunRecord, TaskSummary
from harness_xai.report import charts, render_report
from harness_xai.report.history import DocIndex
from harness_xai.report.payload import embed
from harness_xai.report.study import cohort_key, series_of
from harness_xai.store import Store

TASK = "kv_fixture"
N_DOCS = 6


def _case(doc_id: int, delta: float, top1: float, triage: str,
          rel: np.ndarray) -> tuple[Case, Explanation]:
    n = rel.size
    return explained(
        rel.astype(np.float32), task=TASK, doc_id=doc_id, delta=delta,
        layer_relevance=np.vstack([rel, rel]).astype(np.float32),
        prompt="k v " * n, pred_index=1, gold_index=0, pred_text=" 1", gold_text=" 2",
        position=n, wrong_token_id=1, gold_token_id=2, wrong_token=" 1", gold_token=" 2",
        ll_pred=-1.0, ll_gold=-2.0, token_ids=range(10, 10 + n), tokens=[f" t{i}" for i in range(n)],
        analysis={"evidence.top1": top1, "concentration.gini": 0.25 + 0.5 * top1,
                  "segment.question.share": 1.0, "triage": triage, "flags": []})


#: (series, size, step, limit) → docs answered wrong; doc 0 flips to correct at step 200 for "m-l"
RUNS = [("m-s", 1000, 0, 6, [0, 1, 2, 3]), ("m-s", 1000, 200, 6, [0, 1, 2]),
        ("m-l", 5000, 0, 6, [0, 1, 2, 4]), ("m-l", 5000, 100, 6, [0, 1, 4]),
        ("m-l", 5000, 200, 6, [1]), ("m-l", 5000, 300, 6, [1]),
        ("m-l", 5000, 300, None, [1, 5])]  # another --limit: a cohort of its own


@pytest.fixture()
def study_db(tmp_path: Path) -> tuple[str, dict]:
    db = str(tmp_path / "study.duckdb")
    return db, _build(db)


def _build(db: str) -> dict:
    ids: dict = {"runs": [], "cases": {}}
    with Store.open(db) as store:
        for k, (series, size, step, limit, wrong) in enumerate(RUNS):
            run_id = store.ensure_run(RunRecord(
                run_key=f"run-{k}", model="hf", model_args="{}", pretrained=f"/zoo/{series}",
                revision="main", model_type="llama", n_params=size, tasks=[TASK],
                method="attnlrp", lm_eval_version="0.4.13", harness_xai_version="t",
                created_at=dt.datetime(2026, 11, 24, tzinfo=dt.timezone.utc), step=step,
                config={"method": "attnlrp", "metric": "acc",
                        "config": {"limit": limit, "model_args": {"subfolder": f"step{step}"},
                                   "model_num_parameters": size}}))
            ids["runs"].append(run_id)
            docs = range(N_DOCS) if limit else range(N_DOCS + 2)
            store.write_task_summaries(run_id, [TaskSummary(
                TASK, "acc", 1 - len(wrong) / len(docs), len(docs), len(wrong), "multiple_choice",
                outcomes=[DocOutcome(d, f"d{d}", "none", "acc", float(d not in wrong),
                                     int(d not in wrong)) for d in docs])])
            for d in wrong:
                rel = np.random.default_rng(100 * k + d).normal(size=8)
                top1 = 1.0 if (d + k) % 2 == 0 else 0.0
                case, ex = _case(d, 0.5 + d + k, top1, "unflagged" if top1 else
                                 "evidence-underweighted", rel)
                ids["cases"][(k, d)] = (store.write_case(run_id, case, ex), ex)
    return ids


def test_same_report_from_every_backend(tmp_path: Path) -> None:
    """DuckDB (native bulk reads), SQLite and PostgreSQL (generic reads) give identical pages."""
    from harness_xai.store.pgtemp import fresh_database_url

    urls = {"duckdb": str(tmp_path / "s.duckdb"), "sqlite": str(tmp_path / "s.sqlite"),
            "postgresql": fresh_database_url()}
    pages = {}
    for name, url in urls.items():
        _build(url)
        out = tmp_path / name
        render_report(url, out)
        pages[name] = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*")
                       if p.is_file()}
    assert len(pages["duckdb"]) == 30 and any(k.startswith("study-") for k in pages["duckdb"])
    assert pages["sqlite"] == pages["duckdb"]
    assert pages["postgresql"] == pages["duckdb"]


def test_cohorts_keep_other_limits_apart() -> None:
    runs = [{"id": i, "config": json.dumps({"method": "attnlrp", "config": {
        "limit": limit, "model_args": {"pretrained": f"/z/{name}"}, "model_num_parameters": i}})}
        for i, (name, limit) in enumerate([("a", 40), ("b", 40), ("a", None)])]
    keys = [cohort_key(r) for r in runs]
    assert keys[0] == keys[1] != keys[2]  # model identity ignored, the limit is not
    assert series_of({"id": 1, "pretrained": "/zoo/llama-l/"}) == "llama-l"
    assert series_of({"id": 1, "pretrained": "EleutherAI/pythia-160m"}) == "pythia-160m"


def test_study_page_numbers_and_trends(study_db: tuple[str, dict], tmp_path: Path) -> None:
    db, ids = study_db
    out = tmp_path / "r"
    render_report(db, out)
    index = (out / "index.html").read_text("utf-8")
    assert '<a href="study-1.html">6 comparable runs</a>' in index  # the all-docs run left out
    assert not (out / "study-2.html").exists()
    page = (out / "study-1.html").read_text("utf-8")
    rows = re.findall(r'<tr data-run="(\d+)">(.*?)</tr>', page, re.S)
    assert [int(r) for r, _ in rows] == ids["runs"][:6]  # by architecture, size, step
    for k, (series, size, step, limit, wrong) in enumerate(RUNS[:6]):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", dict(rows)[str(ids["runs"][k])], re.S)
        assert cells[0] == series and cells[2] == str(size) and cells[3] == str(step)
        assert float(cells[4]) == pytest.approx(1 - len(wrong) / N_DOCS, abs=5e-5)
        top1 = np.mean([1.0 if (d + k) % 2 == 0 else 0.0 for d in wrong])
        assert float(cells[7]) == pytest.approx(top1, abs=5e-5)  # evidence first (mean)
    # by checkpoint: one line per series, one point per checkpoint, on every panel
    accuracy = page.split('data-metric="accuracy"')[1].split('data-metric=')[0]
    ck = accuracy.split('class="by-size"')[0]
    lines = re.findall(r'<polyline points="([^"]*)"[^>]*data-name="([^"]*)"', ck)
    assert sorted((name, len(pts.split())) for pts, name in lines) == [("m-l", 4), ("m-s", 2)]
    # accuracy of m-l rises over the checkpoints: y (SVG, downwards) falls
    ys = [float(p.split(",")[1]) for p in dict((n, p) for p, n in lines)["m-l"].split()]
    assert ys == sorted(ys, reverse=True) and ys[0] > ys[-1]
    by_size = accuracy.split('class="by-size"')[1]
    names = re.findall(r'data-name="([^"]*)"', by_size)
    assert names == ["m-* @ step 0", "m-* @ step 200"]  # both sizes at these steps only
    strokes = dict(re.findall(r'stroke="([^"]*)"[^>]*data-name="([^"]*)"', ck)[::-1])
    assert len(set(strokes)) == 2  # m-s and m-l: two distinct hues, not two shades
    assert "no data" not in page and "README section “Study metrics”" in page
    assert "### Study metrics" in Path(__file__).parent.parent.joinpath("README.md").read_text("utf-8")
    assert "evidence ranked first" in page and "random" not in names


def test_case_page_shows_the_doc_across_checkpoints(study_db: tuple[str, dict],
                                                     tmp_path: Path) -> None:
    db, ids = study_db
    out = tmp_path / "r"
    render_report(db, out)
    case_id, _ = ids["cases"][(3, 0)]  # m-l step 100, doc 0: wrong; correct from step 200 on
    page = (out / f"run-{ids['runs'][3]}" / f"case-{case_id}.html").read_text("utf-8")
    assert 'data-flipped-at="200"' in page and "flipped to correct at step 200" in page
    others = page.split('id="others"')[1].split("</table>")[0]
    outcomes = re.findall(r'<tr class="(correct|wrong)( current)?">', others)
    assert len(outcomes) == 7  # every run evaluated doc 0
    assert sum(1 for o, _ in outcomes if o == "correct") == 3
    assert [c for _, c in outcomes].count(" current") == 1
    # links to the same doc's other failure pages resolve
    for href in re.findall(r'href="(\.\./run-\d+/case-\d+\.html)"', others):
        assert (out / "run-1" / href).resolve().is_file()
    data = json.loads(page.split('id="case-data">')[1].split("</script>")[0])
    hist = data["history"]  # m-l, cohort of the page: failing at steps 0 and 100
    assert [h["step"] for h in hist] == [0, 100] and hist[1]["current"]
    rel0 = ids["cases"][(2, 0)][1].token_relevance.astype(np.float64)
    rel1 = ids["cases"][(3, 0)][1].token_relevance.astype(np.float64)
    assert hist[1]["cosine"] == pytest.approx(rel0 @ rel1 / np.linalg.norm(rel0)
                                              / np.linalg.norm(rel1), rel=1e-5)
    assert max(abs(v) for v in hist[0]["values"]) == pytest.approx(1.0)


def test_flips_definitions() -> None:
    runs = [{"id": i, "pretrained": "/z/m", "model_type": "llama", "n_params": 1, "step": s,
             "config": "{}"} for i, s in enumerate([0, 100, 200, 300])]

    def index(outcomes: list[str]) -> DocIndex:
        rows = [{"run_id": i, "task": "t", "doc_id": 1, "doc_hash": "h", "filter": "none",
                 "correct": int(o == "correct")} for i, o in enumerate(outcomes)]
        return DocIndex(runs, [], rows)

    key = ("t", 1, "h", "none")
    f = index(["wrong", "wrong", "correct", "correct"]).flips(key, 0)
    assert f["flipped_at"] == 200 and not f["unstable"] and not f["never_correct"]
    f = index(["wrong", "correct", "wrong", "correct"]).flips(key, 0)
    assert f["flipped_at"] == 300 and f["unstable"]
    f = index(["correct", "correct", "correct", "wrong"]).flips(key, 0)
    assert f["flipped_at"] is None and f["unstable"] and not f["always_correct"]
    f = index(["correct"] * 4).flips(key, 0)
    assert f["flipped_at"] is None and f["always_correct"]
    assert index(["wrong"]).flips(key, 0) is None  # one checkpoint: nothing to compare


def test_failure_table_pages_in_the_browser_markup(study_db: tuple[str, dict],
                                                   tmp_path: Path) -> None:
    db, ids = study_db
    from harness_xai.report import render
    render.PAGE_SIZE, old = 2, render.PAGE_SIZE
    try:
        render_report(db, tmp_path / "r")
    finally:
        render.PAGE_SIZE = old
    html = (tmp_path / "r" / f"run-{ids['runs'][0]}" / "task-kv_fixture.html").read_text("utf-8")
    assert 'class="grid sortable failures paged" data-page-size="2"' in html
    assert html.count('<tr class="attributed">') == 4  # every row is there; the script pages
    assert "unflagged" in html and "evidence-underweighted" in html  # triage column
    assert 'id="delta-hist"' in html and html.count('class="hbar"') == 20


def test_line_chart_and_histogram_geometry() -> None:
    c = charts.line_chart([{"name": "a", "arch": "llama", "points": [(1e3, 0.0), (1e5, 1.0)]}],
                          x_log=True, y_range=(0.0, 1.0))
    (x0, y0), (x1, y1) = [tuple(map(float, p.split(","))) for p in c["lines"][0]["points"].split()]
    assert x0 == c["left"] and x1 == c["right"] and y0 == c["bottom"] and y1 == c["top"]
    assert [t["text"] for t in c["x_ticks"]] == ["1k", "10k", "100k"]
    narrow = charts.line_chart([{"name": "a", "arch": "x", "points": [(9e4, 0.1), (4e5, 0.2)]}],
                               x_log=True)
    assert [t["text"] for t in narrow["x_ticks"]] == ["90k", "100k", "200k", "300k", "400k"]
    h = charts.histogram([0.0, 0.1, 0.1, 1.0, float("nan"), None], bins=4)
    assert h["n"] == 4 and sum(int(r["title"].split(": ")[1]) for r in h["rects"]) == 4
    assert h["rects"][0]["title"].endswith(": 3") and h["rects"][3]["title"].endswith(": 1")


def test_embed_cannot_close_the_script_element() -> None:
    text = "</script><script>alert(1)</script><!-- & \u2028 \u2029"
    out = str(embed({"t": [text], "v": [0.1, None]}))
    assert "<" not in out and ">" not in out and "&" not in out
    assert "\u2028" not in out and "\u2029" not in out
    assert json.loads(out) == {"t": [text], "v": [0.1, None]}
    with pytest.raises(ValueError):
        embed({"v": float("nan")})  # NaN must be mapped to null before, never leak as NaN


def test_random_baseline_is_the_mean_per_step_and_size() -> None:
    from harness_xai.report.study import Point, baseline

    pts = [Point(run_id=i, series=s, arch="llama", size=size, step=step, accuracy=None,
                 n_samples=None, n_failures=1, metrics={"evidence.random_top1": v})
           for i, (s, size, step, v) in enumerate([("a", 10, 0, 0.1), ("b", 20, 0, 0.3),
                                                    ("a", 10, 5, 0.2), ("b", 20, 5, 0.2)])]
    assert baseline(pts, "evidence.random_top1", "step")[0]["points"] == [
        (0.0, pytest.approx(0.2)), (5.0, pytest.approx(0.2))]
    assert baseline(pts, "evidence.random_top1", "size")[0]["points"] == [
        (10.0, pytest.approx(0.15)), (20.0, pytest.approx(0.25))]
    assert baseline(pts, "missing", "step") == []
