"""Render a harness-xai store into a static, self-contained HTML report.

Layout of ``out_dir`` (deterministic names):
    index.html                      runs and their per-task tables
    run-<run_id>/task-<slug>.html   failures of one task (slug: see ``task_slug``)
    run-<run_id>/case-<case_id>.html   one attributed failure: token heatmap + layer heatmap
    .harness-xai-report             marker: lets a later render replace this directory

Steps of ``render_report``:
  1. Check ``out_dir``: missing, empty, or a previous report (marker file) — else UserError.
  2. Open the store with ``Store.open(db, create=False)`` (never creates or migrates); check
     that the report's tables are readable.
  3. Render every page into a fresh temporary directory next to ``out_dir`` (Jinja2 with
     autoescape; CSS and JS inlined so pages open from file:// with no network).
  4. Swap the temporary directory into place (old report renamed aside, then removed), so a
     failure at any point leaves the previous state untouched.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from sqlalchemy import Connection

from harness_xai import __version__
from harness_xai.errors import UserError
from harness_xai.report import figures, heatmap, queries

MARKER = ".harness-xai-report"
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


def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("harness_xai.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = heatmap.fmt
    env.filters["signed"] = lambda x, d=4: heatmap.fmt(x, d, signed=True)
    static = resources.files("harness_xai.report") / "static"
    # our own static assets, trusted: inlined unescaped into <style>/<script>
    env.globals["css"] = Markup(static.joinpath("report.css").read_text("utf-8"))
    js = static.joinpath("report.js").read_text("utf-8")
    env.globals["js"] = Markup(js)
    # CSP allows exactly this script: injected inline scripts/handlers could not run even if unescaped
    digest = base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode("ascii")
    env.globals["js_hash"] = f"sha256-{digest}"
    env.globals["version"] = __version__
    return env


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory; pass a directory path")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise UserError(
            f"--out {out} is a non-empty directory that is not a harness-xai report; "
            "pass a new or empty directory"
        )


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


def _render_case(env: Environment, conn: Connection, run: dict, case_id: int, task_href: str) -> str:
    case = queries.case_detail(conn, case_id)
    cells, scale, first_special = heatmap.token_cells(case["tokens"])
    grid = None
    if case["layers"] is not None and case["layers"].size:
        grid = figures.layer_grid(
            case["layers"], case["layer_ids"], case["layer_positions"], skip_first=first_special
        )
    total = sum(float(t["relevance"]) for t in case["tokens"] if t["relevance"] is not None)
    extra = _internal_figures(queries.case_internals(conn, case_id), case)
    return env.get_template("case.html").render(
        run=run, case=case, cells=cells, scale=scale, first_special=first_special, grid=grid,
        total=total, task_href=task_href, root="../",
        segments=heatmap.segment_totals(case["tokens"]), **extra,
    )


_STATE_NAMES = {"mid": "mid-block residual (between attention and MLP)",
                "attn": "attention branch output", "mlp": "MLP branch output"}


def _internal_figures(internals: dict, case: dict) -> dict:
    """SVG-ready figures for states, heads, the faithfulness curve and the graph."""
    states = [
        {"kind": s["kind"], "title": _STATE_NAMES.get(s["kind"], s["kind"]),
         "grid": figures.matrix_grid(s["matrix"], [f"block {l}" for l in s["layers"]],
                                     [str(p) for p in s["positions"]], "position")}
        for s in internals["states"]
    ]
    heads = None
    if internals["heads"] is not None:
        h = internals["heads"]
        heads = figures.matrix_grid(h["matrix"], [f"block {l}" for l in h["layers"]],
                                    [str(i) for i in h["heads"]], "head")
    faith = None
    if internals["faithfulness"] is not None:
        f = internals["faithfulness"]
        faith = figures.curve_chart(f["fractions"], f["relevance"], f["random"], case["delta"])
        faith["rows"] = list(zip(f["fractions"], f["n_removed"], f["relevance"], f["random"]))
    graph = None
    if internals["graph"] is not None:
        g = internals["graph"]
        graph = figures.graph_figure(g["node_layers"], g["nodes"], g["edges"],
                                     int(case["n_tokens"] or 0) or 1 + max(
                                         (n[1] for n in g["nodes"]), default=0))
        graph.update({k: g[k] for k in ("mass_kept", "formation_layer", "params", "metrics")})
    return {"states": states, "heads": heads, "faith": faith, "graph": graph}


def _render_all(env: Environment, conn: Connection, tmp: Path) -> None:
    runs = queries.list_runs(conn)
    for run in runs:
        run_dir = f"run-{int(run['id'])}"
        run["tasks_rows"] = queries.task_rows(conn, run["id"])
        for row in run["tasks_rows"]:
            row["href"] = f"{run_dir}/task-{task_slug(row['task'])}.html"
            task_file = f"task-{task_slug(row['task'])}.html"
            cases = queries.task_cases(conn, run["id"], row["task"])
            for case in cases:
                case["href"] = None
                if case["status"] == "attributed":
                    case["href"] = f"case-{int(case['id'])}.html"
                    html = _render_case(env, conn, run, int(case["id"]), task_file)
                    _write(tmp / run_dir / case["href"], html)
            html = env.get_template("task.html").render(run=run, row=row, cases=cases, root="../")
            _write(tmp / run_dir / task_file, html)
    _write(tmp / "index.html", env.get_template("index.html").render(runs=runs, root=""))
    (tmp / MARKER).write_text(f"harness-xai {__version__} report\n", encoding="utf-8")


def _swap_into_place(tmp: Path, out: Path) -> None:
    os.chmod(tmp, 0o755)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=".harness-xai-old-", dir=out.parent))
    old.rmdir()
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def render_report(db: str, out_dir: str | Path) -> Path:
    """Render the store at ``db`` into ``out_dir``; return the path of ``index.html``."""
    out = Path(out_dir).expanduser().absolute()
    _check_out_dir(out)
    env = _env()
    store = _open_store(str(db))
    try:
        with store.engine.connect() as conn:
            queries.check_schema(conn, str(db))
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".harness-xai-report-", dir=out.parent))
            try:
                _render_all(env, conn, tmp)
                _swap_into_place(tmp, out)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    finally:
        store.close()
    return out / "index.html"
