"""Render a harness-xai store into a static, self-contained HTML report.

Layout of ``out_dir`` (deterministic names):
    index.html                      runs, models (size, checkpoint), tasks, accuracy, failures
    study-<k>.html                  one cohort of comparable runs: trends by size and checkpoint
    run-<run_id>/task-<slug>.html   failures of one task: plots, paged sortable table
    run-<run_id>/case-<case_id>.html   one attributed failure: heatmaps, internals, graph, history
    assets/report.css, report.js    shared by every page (loaded from file://, no network)
    .harness-xai-report             marker: lets a later render replace this directory

Steps of ``render_report``:
  1. Check ``out_dir``: missing, empty, or a previous report (marker file) — else UserError.
  2. Open the store with ``Store.open(db, create=False)`` (never creates or migrates); check
     that the report's tables are readable.
  3. Read what spans runs once (doc histories, study cohorts), then per run its cases and,
     in bulk, their arrays (``arrays.run_arrays``); render every page into a fresh temporary
     directory next to ``out_dir`` (Jinja2 with autoescape; numbers for the browser-drawn
     figures as escaped JSON, ``payload``; a CSP allows only the report's own script file).
  4. Swap the temporary directory into place (old report renamed aside, then removed), so a
     failure at any point leaves the previous state untouched.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PackageLoader, StrictUndefined
from sqlalchemy import Connection

from harness_xai import __version__
from harness_xai.errors import UserError
from harness_xai.report import (charts, context, experts, figures, history, payload, queries,
                                rollouts, study, summary, text)
from harness_xai.report.arrays import CaseArrays, run_arrays, store_relevance
from harness_xai.report.tokens import labels_of, resolve_tokens, visible

MARKER = ".harness-xai-report"
#: rows per page of a failure table (the browser pages through them)
PAGE_SIZE = 100
_SLUG_OK = re.compile(r"[^a-z0-9._-]+")


def task_slug(task: str) -> str:
    """File-name-safe slug for a task name: [a-z0-9._-] only, no leading dot, ≤ 80 chars.

    Names that are already such a slug are kept as is; any other name gets an 8-hex suffix of the
    SHA-1 of the original, so distinct tasks never share a file (also on case-insensitive disks).
    """
    slug = re.sub(r"[-.]*\.[-.]*", ".", _SLUG_OK.sub("-", task.lower()))  # no "..", no "-.-"
    slug = slug.strip("-.")[:80].strip("-.")
    if slug != task or not slug:
        digest = hashlib.sha1(task.encode("utf-8")).hexdigest()[:8]
        slug = f"{slug}-{digest}" if slug else digest
    return slug


#: where a user's templates override the packaged ones (relative to the working directory)
TEMPLATE_OVERRIDES = Path("reports") / "templates"
#: the default output folder of ``harness-xai report``
DEFAULT_OUT = Path("reports") / "out"


def _env(templates: Path | None = None) -> Environment:
    """Jinja environment: a template in ``templates`` (default ``reports/templates`` of the
    working directory, when it exists) wins over the packaged one of the same name."""
    folder = TEMPLATE_OVERRIDES if templates is None else Path(templates)
    packaged = PackageLoader("harness_xai.report", "templates")
    loader = ChoiceLoader([FileSystemLoader(str(folder)), packaged]) if folder.is_dir() \
        else packaged
    env = Environment(
        loader=loader,
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = text.fmt
    env.filters["signed"] = lambda x, d=4: text.fmt(x, d, signed=True)
    env.filters["vis"] = visible  # a token with whitespace/control characters made visible
    env.globals["version"] = __version__
    return env


def _check_out_dir(out: Path) -> None:
    """New, empty or a previous report, and writable (store.preflight.check_destination; also
    removes stale temporary folders of killed renders next to it)."""
    from harness_xai.store.preflight import check_destination

    check_destination(out, "--out", marker=MARKER)


def _open_store(db: str) -> Any:
    """Open the store without creating or migrating anything; any failure → UserError."""
    from harness_xai.store import Store

    try:
        return Store.open(db, create=False)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 — driver errors vary by backend
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot open {db} as a harness-xai store ({first}); check --db") from None


def _write(path: Path, html: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")


def _segment_totals(a: CaseArrays) -> list[dict[str, Any]]:
    """Σ relevance and token count per segment label, in order of first appearance."""
    totals: dict[str, dict[str, Any]] = {}
    for seg, idx, r in zip(a.segments, a.segment_index, a.relevance.tolist()):
        label = text.segment_label(seg, idx)
        if label:
            row = totals.setdefault(label, {"label": label, "segment": seg, "n_tokens": 0,
                                            "relevance": 0.0})
            row["n_tokens"] += 1
            row["relevance"] += r if math.isfinite(r) else 0.0
    return list(totals.values())


class _Study:
    """What every page may need from the whole store: doc histories and study cohorts."""

    def __init__(self, conn: Connection, runs: list[dict[str, Any]]) -> None:
        self.docs = history.DocIndex(runs, queries.case_index(conn), queries.doc_outcomes(conn))
        self.relevance = store_relevance(conn)
        rows = {int(r["id"]): r["tasks_rows"] for r in runs}
        self.cohorts = study.cohorts(runs, rows, queries.study_metrics(conn),
                                     queries.study_triage(conn))
        self.page_of = {}  # run id → study page of its cohort
        for i, cohort in enumerate(self.cohorts, start=1):
            cohort.page = f"study-{i}.html"
            for run in cohort.runs:
                self.page_of[int(run["id"])] = cohort.page


def _render_case(env: Environment, run: dict, case: dict, a: CaseArrays, task_href: str,
                 st: _Study, moe: dict | None = None, tried: list | None = None) -> str:
    key = (case["task"], int(case["doc_id"]), case["doc_hash"], case["filter"])
    notes = context.contrast_notes(case.get("method_params"))
    texts = [case["prompt"], notes.get("gold_context"), notes.get("generation"),
             case["pred_text"], case["gold_text"]]
    real, group = resolve_tokens(a.tokens, texts)
    labels = labels_of(a.tokens, real, group)
    data = payload.case_payload(a, (labels, group))
    first_special = data["tokens"]["first_special"]
    rows = st.docs.relevance_rows(key, int(run["id"]), st.relevance, first_special)
    if len(rows) > 1:
        data["history"] = rows
    faith = None
    if a.faithfulness is not None:
        f = a.faithfulness
        faith = figures.curve_chart(f["fractions"], f["relevance"], f["random"], case["delta"])
        faith["rows"] = list(zip(f["fractions"], f["n_removed"], f["relevance"], f["random"]))
    graph = data.get("graph")
    total = float(np.nansum(a.relevance))
    start = text.segment_label(a.segments[0], a.segment_index[0]) if a.segments else ""
    return env.get_template("case.html").render(
        run=run, case=case, data=payload.embed(data), total=total, task_href=task_href,
        root="../", segments=_segment_totals(a), faith=faith, graph=graph,
        states=data["states"], heads=data.get("heads"), layers=data.get("layers"),
        others=st.docs.entries(key), flips=st.docs.flips(key, int(run["id"])),
        history=rows if len(rows) > 1 else None, n_tokens=len(a.positions),
        first_special=first_special,
        top=summary.top_tokens(a, labels, group, first_special),
        segment_line=summary.segment_line(a), layer_line=summary.layer_line(a.layer_ids, a.layers),
        reasoning_line=summary.reasoning_line(a, notes),
        truncation=context.truncation(case["prompt"], notes, real, a.segments, start),
        options=context.choice_options(case["prompt"], notes),
        generation=context.generation(notes, labels, a.segments, case["wrong_token"])
        if case.get("output_type") == "generate_until" else None,
        wrong_label=visible(case["wrong_token"]), gold_label=visible(case["gold_token"]),
        gold_kind=context.gold_kind(notes), repair=context.instruction_repair(notes),
        experts=experts.with_tokens(moe, a.positions, a.tokens),
        rollouts=rollouts.case_rollouts(tried, notes, case["wrong_token"]))


def _task_figures(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate plots of one task's failures: Δℓ histogram and triage shares."""
    labels: dict[str, int] = {}
    for c in cases:
        if c["triage"]:
            labels[c["triage"]] = labels.get(c["triage"], 0) + 1
    n = sum(labels.values())
    return {"delta_hist": charts.histogram([c["delta"] for c in cases if c["delta"] is not None]),
            "triage": charts.bars([{"label": "failures", "n": n,
                                    "shares": {k: v / n for k, v in sorted(labels.items())}}])
            if n else [], "triage_counts": sorted(labels.items(), key=lambda kv: -kv[1])}


def _matrix(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The index's models × checkpoints × tasks matrix: rows = runs by model, step, id; columns =
    every task; cell = that run's task row (or None)."""
    tasks = sorted({row["task"] for run in runs for row in run["tasks_rows"]})
    rows = sorted(runs, key=lambda r: (r["series"], r["step"] is None, r["step"] or 0, r["id"]))
    cells = {(int(r["id"]), row["task"]): row for r in runs for row in r["tasks_rows"]}
    return {"tasks": tasks, "rows": [{"run": r, "cells": [cells.get((int(r["id"]), t))
                                                          for t in tasks]} for r in rows]}


def _render_study(env: Environment, cohort: study.Cohort, moe: dict | None = None) -> str:
    tasks = []
    for task, points in cohort.tasks.items():
        panels = [("accuracy", "accuracy", (0.0, 1.0))]
        segments = study.segments_of(points)
        for s in segments:
            panels.append((f"segment.{s}.total", f"{s} tokens: Σ relevance / max |R| (the "
                           "paper's normalised total)", None))
            if len(segments) > 1:  # with one segment its share is 1 everywhere
                panels.append((f"segment.{s}.share", f"share of |R| on {s} tokens", (0.0, 1.0)))
        panels += list(study.PANELS)
        figs = []
        for metric, title, rng in panels:
            lines_ck = study.by_checkpoint(points, metric)
            lines_sz = study.by_size(points, metric)
            if not lines_ck and not lines_sz:
                continue
            refs_ck = refs_sz = []
            if metric == "evidence.top1":
                refs_ck = study.baseline(points, "evidence.random_top1", "step")
                refs_sz = study.baseline(points, "evidence.random_top1", "size")
            figs.append({"metric": metric, "title": title,
                         "by_checkpoint": charts.line_chart(lines_ck,
                                                            x_title=study.checkpoint_axis(points),
                                                            y_range=rng, references=refs_ck),
                         "by_size": charts.line_chart(lines_sz, x_log=True,
                                                      x_title="parameters", y_range=rng,
                                                      references=refs_sz)})
        triage = charts.bars([{"label": f"{p.series} @ {p.checkpoint_label}", "n": p.n_failures,
                               "shares": p.triage} for p in points if p.triage])
        tasks.append({"task": task, "points": points, "figures": figs, "triage": triage,
                      "segments": segments})
    return env.get_template("study.html").render(cohort=cohort, tasks=tasks, root="",
                                                 triage_colours=charts.TRIAGE_COLOURS,
                                                 experts=moe or {})


def _render_all(env: Environment, conn: Connection, tmp: Path) -> None:
    runs = queries.list_runs(conn)
    for run in runs:
        run["tasks_rows"] = queries.task_rows(conn, run["id"])
        run["series"] = study.series_of(run)
        run.update(study.run_settings(run))
    st = _Study(conn, runs)
    for run in runs:
        run_dir = f"run-{int(run['id'])}"
        run["study_page"] = st.page_of.get(int(run["id"]))
        by_task = queries.run_cases(conn, int(run["id"]))
        arrays = run_arrays(conn, int(run["id"]))
        moe = experts.run_experts(conn, int(run["id"]))
        tried = rollouts.run_rollouts(conn, int(run["id"]))
        for row in run["tasks_rows"]:
            task_file = f"task-{task_slug(row['task'])}.html"
            row["href"] = f"{run_dir}/{task_file}"
            cases = by_task.get(row["task"], [])
            for case in cases:
                case["href"] = None
                a = arrays.get(int(case["id"]))
                if case["status"] == "attributed" and a is not None:
                    case["href"] = f"case-{int(case['id'])}.html"
                    _write(tmp / run_dir / case["href"],
                           _render_case(env, run, case, a, task_file, st,
                                        moe.get(int(case["id"])), tried.get(int(case["id"]))))
            html = env.get_template("task.html").render(
                run=run, row=row, cases=cases, root="../", page_size=PAGE_SIZE,
                figs=_task_figures(cases), triage_colours=charts.TRIAGE_COLOURS)
            _write(tmp / run_dir / task_file, html)
    for cohort in st.cohorts:
        _write(tmp / cohort.page, _render_study(env, cohort, experts.cohort_experts(
            conn, [int(r["id"]) for r in cohort.runs])))
    _write(tmp / "index.html", env.get_template("index.html").render(
        runs=runs, cohorts=st.cohorts, root="", matrix=_matrix(runs)))
    assets = resources.files("harness_xai.report") / "static"
    for name in ("report.css", "report.js"):
        _write(tmp / "assets" / name, assets.joinpath(name).read_text("utf-8"))
    (tmp / MARKER).write_text(f"harness-xai {__version__} report\n", encoding="utf-8")


def _swap_into_place(tmp: Path, out: Path) -> None:
    os.chmod(tmp, 0o755)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".harness-xai-old-{os.getpid()}-", dir=out.parent))
    old.rmdir()
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def render_report(db: str, out_dir: str | Path = DEFAULT_OUT,
                  templates: str | Path | None = None) -> Path:
    """Render the store at ``db`` into ``out_dir``; return the path of ``index.html``.
    ``templates``: a folder whose templates override the packaged ones (default
    ``reports/templates`` when it exists)."""
    out = Path(out_dir).expanduser().absolute()
    _check_out_dir(out)
    if templates is not None and not Path(templates).is_dir():
        raise UserError(f"--templates {templates} is not a folder: give a folder of Jinja "
                        "templates named like the packaged ones (harness_xai/report/templates)")
    env = _env(None if templates is None else Path(templates))
    store = _open_store(str(db))
    try:
        with store.engine.connect() as conn:
            queries.check_schema(conn, str(db))
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".harness-xai-report-{os.getpid()}-", dir=out.parent))
            try:
                _render_all(env, conn, tmp)
                _swap_into_place(tmp, out)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    finally:
        store.close()
    return out / "index.html"
