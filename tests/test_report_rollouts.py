"""First-error rollouts on the case page (report/rollouts.py, template _rollouts_case.html): the
rollouts tried, in order, with the one that flipped the sample marked; when none flipped the page
says so, why, and what was explained instead; benchmark text is escaped; a case without rollouts
shows no section."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import replace
from html import unescape
from pathlib import Path

import numpy as np

from factory import explained
from harness_xai.records import Rollout, RunRecord, TaskSummary
from harness_xai.report import render_report
from harness_xai.store import Store

TASK = "gen_fixture"
N = 6
SCRIPT = "<script>document.title='PWNED'</script>"


def _rollouts(flip_at: int | None) -> tuple[Rollout, ...]:
    out = []
    for i, (position, rank) in enumerate(((0, 1), (0, 2), (2, 1), (2, 2))):
        out.append(Rollout(position=position, model_token_id=30 + position, model_token=f" m{position}",
                           alternative_token_id=40 + i, alternative_token=f" <i>a{i}</i>", rank=rank,
                           margin=0.25 * (i + 1), correct=i == flip_at,
                           text=f"rollout {i} {SCRIPT} & \"q\"", n_tokens=3))
    return tuple(out)


def _case(doc_id: int, flip_at: int | None, rule: str):
    rel = np.random.default_rng(doc_id).normal(size=N).astype(np.float32)
    first = ({"found": True, "position": 2, "max_rollouts": 8, "rollout_tokens": 5}
             if flip_at is not None else
             {"found": False, "reason": "no_flip_within_budget", "max_rollouts": 8,
              "fallback": "first-error-fallback:no_flip_within_budget", "rollout_tokens": 5})
    case, ex = explained(
        rel, task=TASK, doc_id=doc_id, doc_hash=f"d{doc_id}", prompt_hash="p", target_hash="t",
        prompt="Q: 2+2?", pred_text="5", gold_text="4", position=N, wrong_token_id=32,
        gold_token_id=42, wrong_token=" m2", gold_token=" <i>a2</i>", delta=0.5,
        token_ids=list(range(10, 10 + N)), tokens=[f" t{i}" for i in range(N)],
        layer_relevance=np.vstack([rel] * 3), output_type="generate_until")
    built = {"contrast": {"rule": rule, "generation": "5 is it", "first_error": first}}
    if rule == "instruction-repair:full-target":
        built["contrast"]["repair"] = {"failed": ["startend:end_checker", "keywords:<b>x</b>"],
                                       "edits": 17, "near_ties": 3, "verified": 2}
    return replace(case, rollouts=_rollouts(flip_at), built=built), ex


def _render(tmp_path: Path) -> dict[str, str]:
    db = str(tmp_path / "r.duckdb")
    with Store.open(db) as store:
        run_id = store.ensure_run(RunRecord(
            run_key="r", model="hf", model_args="{}", pretrained="/zoo/x", revision="main",
            model_type="llama", n_params=10, tasks=[TASK], method="attnlrp",
            lm_eval_version="0.4.13", harness_xai_version="t",
            created_at=dt.datetime(2026, 12, 4, tzinfo=dt.timezone.utc)))
        store.write_task_summaries(run_id, [TaskSummary(TASK, "exact_match", 0.0, 3, 3,
                                                        "generate_until")])
        flipped, _ = pair = _case(1, 2, "first-error:rollout")
        ids = {"flip": store.write_case(run_id, *pair),
               "none": store.write_case(run_id, *_case(2, None, "answer-span")),
               "repair": store.write_case(run_id, *_case(4, None, "instruction-repair:full-target")),
               "plain": store.write_case(run_id, *explained(
                   np.ones(N, dtype=np.float32), task=TASK, doc_id=3, doc_hash="d3",
                   prompt_hash="p", target_hash="t", position=N, wrong_token_id=1,
                   gold_token_id=2, token_ids=list(range(N)), tokens=["x"] * N,
                   layer_relevance=np.ones((3, N), dtype=np.float32)))}
    render_report(db, tmp_path / "out")
    return {k: (tmp_path / "out" / f"run-{run_id}" / f"case-{v}.html").read_text("utf-8")
            for k, v in ids.items()}


def _rows(html: str) -> list[str]:
    table = html.split('id="rollouts"', 1)[1].split("</table>", 1)[0]
    return re.findall(r"<tr class=\"[^\"]*\"[^>]*>.*?</tr>", table, flags=re.S)


def test_case_page_lists_rollouts_and_marks_the_flip(tmp_path):
    pages = _render(tmp_path)
    html = pages["flip"]
    assert 'id="rollout-verdict" class="small" data-found="1"' in html
    assert "First error at generated token 2" in unescape(html)
    rows = _rows(html)
    assert len(rows) == 4  # every rollout tried, in order
    assert [bool(re.search(r'id="rollout-flip"', r)) for r in rows] == [False, False, True, False]
    flip = unescape(re.sub(r"<[^>]+>", " ", rows[2]))
    assert " m2" in flip and "<i>a2</i>" in flip and "correct (first error)" in flip
    for i, row in enumerate(rows):
        assert f"rollout {i}" in row and ("wrong" in row) == (i != 2)
    # benchmark text escaped: no live <script>/<i> from rollouts, the text itself still readable
    section = html.split("<h2>First-error rollouts</h2>", 1)[1].split("</table>", 1)[0]
    assert "<script>" not in section and "<i>" not in section
    assert "&lt;script&gt;document.title=" in section and "&lt;i&gt;a1&lt;/i&gt;" in section


def test_case_page_says_when_no_rollout_flipped_and_what_was_explained(tmp_path):
    pages = _render(tmp_path)
    html = unescape(pages["none"])
    assert 'data-found="0"' in html and "No rollout flipped the answer" in html
    assert "4 tried of a budget of 8" in html and "no_flip_within_budget" in html
    assert "Explained instead: the final-answer contrast" in html
    assert len(_rows(pages["none"])) == 4 and 'id="rollout-flip"' not in pages["none"]
    assert "First-error rollouts" not in pages["plain"]  # no rollouts run: no section


def test_case_page_names_what_the_gold_side_is(tmp_path):
    """The gold box says what the contrast compared with: the alternative a rollout found, the
    closest compliant edit of an IFEval response (and, with no flip, that it was explained
    instead), or a plain gold answer."""
    pages = {k: unescape(v) for k, v in _render(tmp_path).items()}

    def label(html):
        return re.search(r'id="gold-kind">([^<]*)', html).group(1).strip()

    assert label(pages["flip"]) == "alternative that scored correct (rollout)"
    assert label(pages["repair"]).startswith("compliant edit")
    assert "Explained instead: the token where the closest compliant edit" in pages["repair"]
    assert label(pages["plain"]) == "gold answer" == label(pages["none"])
    raw = _render(tmp_path / "again")["repair"]
    line = raw.split('id="instruction-repair"', 1)[1].split("</p>", 1)[0]
    assert "<b>x</b>" not in line and "&lt;b&gt;x&lt;/b&gt;" in line  # instruction ids escaped
    line = unescape(re.sub(r"<[^>]+>", "", line))
    assert "Instructions failed: startend:end_checker, keywords:<b>x</b>." in line
    assert "17 edits proposed, 3 left out below the near-tie floor, 2 scored" in line
    assert 'id="instruction-repair"' not in pages["none"]
